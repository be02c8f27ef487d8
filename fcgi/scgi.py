"""The application side of one SCGI connection, without I/O.

:class:`ScgiConnection` has the interface of :class:`fcgi.connection.ServerConnection`
(``feed``, ``feed_eof``, ``send_stdout``, ``end_request``, ``buffers_to_send``,
``should_close`` ...), so a driver serves either one; it yields the same
:mod:`fcgi.events` for a request with id :data:`REQUEST_ID`.
:class:`OneRequestConnection`, the part that does not depend on how the request
head is laid out, is shared with :mod:`fcgi.uwsgi`.

Rules, from Neil Schemenauer's "SCGI: A Simple Common Gateway Interface
alternative" (protocol.txt, 2008, python.ca/scgi) and D. J. Bernstein's
netstrings (cr.yp.to/proto/netstrings.txt):

* a connection carries one request: the web server sends it, the application
  answers and closes (section 2). There are no request ids, no multiplexing,
  no stderr channel, no way to abort a request but closing the connection;
* the request head is a netstring ``<length>:<block>,`` whose length is
  decimal ASCII without leading zeros (netstrings); the block is
  ``name NUL value NUL`` pairs, names non-empty, values possibly empty
  (section 3: nginx sends ``CONTENT_TYPE`` empty on a GET);
* the first pair is ``CONTENT_LENGTH``, a non-empty run of ASCII digits, there
  even when it is "0"; a pair ``SCGI`` = "1" is somewhere in the block; names
  are not repeated (section 3). nginx puts CONTENT_LENGTH first and then the
  ``scgi_param`` lines in their order (``SCGI`` comes after DOCUMENT_ROOT in
  the stock scgi_params), then the HTTP_* headers;
* exactly CONTENT_LENGTH bytes of body follow the head;
* the response format is left open (section 2); in practice it is a CGI
  response (RFC 3875 section 6: ``Status: 200 OK`` and header lines, a blank
  line, the body), which nginx's scgi module, Apache mod_proxy_scgi and
  lighttpd mod_scgi all read. That is what the WSGI and ASGI adapters write,
  so output goes out unchanged.

What breaks the framing is a :class:`ProtocolError` (the connection is
closed): a length that is not digits, has a leading zero or more digits than
``max_params_bytes`` has; a missing ',' or final NUL; a first pair that is
not CONTENT_LENGTH, or a CONTENT_LENGTH that is not digits or comes twice (the
body is framed by the first, the app would read the second); no ``SCGI`` = "1".
A repeated name other than CONTENT_LENGTH keeps its last value, as FastCGI
PARAMS do: the spec forbids repeats, but a header a client sent twice may
reach us twice, and refusing the request would not help anyone. What breaks
a limit rejects the one request (:class:`fcgi.events.RequestRejected`, the
driver answers it): a head longer than ``max_params_bytes`` (431, as soon as
its length is read; the rest of the input is dropped), more pairs than
``max_params`` (431), a CONTENT_LENGTH over ``max_body_size`` (413).
"""

from __future__ import annotations

from fcgi.connection import Limits, decimal_length
from fcgi.errors import ProtocolError
from fcgi.one_request import OneRequestConnection, quote_head, wrong_protocol_hint


class ScgiConnection(OneRequestConnection):
    """State of one SCGI connection from the application's point of view."""

    __slots__ = ("_max_digits",)

    def __init__(self, limits: Limits | None = None) -> None:
        super().__init__(limits)
        #: A length with more digits is over max_params_bytes whatever it says;
        #: refusing it there keeps int() away from a run of a million digits.
        self._max_digits = len(str(self.limits.max_params_bytes))
        self._prefix_max = self._max_digits + 1

    def _measure(self, prefix: bytes) -> tuple[int, int] | None:
        colon = prefix.find(b":")
        digits = prefix if colon < 0 else prefix[:colon]
        if digits and not digits.isdigit():
            # A head that starts with a digit is a broken SCGI request, not
            # another protocol's: no hint then (it would name SCGI itself).
            hint = "" if digits[:1].isdigit() else wrong_protocol_hint(prefix[0])
            raise ProtocolError(
                f"SCGI request does not start with a netstring length: {quote_head(prefix)}{hint}"
            )
        if len(digits) > self._max_digits:
            raise ProtocolError(
                f"SCGI netstring length of more than {self._max_digits} digits "
                f"(max_params_bytes is {self.limits.max_params_bytes})"
            )
        if colon < 0:
            return None
        if not digits:
            raise ProtocolError("SCGI netstring without a length before its ':'")
        if len(digits) > 1 and digits[0] == 0x30:
            raise ProtocolError(f"SCGI netstring length with a leading zero: {quote_head(digits)}")
        size = int(digits)
        return colon + 1 + size + 1, size

    def _parse(self, head: bytes) -> tuple[dict[str, str], int, int]:
        if head[-1] != 0x2C:
            raise ProtocolError(
                f"SCGI netstring not followed by ',' (got {quote_head(head[-1:])} after its block)"
            )
        block = head[head.index(b":") + 1 : -1]
        if not block:
            raise ProtocolError("empty SCGI header block: CONTENT_LENGTH is required")
        if block[-1] != 0:
            raise ProtocolError("SCGI header block does not end with a NUL byte")
        # latin-1 maps bytes to code points one to one: PEP 3333's native strings.
        fields = block[:-1].decode("latin-1").split("\0")
        if len(fields) % 2:
            raise ProtocolError("SCGI header block has a name without a value")
        names = fields[0::2]
        values = fields[1::2]
        if names[0] != "CONTENT_LENGTH":
            raise ProtocolError("the first SCGI header is not CONTENT_LENGTH")
        if "" in names:
            raise ProtocolError("SCGI header with an empty name")
        if "CONTENT_LENGTH" in names[1:]:
            raise ProtocolError("SCGI header CONTENT_LENGTH sent twice")
        length = decimal_length(values[0])
        if length < 0:
            raise ProtocolError(
                f"SCGI CONTENT_LENGTH is not a decimal number: "
                f"{quote_head(values[0].encode('latin-1'))}"
            )
        params = dict(zip(names, values, strict=True))
        if params.get("SCGI") != "1":
            raise ProtocolError("SCGI request without the header SCGI = 1")
        return params, len(names), length
