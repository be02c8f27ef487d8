"""A request body in transit: pushed by the connection, pulled by the app.

The trio and asyncio workers read a connection for every request on it at
once, so they cannot stop reading because one app is slow to consume its
body: that would stall the other ids on the connection. :class:`SpooledBody` takes whatever
arrives without blocking, keeps up to ``threshold`` bytes in memory and spills
the rest to an anonymous temporary file, so memory stays bounded however large
the body and however slow the reader.

Pushing is synchronous (the reader task never waits here). Pulling waits in a
:class:`Parking` that a factory the driver supplies makes (trio's
``ParkingLot``, or the asyncio worker's future), so this module runs under
either event loop and imports neither.
"""

from __future__ import annotations

import os
import tempfile
from collections import deque
from collections.abc import Callable
from typing import Final, Protocol

#: Largest piece :meth:`SpooledBody.receive` returns from the spill file.
READ_SIZE: Final = 64 * 1024


class Parking(Protocol):
    """Where the reader of a body waits until the writer has news for it.

    ``park()`` returns after the next ``unpark_all()``: :class:`SpooledBody`
    calls that on every push, end and close while a reader is parked (only
    its own ``receive()`` parks). ``trio.lowlevel.ParkingLot`` is one as it
    is; the asyncio worker has its own.
    """

    def unpark_all(self) -> object: ...

    async def park(self) -> None: ...


def _trio_parking() -> Parking:
    """A trio ParkingLot: what a body made without a driver's :class:`Parking` waits in."""
    # Imported here, not at the top: only a body made without a driver's
    # Parking (tests, callers that predate it) waits with trio, and the
    # asyncio worker, which passes its own, must not load trio at all.
    import trio

    return trio.lowlevel.ParkingLot()


class SpooledBody:
    """A one-way byte pipe, memory up to ``threshold``, a temporary file beyond.

    Its reader waits in a :class:`Parking` that ``new_parking()`` makes;
    without it, in a trio ParkingLot. Most bodies are empty (a GET) or there
    before the app reads them, so the parking and the queue of pieces are
    made when first needed: a body nobody waits for costs no objects but
    itself.
    """

    __slots__ = (
        "_ended",
        "_error",
        "_fd",
        "_lot",
        "_memory",
        "_memory_size",
        "_new_parking",
        "_parked",
        "_read_pos",
        "_write_pos",
        "threshold",
    )

    def __init__(self, threshold: int, new_parking: Callable[[], Parking] | None = None) -> None:
        self.threshold = threshold
        #: The pieces in memory, oldest first; None until the first one.
        self._memory: deque[bytes] | None = None
        self._memory_size = 0
        self._fd = -1
        self._read_pos = 0
        self._write_pos = 0
        self._ended = False
        #: Raised by receive() once the data before it is read (see fail()).
        self._error: BaseException | None = None
        self._new_parking = new_parking if new_parking is not None else _trio_parking
        #: Where a reader waits; None until one must.
        self._lot: Parking | None = None
        #: Readers waiting in the parking now: with none (most bodies, never
        #: waited for), news need not be told to it.
        self._parked = 0

    # -- producer side ---------------------------------------------------------

    def push(self, data: bytes) -> None:
        """Append ``data``; never blocks. Ignored once the stream has ended."""
        if self._ended or not data:
            return
        if self._read_pos < self._write_pos:
            # Part of the body is already on disk: later bytes go after it.
            self._spill(data)
        elif self._memory_size + len(data) <= self.threshold:
            memory = self._memory
            if memory is None:
                memory = self._memory = deque()
            memory.append(data)
            self._memory_size += len(data)
        else:
            self._spill(data)
        if self._parked:
            self._wake()

    def end(self) -> None:
        """No more data will come (end of stream, abort, or connection lost)."""
        self._ended = True
        if self._parked:
            self._wake()

    def _wake(self) -> None:
        """Tell the parked reader there is news (a reader parked, so the parking exists)."""
        lot = self._lot
        if lot is not None:
            lot.unpark_all()

    def fail(self, error: BaseException) -> None:
        """End the stream with ``error``: the reader gets what came before, then the error.

        Used when the body broke a limit: the app must not mistake a body
        cut short for a complete one.
        """
        if not self._ended:
            self._error = error
        self.end()

    def _spill(self, data: bytes) -> None:
        if self._fd < 0:
            self._fd = _anonymous_file()
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, self._write_pos)
            self._write_pos += written
            view = view[written:]

    # -- consumer side ---------------------------------------------------------

    @property
    def ended(self) -> bool:
        """True once :meth:`end` was called (data may still be waiting to be read)."""
        return self._ended

    @property
    def exhausted(self) -> bool:
        """True when the stream ended and every byte of it was read (and no error waits)."""
        return (
            self._ended
            and self._error is None
            and not self._memory
            and self._read_pos == self._write_pos
        )

    @property
    def spilled(self) -> bool:
        """True if any part of the body went to the temporary file."""
        return self._fd >= 0

    @property
    def buffered(self) -> int:
        """Bytes received but not yet read, wherever they are."""
        return self._memory_size + self._write_pos - self._read_pos

    def receive_nowait(self) -> bytes | None:
        """The next piece, b"" at the end of the stream, or None if nothing is ready.

        Raises the error given to :meth:`fail` once everything before it was read.
        """
        memory = self._memory
        if memory:
            data = memory.popleft()
            self._memory_size -= len(data)
            return data
        if self._read_pos < self._write_pos:
            size = min(READ_SIZE, self._write_pos - self._read_pos)
            data = os.pread(self._fd, size, self._read_pos)
            if not data:  # the file was truncated under us: nothing sane left
                self._read_pos = self._write_pos
                return b""
            self._read_pos += len(data)
            if self._read_pos == self._write_pos:
                # Caught up with the file: reuse it from the start next time.
                self._read_pos = self._write_pos = 0
                os.ftruncate(self._fd, 0)
            return data
        if self._ended:
            if self._error is not None:
                raise self._error
            return b""
        return None

    async def receive(self) -> bytes:
        """Wait for the next piece; b"" means the stream is over.

        A piece that is there already comes back without a scheduling point:
        the trio worker adds its own (see ``fcgi.trio_worker._take``), asyncio
        needs none.
        """
        while True:
            data = self.receive_nowait()
            if data is not None:
                return data
            lot = self._lot
            if lot is None:
                lot = self._lot = self._new_parking()
            self._parked += 1
            try:
                await lot.park()
            finally:
                self._parked -= 1

    def close(self) -> None:
        """Drop what is left and free the temporary file."""
        self._ended = True
        self._memory = None
        self._memory_size = 0
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._read_pos = self._write_pos = 0
        if self._parked:
            self._wake()


def _anonymous_file() -> int:
    """A file descriptor of a temporary file that has no name on disk."""
    fd, path = tempfile.mkstemp(prefix="fcgi-body-")
    try:
        os.unlink(path)
    except OSError:
        os.close(fd)
        raise
    return fd
