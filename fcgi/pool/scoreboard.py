"""The shared-memory scoreboard: what every worker of a pool is doing, right now.

One anonymous shared mapping per pool, created by the master before it forks,
so every worker inherits it. It holds a header written only by the master
(pool-wide counters) and one fixed-size slot per worker, written only by the
worker that owns it (the master writes a slot only while no process owns it).
A single writer per region means no lock: each write is bracketed by a
sequence counter that is odd while the write is in progress, and readers retry
until they see the same even value before and after (a seqlock).

No message crosses a pipe per request: the worker packs its slot (one
``struct.pack_into``, well under a microsecond of work) and the master reads
all slots at each heartbeat.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

MAGIC: Final = 0x46434750  # "FCGP"


class SlotState(IntEnum):
    FREE = 0
    #: Forked, importing the app: not yet able to accept.
    STARTING = 1
    #: Waiting in accept() (or for the next request on a kept connection).
    IDLE = 2
    #: Running a request.
    BUSY = 3
    #: Told to stop; finishing what it has.
    STOPPING = 4


STATE_NAMES: Final = {
    SlotState.FREE: "Free",
    SlotState.STARTING: "Starting",
    SlotState.IDLE: "Idle",
    SlotState.BUSY: "Running",
    SlotState.STOPPING: "Finishing",
}

METHOD_LEN: Final = 16
URI_LEN: Final = 480


@dataclass(slots=True)
class Slot:
    """One worker's line on the scoreboard (decoded)."""

    state: int = SlotState.FREE
    pid: int = 0
    generation: int = 0
    #: Wall-clock time the process started.
    started: float = 0.0
    requests: int = 0
    accepted: int = 0
    #: Requests begun so far; identifies "the current request" across reads.
    request_seq: int = 0
    request_start: float = 0.0
    #: CLOCK_MONOTONIC (system wide, so comparable between processes).
    request_start_mono: float = 0.0
    last_duration: float = 0.0
    #: CPU use of the last request, percent of one core; see
    #: fcgi.pool.worker_hooks.CPU_READ_INTERVAL for requests shorter than 1 ms.
    last_cpu: float = 0.0
    #: Peak RSS of the process, bytes, as of the end of the last request.
    last_memory: int = 0
    content_length: int = 0
    last_status: int = 0
    #: Requests running right now (more than 1 only in a trio worker).
    active: int = 0
    method: str = ""
    uri: str = ""


# Byte order and sizes: "=" (the machine's own order, standard sizes, no
# padding). The mapping never leaves the machine, and native order lets a
# worker write its counter through a memoryview of 32-bit words (SlotWriter).
#
# A slot's bytes, grouped so that each of a request's two writes is one
# contiguous pack: the end of a request writes from ``requests`` through
# ``active``, its start from ``accepted`` through ``uri``. ``accepted``,
# ``state`` and ``active`` sit where the two groups overlap, so both carry them.
_FIXED: Final = struct.Struct("=IiI4xd")  # seq, pid, generation, started
_END: Final = struct.Struct("=QddQIQII")  # requests .. last_status, accepted, state, active
_START: Final = struct.Struct("=QIIQddq")  # accepted, state, active, request_seq .. content_length
#: The route shown (method, URI): written only when it changes, since most
#: requests of a busy site repeat the one before (500 bytes not packed again).
_ROUTE: Final = struct.Struct(f"={METHOD_LEN}s{URI_LEN}s")
_END_AT: Final = _FIXED.size
_START_AT: Final = _END_AT + _END.size - 16
_ROUTE_AT: Final = _START_AT + _START.size
_SLOT: Final = struct.Struct(f"=IiI4xdQddQIQIIQddq{METHOD_LEN}s{URI_LEN}s")
assert _SLOT.size == _ROUTE_AT + _ROUTE.size
_SEQ: Final = struct.Struct("=I")
#: The largest value of a sequence counter; it wraps to 0 after it (an even
#: number, as a counter at rest must be).
_SEQ_MASK: Final = 0xFFFFFFFF
SLOT_SIZE: Final = (_SLOT.size + 63) // 64 * 64
#: Reads of a header or slot that may meet a write in progress before the
#: last one is taken as it is: a write holds the counter odd for well under a
#: microsecond, and a torn read only misleads one status page or heartbeat.
_READ_ATTEMPTS: Final = 1000


@dataclass(slots=True)
class Header:
    """Pool-wide figures; written by the master only."""

    start_time: float = 0.0
    #: Connections accepted / requests served by workers that have exited.
    accepted_base: int = 0
    requests_base: int = 0
    listen_queue: int = 0
    max_listen_queue: int = 0
    listen_queue_len: int = 0
    max_active: int = 0
    max_children_reached: int = 0
    slow_requests: int = 0
    #: Current generation (bumped by every reload).
    generation: int = 0
    #: Requests cut short by request_terminate_timeout (their worker killed).
    terminated_requests: int = 0
    #: Workers that exited before they were ready (since the pool started).
    start_failures: int = 0
    #: Seconds the master now waits between start attempts (0: workers start).
    start_backoff: float = 0.0


_HEADER: Final = struct.Struct("=IIIxxxxdQQIIIIQQIxxxxQQd")
HEADER_SIZE: Final = 128
assert _HEADER.size <= HEADER_SIZE


class Scoreboard:
    """A fixed number of slots in memory shared by the master and its workers."""

    def __init__(self, n_slots: int) -> None:
        self.n_slots = n_slots
        self._map = mmap.mmap(-1, HEADER_SIZE + n_slots * SLOT_SIZE, flags=mmap.MAP_SHARED)
        #: The mapping as 32-bit words, made for the first SlotWriter (only a
        #: worker makes one, after the fork).
        self._words: memoryview | None = None
        self.write_header(Header())

    def close(self) -> None:
        if self._words is not None:
            # The mapping cannot close while a view of it exists.
            self._words.release()
            self._words = None
        self._map.close()

    # -- header -----------------------------------------------------------

    def write_header(self, header: Header) -> None:
        seq = _SEQ.unpack_from(self._map, 8)[0]
        writing = (seq + 1) & _SEQ_MASK
        _SEQ.pack_into(self._map, 8, writing)
        _HEADER.pack_into(
            self._map,
            0,
            MAGIC,
            self.n_slots,
            writing,
            header.start_time,
            header.accepted_base,
            header.requests_base,
            header.listen_queue,
            header.max_listen_queue,
            header.listen_queue_len,
            header.max_active,
            header.max_children_reached,
            header.slow_requests,
            header.generation,
            header.terminated_requests,
            header.start_failures,
            header.start_backoff,
        )
        _SEQ.pack_into(self._map, 8, (seq + 2) & _SEQ_MASK)

    def read_header(self) -> Header:
        for _ in range(_READ_ATTEMPTS):
            values = _HEADER.unpack_from(self._map, 0)
            seq = values[2]
            if seq & 1 == 0 and _SEQ.unpack_from(self._map, 8)[0] == seq:
                break
        return Header(*values[3:])

    # -- slots ------------------------------------------------------------

    def _offset(self, index: int) -> int:
        if not 0 <= index < self.n_slots:
            raise IndexError(index)
        return HEADER_SIZE + index * SLOT_SIZE

    def write_slot(self, index: int, slot: Slot) -> None:
        off = self._offset(index)
        m = self._map
        seq = _SEQ.unpack_from(m, off)[0] | 1
        _SEQ.pack_into(m, off, seq)
        _SLOT.pack_into(
            m,
            off,
            seq,
            slot.pid,
            slot.generation,
            slot.started,
            slot.requests,
            slot.last_duration,
            slot.last_cpu,
            slot.last_memory,
            slot.last_status,
            slot.accepted,
            slot.state,
            slot.active,
            slot.request_seq,
            slot.request_start,
            slot.request_start_mono,
            slot.content_length,
            slot.method.encode("latin-1", "replace")[:METHOD_LEN],
            slot.uri.encode("latin-1", "replace")[:URI_LEN],
        )
        _SEQ.pack_into(m, off, (seq + 1) & _SEQ_MASK)

    def read_slot(self, index: int) -> Slot:
        off = self._offset(index)
        m = self._map
        for _ in range(_READ_ATTEMPTS):
            values = _SLOT.unpack_from(m, off)
            seq = values[0]
            if seq & 1 == 0 and _SEQ.unpack_from(m, off)[0] == seq:
                break
        (
            _,
            pid,
            generation,
            started,
            requests,
            last_duration,
            last_cpu,
            last_memory,
            last_status,
            accepted,
            state,
            active,
            request_seq,
            request_start,
            request_start_mono,
            content_length,
            method,
            uri,
        ) = values
        return Slot(
            state=state,
            pid=pid,
            generation=generation,
            started=started,
            requests=requests,
            accepted=accepted,
            request_seq=request_seq,
            request_start=request_start,
            request_start_mono=request_start_mono,
            last_duration=last_duration,
            last_cpu=last_cpu,
            last_memory=last_memory,
            content_length=content_length,
            last_status=last_status,
            active=active,
            method=method.rstrip(b"\0").decode("latin-1"),
            uri=uri.rstrip(b"\0").decode("latin-1"),
        )

    def writer(self, index: int) -> SlotWriter:
        """The fast writer for slot ``index``, for the one process that owns it."""
        if self._words is None:
            self._words = memoryview(self._map).cast("I")
        return SlotWriter(self._map, self._words, self._offset(index))

    def slots(self) -> list[tuple[int, Slot]]:
        """Every slot in use, with its index."""
        out = []
        for i in range(self.n_slots):
            slot = self.read_slot(i)
            if slot.state != SlotState.FREE:
                out.append((i, slot))
        return out

    def free_index(self) -> int | None:
        for i in range(self.n_slots):
            if _SEQ.unpack_from(self._map, self._offset(i) + _START_AT + 8)[0] == SlotState.FREE:
                return i
        return None


class SlotWriter:
    """A worker's two per-request writes to its own slot, one pack each.

    The owner is the slot's only writer, so it keeps the sequence counter
    itself instead of reading it back from shared memory on every write. The
    counter is stored as one item of a memoryview of 32-bit words: the same
    four bytes ``_SEQ.pack_into`` would write, for a fifth of its cost (an
    item store instead of a method lookup, a buffer export and a format
    parse), twice per write. The packs of the fields are bound once.
    """

    __slots__ = ("_at", "_map", "_off", "_pack_end", "_pack_route", "_pack_start", "_seq", "_words")

    def __init__(self, shared: mmap.mmap, words: memoryview, offset: int) -> None:
        self._map = shared
        self._off = offset
        self._words = words
        #: The counter's index in ``words`` (slots start on 64-byte boundaries).
        self._at = offset // _SEQ.size
        self._pack_start = _START.pack_into
        self._pack_end = _END.pack_into
        self._pack_route = _ROUTE.pack_into
        self._seq = _SEQ.unpack_from(shared, offset)[0] & ~1

    def request_started(
        self,
        accepted: int,
        state: int,
        active: int,
        request_seq: int,
        start: float,
        start_mono: float,
        content_length: int,
        route: tuple[bytes, bytes] | None,
    ) -> None:
        """Write a request's start; ``route`` (method, URI) only if it is not the one shown."""
        # The seqlock is written out here and in request_finished rather than
        # shared through a helper: these two run on every request, and a call
        # with *args costs 3% of a hello request's instructions (callgrind).
        words, at, seq, off = self._words, self._at, self._seq, self._off
        words[at] = seq + 1
        self._pack_start(
            self._map,
            off + _START_AT,
            accepted,
            state,
            active,
            request_seq,
            start,
            start_mono,
            content_length,
        )
        if route is not None:
            self._pack_route(self._map, off + _ROUTE_AT, route[0], route[1])
        self._seq = seq = (seq + 2) & _SEQ_MASK
        words[at] = seq

    def request_finished(
        self,
        requests: int,
        accepted: int,
        duration: float,
        cpu: float,
        memory: int,
        status: int,
        state: int,
        active: int,
    ) -> None:
        words, at, seq = self._words, self._at, self._seq
        words[at] = seq + 1
        self._pack_end(
            self._map,
            self._off + _END_AT,
            requests,
            duration,
            cpu,
            memory,
            status,
            accepted,
            state,
            active,
        )
        self._seq = seq = (seq + 2) & _SEQ_MASK
        words[at] = seq

    def sync(self) -> None:
        """Take up the counter after a whole-slot write by :meth:`Scoreboard.write_slot`."""
        self._seq = _SEQ.unpack_from(self._map, self._off)[0] & ~1
