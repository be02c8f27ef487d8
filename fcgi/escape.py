"""One escaping rule for peer-supplied text on its way into a log or a text page.

A web server passes the request URI, the query string, the method and every
other FastCGI param as bytes it got from the client. Written as they are, a
CR or LF in them starts a new line of the error log, the access log, the
slowlog or the text status page, and that line can say anything
("[pool www] child 1 exited with code 0", "idle processes: 999"); other
control characters rewrite what a terminal shows. So every sink writes
peer-supplied text through :func:`escape`, which does what nginx does in its
logs: each control character becomes ``\\xHH`` (``\\x0A`` for LF). The
backslash itself is escaped too (``\\x5C``), so that a client cannot send the
four characters ``\\x0A`` and have them read as an escaped newline: in escaped
text every backslash starts an escape we wrote.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Mapping

#: What is escaped: C0 controls (0x00-0x1F, which include CR, LF, TAB and ESC),
#: DEL (0x7F), the C1 controls (U+0080-U+009F: FastCGI params are decoded as
#: latin-1, so a byte 0x9B arrives as U+009B, which some terminals take as
#: CSI), the Unicode line and paragraph separators (U+2028, U+2029: line
#: breaks to ``str.splitlines`` and to some log viewers), and the backslash.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\\\\]")
#: The same without the backslash: for text that is already escaped once.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
#: The same plus the double quote, for fields a log format puts in quotes.
_UNSAFE_QUOTED = re.compile('[\x00-\x1f\x7f-\x9f\u2028\u2029\\\\"]')


def _hex(match: re.Match[str]) -> str:
    code = ord(match.group())
    # Code points past 0xFF (U+2028, U+2029) need the longer \\uHHHH form.
    return f"\\x{code:02X}" if code <= 0xFF else f"\\u{code:04X}"


def escape(text: str) -> str:
    """``text`` with every control character and backslash written as ``\\xHH``.

    The result holds no line break and no control character, so it can go
    anywhere in a line of a log or of a text page without changing how the
    page splits into lines. Plain text (the usual case) is returned as is,
    without a copy.
    """
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(_hex, text)


def escape_quoted(text: str) -> str:
    """:func:`escape`, and ``"`` as ``\\x22`` too: for a field inside quotes.

    The default access log format quotes the request (``"%m %r"``), as
    nginx's does, and nginx escapes the quote in its logs for the same reason:
    a field must not end its quotes early.
    """
    if _UNSAFE_QUOTED.search(text) is None:
        return text
    return _UNSAFE_QUOTED.sub(_hex, text)


def escape_controls(text: str) -> str:
    """Control characters as ``\\xHH`` but backslashes kept: for text that may
    already hold our escapes (escaping their backslash again would double it)."""
    if _CONTROL.search(text) is None:
        return text
    return _CONTROL.sub(_hex, text)


# -- the error log -------------------------------------------------------------

#: Put at the start of every line of a log record after its first (traceback
#: lines, messages written over several lines). A record's first line starts
#: with its timestamp (LOG_FORMAT), so no continuation line can pass for a
#: record of its own, whatever text (an app's exception message, say) it holds.
CONTINUATION = "  | "


class _Escaped:
    """A log argument that is not a number, shown escaped by both %s and %r.

    A wrapper rather than the escaped string: ``%r`` of a string escaped in
    advance would show the repr of our escapes, every backslash doubled.
    """

    __slots__ = ("obj",)

    def __init__(self, obj: object) -> None:
        self.obj = obj

    def __str__(self) -> str:
        return escape(str(self.obj))

    def __repr__(self) -> str:
        # A repr already writes a str's backslashes and controls as escapes of
        # its own; escaping its backslashes again would only double them.
        return escape_controls(repr(self.obj))


class Lines(str):
    """A log argument meant to span lines (a formatted traceback).

    :class:`EscapingFormatter` keeps its line breaks, escapes its other control
    characters and puts :data:`CONTINUATION` in front of each of its lines
    but the first, so peer-supplied text inside it (an exception message built
    from the query string) still cannot start a line of its own.
    """

    __slots__ = ()


def _escape_arg(arg: object) -> object:
    if isinstance(arg, Lines):
        return escape_controls_but_newlines(arg)
    if arg is None or isinstance(arg, (int, float)):
        # Numbers stay numbers, for %d and %.3f.
        return arg
    return _Escaped(arg)


class EscapingFormatter(logging.Formatter):
    """A log formatter that keeps peer-supplied text from forging log lines.

    Two rules, one per kind of text:

    * The arguments of a record (``log.warning("uri %s", uri)``: the URI, the
      method, an exception's message, a line the app wrote) are where
      peer-supplied text goes, so each is written through :func:`escape`: its
      newlines and other controls become ``\\x0A`` and so on, on the record's
      own line, as nginx does.
    * What remains may legitimately span lines: a traceback (``exc_info``), or
      a message whose format string has a newline. Its control characters other
      than the line break are escaped, and every line after the first starts
      with :data:`CONTINUATION`, so that even an exception message the app
      built from the query string cannot start a line that looks like a
      record.
    """

    def format(self, record: logging.LogRecord) -> str:
        record = copy.copy(record)  # other handlers see the record unchanged
        args = record.args
        if isinstance(args, Mapping):
            record.args = {key: _escape_arg(value) for key, value in args.items()}
        elif args:
            record.args = tuple(_escape_arg(arg) for arg in args)
        if not isinstance(record.msg, str):
            record.msg = _Escaped(record.msg)
        text = escape_controls_but_newlines(super().format(record))
        if "\n" not in text:
            return text
        return text.replace("\n", "\n" + CONTINUATION)


def escape_controls_but_newlines(text: str) -> str:
    """:func:`escape_controls`, keeping LF: for text that is split into lines after."""
    if _CONTROL.search(text) is None:
        return text
    return "\n".join(escape_controls(line) for line in text.split("\n"))


def escaping_handler(handler: logging.Handler, fmt: str) -> logging.Handler:
    """``handler`` with an :class:`EscapingFormatter` for ``fmt``; returns it."""
    handler.setFormatter(EscapingFormatter(fmt))
    return handler
