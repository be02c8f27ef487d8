"""The master: one loop that keeps every pool at the right size and answers signals.

:meth:`Master.run` reads top to bottom as the whole story (its docstring draws
it). The master holds the loop, the signals and the forking; what it does
them with lives beside it:

* :mod:`fcgi.listeners`: the sockets, bound or inherited (systemd, a previous
  master), and the unix socket files to remove;
* :mod:`fcgi.pool.running_pool`: one pool's children (each a
  :class:`~fcgi.pool.running_pool.Life`), scoreboard and start retries;
* :mod:`fcgi.pool.scaling` and :mod:`fcgi.pool.reload`: pure decisions (how many
  workers; the next step of a graceful reload), which the master carries out;
* :mod:`fcgi.pool.status_server`: the ``status_listen`` page;
* :mod:`fcgi.pool.reexec`: a master replacing itself for new preloaded code.

A worker that cannot start is fatal only before "ready" (the exit status says
why: 3 the app, 4 anything else). After it, the surviving workers go on
serving while the master tries again with a growing delay (1 s doubling to
30 s), one worker at a time, until one starts.

Signal handlers only queue the signal number; ``signal.set_wakeup_fd`` wakes
the ``poll`` so the loop does the work outside the handler. The master never
runs a thread or an event loop, so ``fork()`` is always safe.

No signal may find the master without its handlers: that would kill it and
orphan its workers. They are blocked from the moment the master starts (and
across the exec of a preload reload) until the handlers are installed, which
is the first thing :meth:`Master.run` does; and around each ``fork()`` until
the new worker has installed its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import sys
import time
from collections import deque
from enum import IntEnum
from types import FrameType

from fcgi import stacks, systemd
from fcgi.escape import escape
from fcgi.exit_codes import EXIT_APP_IMPORT, EXIT_OK, EXIT_WORKERS
from fcgi.handoff import Channel
from fcgi.listeners import Listeners
from fcgi.pool import preflight, reexec, reload
from fcgi.pool.config import MasterConfig, PoolConfig
from fcgi.pool.logs import reopen_log_files, setup_logging
from fcgi.pool.running_pool import START_BACKOFF_FIRST, Child, Life, RunningPool
from fcgi.pool.scaling import dynamic_decision, static_decision
from fcgi.pool.scoreboard import Slot, SlotState
from fcgi.pool.status_server import StatusResponder, StatusServer
from fcgi.pool.worker_output import OutputPipe, captures_output
from fcgi.pool.worker_process import (
    EXIT_APP_ERROR,
    EXIT_BOOT_ERROR,
    BootError,
    WorkerSpec,
    import_worker_code,
    load_pool_app,
    run_worker,
)
from fcgi.proctitle import master_title, set_title

log = logging.getLogger("fcgi.pool")

#: PHP-FPM's idle-server maintenance period.
HEARTBEAT = 1.0
#: Loop period while a child is starting (readiness is seen this fast).
FAST_TICK = 0.05
#: Fast stop: how long children get between SIGINT and SIGKILL.
FAST_STOP_GRACE = 1.0
#: Signals of a worker that count towards emergency_restart_threshold, as in
#: PHP-FPM: a crash in C (the interpreter, an extension), which a fresh master
#: may cure; an app that raises or exits is replaced without counting.
EMERGENCY_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGBUS})
#: What a signal asks of the master, as of PHP-FPM's (and the single-process
#: server's, :func:`fcgi.server.run_single`): finish the requests in flight
#: and stop; start new workers with new code. SIGINT is the fast stop, SIGUSR1
#: reopens the log files, SIGTTIN / SIGTTOU add or remove a static worker.
GRACEFUL_STOP_SIGNALS = (signal.SIGTERM, signal.SIGQUIT)
RELOAD_SIGNALS = (signal.SIGHUP, signal.SIGUSR2)
#: Either stop: one of them queued during a preload reload's import check
#: cancels the exec.
STOP_SIGNALS = (*GRACEFUL_STOP_SIGNALS, signal.SIGINT)


class State(IntEnum):
    RUNNING = 0
    STOPPING = 1  # graceful
    TERMINATING = 2  # fast


class Master:
    def __init__(self, config: MasterConfig) -> None:
        self.config = config
        self.pools: list[RunningPool] = []
        self.state = State.RUNNING
        self.exit_code = EXIT_OK
        self.signals: deque[int] = deque()
        self.outputs: dict[int, OutputPipe] = {}
        self.status_servers: list[StatusServer] = []
        #: Every listening socket (pools' and status_listen's), and the unix
        #: socket files this master (or the one it re-executed from) created.
        self.listeners = Listeners()
        self.stop_deadline: float | None = None
        self.next_heartbeat = 0.0
        self.next_systemd_status = 0.0
        self.announced_ready = False
        #: Stack dumps asked of workers past request_terminate_timeout:
        #: pool name -> pid -> (phase, deadline); see _check_requests.
        self._stack_dumps: dict[str, dict[int, tuple[str, float]]] = {}
        self.crash_times: deque[float] = deque()
        #: Workers of the master this one replaced by re-exec, still finishing.
        self.predecessors: set[int] = set()
        #: Their hand-off channels' sending ends, shut when they are told to finish.
        self.predecessor_channels: list[socket.socket] = []
        #: Set once this process wrote config.pid_file (only then is it ours to remove).
        self.pid_file_written = False
        #: Re-executed by a reload: the service was ready before this process
        #: began, so a worker that cannot start is retried, never fatal.
        self.resumed = False
        #: systemd's WatchdogSec= in seconds (None: no watchdog), and when the
        #: next WATCHDOG=1 is due (every half interval, as sd_watchdog_enabled(3) advises).
        self.watchdog = systemd.watchdog_interval()
        self.next_watchdog = 0.0
        self._wake_r = -1
        self._wake_w = -1

    # == the loop ==================================================================

    def run(self) -> int:
        """Run until stopped; return the exit code. Raises ConfigError before forking.

        ::

            install signal handlers, then let the signals held since the start through
            open sockets (bind, or take systemd's and a previous master's)
            preload apps, import the worker code, write the pid file
            fork the first workers
            loop until stopping and no child (nor a previous master's worker) is left:
                wait        for a signal, a worker's output, a status_listen
                            connection, an ondemand pool's connection, or the
                            next deadline (a fraction of the shortest timeout)
                signals     stop, reload, reopen logs, +/- a static worker
                reap        dead children: log, account, replace; failed starts
                every turn  readiness (READY=1), start retries, reload steps,
                            request timeouts and slowlog, kill deadlines
                heartbeat   once a second: pool sizes, listen queue figures, STATUS=
                watchdog    WATCHDOG=1 every half WatchdogSec, if systemd asks
        """
        # Set before any fork: workers start with it until they set their own,
        # so ``ps`` never shows a worker as a copy of the command line.
        source = self.config.source
        set_title(
            master_title(
                [pool.name for pool in self.config.pools],
                None if source.startswith("<") else source,
            )
        )
        # Handlers first, then the signals held since the exec (or since the
        # command line started the master) are let through: from here on a
        # signal is queued for the loop, never fatal, however long the app
        # takes to preload. Unblocked before the app is imported, so that any
        # process the app starts does not inherit a blocked mask.
        self._install_signals()
        reexec.unblock_signals()
        try:
            self._open_sockets()
            # Before a preload that may take long (after a re-exec, systemd's
            # watchdog is running): the last ping came just before the exec.
            self._feed_watchdog(time.monotonic())
            self._preload_apps()
            import_worker_code([pool.config.worker for pool in self.pools])
            self._write_pid_file()
            names = ", ".join(
                f"{p.name} ({p.config.pm}, {', '.join(p.config.listen)})" for p in self.pools
            )
            log.info("master %d starting pools: %s", os.getpid(), names)
            for pool in self.pools:
                self._maintain(pool, time.monotonic(), initial=True)
            while not self._finished():
                self._wait()
                self._handle_signals()
                self._reap()
                now = time.monotonic()
                self._fast_checks(now)
                if now >= self.next_heartbeat:
                    self.next_heartbeat = now + HEARTBEAT
                    self._heartbeat(now)
                self._feed_watchdog(now)
        finally:
            self._cleanup()
        log.info("master %d exiting with code %d", os.getpid(), self.exit_code)
        return self.exit_code

    def _finished(self) -> bool:
        if self.state == State.RUNNING:
            return False
        # The previous master's workers are our children too (same pid
        # across the exec): leaving before them would orphan them.
        return not any(pool.children for pool in self.pools) and not self.predecessors

    def _wait(self) -> None:
        readers: list[int] = [self._wake_r, *self.outputs]
        for server in self.status_servers:
            readers += server.fds()
        watched: dict[int, RunningPool] = {}
        if self.state == State.RUNNING:
            for pool in self.pools:
                if self._wants_accept_watch(pool):
                    for sock in pool.listeners:
                        watched[sock.fileno()] = pool
                    if pool.handoff is not None and pool.census().total < pool.config.max_children:
                        # A kept connection a leaving or busy worker passed on
                        # waits there as on a listener (fcgi.handoff). Not at
                        # max_children: it holds no request yet, and the busy
                        # worker takes it back once free, so it is no sign of
                        # a full pool (nor a reason to poll it in a loop).
                        watched[pool.handoff.receive_end.fileno()] = pool
        readers += watched
        timeout = max(0.0, self.next_heartbeat - time.monotonic())
        if self._anything_starting():
            timeout = min(timeout, FAST_TICK)
        if any(c.kill_at is not None for p in self.pools for c in p.children.values()):
            timeout = min(timeout, 0.1)
        if self.stop_deadline is not None:
            timeout = min(timeout, 0.1)
        timeout = min(timeout, self._timeout_check_period())
        now = time.monotonic()
        if self.watchdog is not None:
            timeout = min(timeout, max(0.0, self.next_watchdog - now))
        for pool in self.pools:
            if pool.spawn_blocked_until:
                timeout = min(timeout, max(0.0, pool.spawn_blocked_until - now))
        # poll(), not select(): a large pool with catch_workers_output has more
        # than select()'s 1024 descriptors.
        poller = select.poll()
        for fd in readers:
            poller.register(fd, select.POLLIN)
        try:
            ready = poller.poll(timeout * 1000)
        except InterruptedError:
            return
        for fd, _ in ready:
            if fd == self._wake_r:
                with contextlib.suppress(OSError):
                    while os.read(self._wake_r, 512):
                        pass
            elif fd in self.outputs:
                pipe = self.outputs[fd]
                if not pipe.drain():
                    del self.outputs[fd]
                    pipe.close()
            elif fd in watched:
                self._on_connection_waiting(watched[fd])
            else:
                for server in self.status_servers:
                    server.on_readable(fd)

    def _timeout_check_period(self) -> float:
        period = HEARTBEAT
        for pool in self.pools:
            for limit in (
                pool.config.request_terminate_timeout,
                pool.config.request_slowlog_timeout,
            ):
                if limit > 0:
                    period = min(period, max(0.05, limit / 4))
        return period

    def _anything_starting(self) -> bool:
        return any(c.life is Life.STARTING for p in self.pools for c in p.children.values())

    # == signals ====================================================================

    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for sig in reexec.MASTER_SIGNALS:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum != signal.SIGCHLD:
            self.signals.append(signum)

    def _handle_signals(self) -> None:
        while self.signals:
            sig = self.signals.popleft()
            name = signal.Signals(sig).name
            if sig in GRACEFUL_STOP_SIGNALS:
                if self.state == State.RUNNING:
                    log.info("%s: graceful stop (finishing in-flight requests)", name)
                    self._stop(graceful=True)
                elif sig == signal.SIGTERM and self.state == State.STOPPING:
                    log.info("second SIGTERM: fast stop")
                    self._stop(graceful=False)
            elif sig == signal.SIGINT:
                if self.state != State.TERMINATING:
                    log.info("SIGINT: fast stop")
                    self._stop(graceful=False)
            elif sig in RELOAD_SIGNALS:
                if self.state == State.RUNNING:
                    log.info("%s: graceful reload", name)
                    self._reload_all()
            elif sig == signal.SIGUSR1:
                log.info("SIGUSR1: reopening log files")
                reopen_log_files()
                self._signal_all(signal.SIGUSR1)
            elif sig in (signal.SIGTTIN, signal.SIGTTOU):
                self._resize(+1 if sig == signal.SIGTTIN else -1)

    def _signal_all(self, sig: int) -> None:
        for pool in self.pools:
            for child in pool.children.values():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, sig)

    def _stop(self, graceful: bool) -> None:
        systemd.notify("STOPPING=1")
        self._retire_predecessors(signal.SIGTERM if graceful else signal.SIGINT)
        now = time.monotonic()
        # Remove the unix socket files this master created now, not at exit:
        # while the workers serve what is already queued (issue #10), no new
        # connection can join the queue by path, so the queue runs dry and
        # nothing is left in it to be reset when the sockets close; and a new
        # master may bind the path at once. Sockets inherited from systemd
        # are not ours: their queue waits for the next master.
        self.listeners.remove_files()
        for pool in self.pools:
            # Before any worker hears of the stop: a worker leaving passes its
            # kept connections on (fcgi.handoff), but none of its siblings will
            # go on serving now, so they are closed instead.
            pool.close_channel_for_sending()
            # A reload under way ends here: its next step (a Switch followed by
            # the reload asked meanwhile) would start workers no one tells to stop.
            pool.reload = reload.Reload()
        if graceful:
            self.state = State.STOPPING
            grace = self.config.process_control_timeout
            self.stop_deadline = now + grace if grace > 0 else None
            for pool in self.pools:
                pool.finish_all()
        else:
            self.state = State.TERMINATING
            self.stop_deadline = now + FAST_STOP_GRACE
            self._signal_all(signal.SIGINT)

    def _resize(self, delta: int) -> None:
        for pool in self.pools:
            if pool.config.pm != "static":
                log.info("[pool %s] SIGTTIN/SIGTTOU only resize static pools", pool.name)
                continue
            target = max(1, min(pool.target + delta, pool.n_slots // 2))
            log.info("[pool %s] workers: %d -> %d", pool.name, pool.target, target)
            pool.target = target
            self._maintain(pool, time.monotonic())

    # == children ===================================================================

    def _spawn(self, pool: RunningPool, generation: int | None = None) -> Child | None:
        now = time.monotonic()
        index = pool.board.free_index()
        if index is None:
            log.error("[pool %s] no free scoreboard slot; not spawning", pool.name)
            return None
        gen = pool.generation if generation is None else generation
        pool.board.write_slot(index, Slot(state=SlotState.STARTING, generation=gen))
        pipes: list[OutputPipe] = []
        if captures_output(self.config, pool.config):
            pipes = [OutputPipe(pool.name, "stdout"), OutputPipe(pool.name, "stderr")]
        spec = WorkerSpec(
            config=pool.config,
            board=pool.board,
            index=index,
            generation=gen,
            listeners=pool.listeners,
            protocols=self.listeners.protocols_of(pool.listeners),
            handoff=pool.handoff,
            app=pool.app,
            close_fds=self._master_only_fds(pool),
            stdout_fd=pipes[0].write_fd if pipes else None,
            stderr_fd=pipes[1].write_fd if pipes else None,
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        # The child starts with the master's handlers, which would swallow a
        # signal meant for it (SIGTERM), then with default ones, which would
        # kill it (SIGUSR1 from logrotate): held until it has its own.
        reexec.block_signals()
        try:
            pid = os.fork()
        except OSError:
            reexec.unblock_signals()
            raise
        if pid == 0:  # pragma: no cover - the child never returns
            for pipe in pipes:
                os.close(pipe.read_fd)
            run_worker(spec)
        reexec.unblock_signals()
        child = Child(pid=pid, index=index, generation=gen, spawned=now, outputs=pipes)
        for pipe in pipes:
            pipe.pid = pid
            pipe.close_write_end()
            self.outputs[pipe.read_fd] = pipe
        pool.children[pid] = child
        log.debug("[pool %s] spawned child %d (generation %d)", pool.name, pid, gen)
        return child

    def _master_only_fds(self, pool: RunningPool) -> list[int]:
        fds = [self._wake_r, self._wake_w, *self.outputs]
        fds += [channel.fileno() for channel in self.predecessor_channels]
        for server in self.status_servers:
            fds += server.fds()
        for other in self.pools:
            if other is not pool:
                fds += [s.fileno() for s in other.listeners]
                if other.handoff is not None:
                    fds += other.handoff.fds()
        return [fd for fd in fds if fd >= 0]

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for pool in self.pools:
                child = pool.children.pop(pid, None)
                if child is not None:
                    self._child_exited(pool, child, status)
                    break
            else:
                if pid in self.predecessors:
                    self.predecessors.discard(pid)
                    log.info("previous master's worker %d exited", pid)
                else:
                    log.debug("reaped unknown child %d", pid)

    def _child_exited(self, pool: RunningPool, child: Child, status: int) -> None:
        now = time.monotonic()
        for pipe in child.outputs:
            if pipe.read_fd in self.outputs:
                pipe.drain()
                del self.outputs[pipe.read_fd]
            pipe.close()
        slot = pool.account_exit(child)
        lived = now - child.spawned
        killed = child.life is Life.KILLED
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            how = f"exited on signal {sig} ({signal.Signals(sig).name})"
            crashed = not killed
        else:
            code = os.WEXITSTATUS(status)
            how = f"exited with code {code}"
            crashed = code != 0
        what = f"[pool {pool.name}] child {child.pid} {how} after {lived:.3f} s"
        if killed or (not child.live and not crashed):
            log.info("%s", what)
        elif slot.state == SlotState.BUSY:
            log.warning("%s, during %s %s", what, slot.method, slot.uri)
        elif crashed:
            log.warning("%s", what)
        else:
            log.info("%s", what)
        if self.state != State.RUNNING:
            return
        booted = child.life is Life.SERVING or slot.state not in (
            SlotState.STARTING,
            SlotState.FREE,
        )
        if booted and not slot.accepted and start_exit_code(status, None) is not None:
            # Said it could not start after it looked ready, before it took a
            # connection. The drivers say ready only after an ASGI app's
            # lifespan startup, so this is a safety net (an app that exits
            # with 3 or 4 itself): without it such a worker would be replaced
            # at once, again and again, instead of with the start backoff.
            booted = False
        if booted and child.life is Life.STARTING:
            # It got ready and exited between two looks: a start all the same.
            self._note_started(pool)
        if booted and pool.reload.active and child.generation == pool.reload.generation:
            self._reload_step(pool, reload.Left(), now)
        if not booted and child.live:
            self._boot_failed(pool, child, status, how, now)
        elif booted and os.WIFSIGNALED(status) and os.WTERMSIG(status) in EMERGENCY_SIGNALS:
            self._count_crash(now)
        self._maintain(pool, now)

    def _boot_failed(
        self, pool: RunningPool, child: Child, status: int, how: str, now: float
    ) -> None:
        """A worker exited before it was ready (its own log line said why).

        Part of a reload: the reload fails, the old workers go on. Before the
        master was ever ready: it stops, with the exit table's status for
        what went wrong. After: never fatal; the surviving workers serve
        while the master tries again, 1 s later, then 2, 4... up to 30 s, one
        worker at a time, until one starts.
        """
        if pool.reload.active and child.generation == pool.reload.generation:
            pool.header.start_failures += 1
            pool.board.write_header(pool.header)
            self._reload_step(pool, reload.StartFailed(), now)
            return
        if not self.announced_ready and not self.resumed:
            code = start_exit_code(status) or EXIT_WORKERS
            log.critical(
                "[pool %s] workers cannot start (child %d %s); stopping with exit code %d",
                pool.name,
                child.pid,
                how,
                code,
            )
            self.exit_code = code
            self._stop(graceful=True)
            return
        step = pool.start_failed(child, now)
        if step is None:
            return  # forked with the attempt that already set the wait
        log.error(
            "[pool %s] a new worker could not start (child %d %s); workers serving: %d; "
            "retrying in %g s",
            pool.name,
            child.pid,
            how,
            len(pool.live_children()),
            step,
        )
        if self.announced_ready:
            systemd.notify("STATUS=" + self._status_line())
        elif step == START_BACKOFF_FIRST:
            # A re-executed master whose workers cannot start: the previous
            # master's workers go on serving, and systemd hears of it once.
            self._report_reload_failure(
                "the new master's workers cannot start; the previous workers keep serving"
            )

    def _note_started(self, pool: RunningPool) -> bool:
        """A worker of ``pool`` got ready: end its start retries, if any (True then)."""
        if not pool.start_recovered():
            return False
        log.info("[pool %s] a new worker started: start retries are over", pool.name)
        if self.announced_ready:
            systemd.notify("STATUS=" + self._status_line())
        return True

    def _report_reload_failure(self, reason: str) -> None:
        """Tell systemd the reload failed, then that the service is ready again (old code).

        ``reason`` may quote an import error: escaped, so that it stays one
        ``STATUS=`` line and cannot add an assignment of its own.
        """
        systemd.notify("STATUS=Reload failed: " + escape(reason))
        if not self._reloading():
            systemd.notify("READY=1")

    def _count_crash(self, now: float) -> None:
        """A worker killed by SIGSEGV or SIGBUS: reload once too many come too fast.

        PHP-FPM's emergency_restart_threshold: that many such deaths within
        emergency_restart_interval seconds reload the pools as SIGHUP does
        (the master re-executes itself with ``preload_app``). Workers that
        exit, raise or are killed by the master do not count.
        """
        threshold = self.config.emergency_restart_threshold
        if not threshold:
            return
        self.crash_times.append(now)
        interval = self.config.emergency_restart_interval
        while self.crash_times and now - self.crash_times[0] > interval:
            self.crash_times.popleft()
        if len(self.crash_times) >= threshold:
            log.critical(
                "%d workers killed by SIGSEGV or SIGBUS within %g s "
                "(emergency_restart_threshold %d): reloading",
                len(self.crash_times),
                interval,
                threshold,
            )
            self.crash_times.clear()
            self._reload_all()

    # == reload =====================================================================

    def _reload_all(self) -> None:
        """SIGHUP, SIGUSR2, or the emergency threshold: every pool gets new workers."""
        systemd.notify(systemd.reloading())
        for pool in self.pools:
            self._begin_reload(pool)

    def _begin_reload(self, pool: RunningPool) -> None:
        now = time.monotonic()
        preloaded = pool.config.preload_app and pool.config.app_object is None
        self._reload_step(pool, reload.Asked(now, pool.generation, preloaded), now)

    def _advance_reload(self, pool: RunningPool, now: float) -> None:
        """Every turn of a reload: how far its new generation has come."""
        if not pool.reload.active:
            return
        gen = pool.reload.generation
        new = [c for c in pool.children.values() if c.generation == gen and c.live]
        old = [c for c in pool.live_children() if c.generation != gen]
        cfg = pool.config
        wanted = reload.generation_size(
            cfg.pm, pool.target, cfg.effective_start_servers, len(old), cfg.max_children
        )
        ready = sum(1 for c in new if c.life is Life.SERVING)
        self._reload_step(pool, reload.Progress(now, len(new), ready, wanted), now)

    def _reload_step(self, pool: RunningPool, event: reload.Event, now: float) -> None:
        """Feed ``event`` to the pool's reload (:func:`fcgi.pool.reload.step`); do what it says."""
        pool.reload, actions = reload.step(pool.reload, event)
        for action in actions:
            if isinstance(action, reload.ReExec):
                self._reexec()
            elif isinstance(action, reload.Spawn):
                if action.probe and pool.app is not None:
                    log.warning(
                        "[pool %s] the app object was handed over by fcgi.serve(): workers "
                        "restart with it; restart the program for new code",
                        pool.name,
                    )
                for _ in range(action.count):
                    self._spawn(pool, action.generation)
            elif isinstance(action, reload.Switch):
                self._switch_generation(pool, action, now)
            elif isinstance(action, reload.Abandon):
                self._abandon_reload(pool, action, now)
            else:  # reload.Again: asked while this one ran
                self._begin_reload(pool)

    def _switch_generation(self, pool: RunningPool, switch: reload.Switch, now: float) -> None:
        """Every new worker is ready: the old ones finish, the new generation serves."""
        grace = self.config.process_control_timeout
        old = [c for c in pool.live_children() if c.generation != switch.generation]
        for child in old:
            pool.retire(child, now, grace)
        pool.generation = switch.generation
        log.info(
            "[pool %s] reload complete in %.3f s: generation %d serving, %d old workers finishing",
            pool.name,
            switch.took,
            switch.generation,
            len(old),
        )
        if not self._reloading():
            systemd.notify("READY=1\nSTATUS=Reloaded")

    def _abandon_reload(self, pool: RunningPool, abandon: reload.Abandon, now: float) -> None:
        """A new worker could not start: the new ones stop, the old ones keep serving."""
        log.error(
            "[pool %s] reload failed: the new workers cannot start (see above); "
            "the old workers keep serving",
            pool.name,
        )
        for other in list(pool.children.values()):
            if other.generation == abandon.generation:
                pool.retire(other, now, self.config.process_control_timeout)
        self._report_reload_failure(
            f"[pool {pool.name}] the new workers cannot start; the old workers keep serving"
        )

    def _reloading(self) -> bool:
        return any(pool.reload.active for pool in self.pools)

    def _reexec(self) -> None:
        """Reload a preloaded app: exec a new master, keeping sockets and workers."""
        preloaded = [
            (p.config.app, p.config.chdir)
            for p in self.pools
            if p.config.preload_app and p.config.app_object is None
        ]
        error = reexec.import_error(preloaded)
        if error is not None:
            log.error(
                "reload failed: the new code cannot be imported (%s); the old workers keep serving",
                error,
            )
            self._report_reload_failure(
                f"the new code cannot be imported ({error}); the old workers keep serving"
            )
            return
        # From here signals stay pending, and pending signals survive the
        # exec: the new master handles them once its handlers are in place.
        reexec.block_signals()
        if any(sig in STOP_SIGNALS for sig in self.signals):
            # Asked to stop while the new code was checked: stop, don't exec.
            reexec.unblock_signals()
            log.info("reload cancelled: a stop was requested meanwhile")
            return
        # Queued here means not handled yet: hand them over as pending
        # signals. A reload queued is the exec itself.
        for sig in set(self.signals) - set(RELOAD_SIGNALS):
            os.kill(os.getpid(), sig)
        self.signals.clear()
        if self.watchdog is not None:
            systemd.notify("WATCHDOG=1")  # the new master pings once it has imported the app
        workers = [pid for pool in self.pools for pid in pool.children] + list(self.predecessors)
        log.info(
            "preload_app: re-executing the master to load new code; %d workers "
            "go on serving until the new ones are ready",
            len(workers),
        )
        try:
            channels = {
                p.name: (p.handoff.send_end, p.handoff.receive_end)
                for p in self.pools
                if p.handoff is not None
            }
            reexec.exec_master(
                reexec.Handover(
                    dict(self.listeners.by_spec),
                    list(self.listeners.owned_paths),
                    workers,
                    channels,
                    self.predecessor_channels,
                )
            )
        except OSError as exc:
            reexec.unblock_signals()
            log.error(
                "reload failed: cannot exec %s: %s; the old workers keep serving",
                sys.executable,
                exc,
            )
            self._report_reload_failure(f"cannot exec {sys.executable}: {exc}")

    def _retire_predecessors(self, sig: int = signal.SIGTERM) -> None:
        # First: none of them goes on serving, so a kept connection passed on
        # now would wait, unread, for the last of them to exit (fcgi.handoff).
        for channel in self.predecessor_channels:
            with contextlib.suppress(OSError):
                channel.shutdown(socket.SHUT_WR)
            channel.close()
        self.predecessor_channels = []
        for pid in self.predecessors:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    # == heartbeat ==================================================================

    def _fast_checks(self, now: float) -> None:
        """Every loop turn: readiness, retries, reloads, request timeouts, kill deadlines."""
        for pool in self.pools:
            if pool.note_ready() and self._note_started(pool):
                self._maintain(pool, now)
            elif pool.retry_due(now):
                log.debug("[pool %s] trying to start a worker again", pool.name)
                self._maintain(pool, now)
            self._advance_reload(pool, now)
            self._check_requests(pool, now)
            self._kill_overdue(pool, now)
        for server in self.status_servers:
            server.expire(now)
        if self.stop_deadline is not None and now >= self.stop_deadline:
            self.stop_deadline = None
            self._kill_the_rest()
        if (
            not self.announced_ready
            and self.state == State.RUNNING
            and all(pool.ever_ready or pool.config.pm == "ondemand" for pool in self.pools)
        ):
            self._announce_ready()

    def _kill_overdue(self, pool: RunningPool, now: float) -> None:
        """SIGKILL for each retiring child past its ``kill_at``."""
        for child in list(pool.children.values()):
            if child.life is Life.RETIRING and child.kill_at is not None and now >= child.kill_at:
                log.warning(
                    "[pool %s] child %d still running %.1f s after it was told to stop; killing it",
                    pool.name,
                    child.pid,
                    self.config.process_control_timeout,
                )
                pool.kill(child)

    def _kill_the_rest(self) -> None:
        """The stop's deadline passed: SIGKILL for every child still there."""
        for pool in self.pools:
            for child in list(pool.children.values()):
                if child.life is not Life.KILLED:
                    log.warning(
                        "[pool %s] child %d did not stop in time; killing it",
                        pool.name,
                        child.pid,
                    )
                    pool.kill(child)
        for pid in self.predecessors:
            log.warning("previous master's worker %d did not stop in time; killing it", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _announce_ready(self) -> None:
        """Every pool has a worker ready (ondemand ones need none): tell systemd, once."""
        self.announced_ready = True
        log.info("master %d ready", os.getpid())
        if self.predecessors:
            log.info("telling %d workers of the previous master to finish", len(self.predecessors))
            self._retire_predecessors()
        systemd.notify(f"READY=1\nSTATUS=Ready to handle connections\nMAINPID={os.getpid()}")

    def _check_requests(self, pool: RunningPool, now: float) -> None:
        """Slowlog and request_terminate_timeout, from the scoreboard.

        A request over ``request_slowlog_timeout`` gets SIGUSR2: its worker
        writes the request's stack (:meth:`ScoreboardHooks.dump_stack`) and
        goes on. One over ``request_terminate_timeout`` is killed, but its
        stack is written first, without blocking this loop: SIGUSR2 now and a
        deadline (:data:`fcgi.stacks.STACK_DUMP_GRACE`); at the deadline, if
        the worker did not say it wrote the stack
        (:func:`fcgi.stacks.dump_acknowledged`), FALLBACK_SIGNAL makes
        faulthandler write every thread's stack from C (code stuck in C never
        runs the Python handler), and SIGKILL follows FALLBACK_DUMP_GRACE
        later. The deadlines live in ``_stack_dumps`` (pool name -> pid ->
        (phase, deadline)); a later pass, a fraction of the timeout later at
        most (_timeout_check_period), acts on them.
        """
        cfg = pool.config
        terminate = cfg.request_terminate_timeout
        slowlog = cfg.request_slowlog_timeout
        if not terminate and not slowlog:
            return
        pending = self._stack_dumps.setdefault(pool.name, {})
        for pid in [pid for pid in pending if pid not in pool.children]:
            del pending[pid]  # exited (and reaped) during its grace
        for child in list(pool.children.values()):
            if child.life is Life.KILLED:
                pending.pop(child.pid, None)
                continue
            job = pending.get(child.pid)
            if job is not None:
                phase, deadline = job
                if now < deadline:
                    continue
                if phase == "python" and not stacks.dump_acknowledged(child.pid):
                    log.warning(
                        "[pool %s] child %d did not write its stack within %g s (stuck "
                        "outside Python?): asking faulthandler for every thread's stack",
                        pool.name,
                        child.pid,
                        stacks.STACK_DUMP_GRACE,
                    )
                    stacks.write_fallback_header(cfg.slowlog, pool.name, child.pid)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child.pid, stacks.FALLBACK_SIGNAL)
                    pending[child.pid] = ("faulthandler", now + stacks.FALLBACK_DUMP_GRACE)
                    continue
                del pending[child.pid]
                pool.kill(child)
                continue
            slot = pool.slot_of(child)
            if slot.state != SlotState.BUSY:
                continue
            elapsed = now - slot.request_start_mono
            seq = slot.request_seq
            if terminate and elapsed > terminate and child.terminated_seq != seq:
                child.terminated_seq = seq
                # Counted (PHP-FPM does not): the web server only sees the
                # connection close, so the status page is where it shows.
                pool.header.terminated_requests += 1
                pool.board.write_header(pool.header)
                _warn_request(
                    pool,
                    child,
                    slot,
                    "execution timed out (%.3f s > request_terminate_timeout %g s), "
                    "terminating (its stack first)",
                    elapsed,
                    terminate,
                )
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGUSR2)
                pending[child.pid] = ("python", now + stacks.STACK_DUMP_GRACE)
            elif slowlog and elapsed > slowlog and child.slowlogged_seq != seq:
                child.slowlogged_seq = seq
                pool.header.slow_requests += 1
                pool.board.write_header(pool.header)
                _warn_request(pool, child, slot, "executing too slow (%.3f s), logging", elapsed)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGUSR2)

    def _heartbeat(self, now: float) -> None:
        for pool in self.pools:
            pool.sample_header()
            if self.state == State.RUNNING:
                self._maintain(pool, now)
        if self.config.systemd_interval and now >= self.next_systemd_status:
            self.next_systemd_status = now + self.config.systemd_interval
            if self.announced_ready:
                systemd.notify("STATUS=" + self._status_line())

    def _status_line(self) -> str:
        active = idle = requests = slow = 0
        for pool in self.pools:
            c = pool.census()
            active += c.busy
            idle += c.idle
            requests += pool.header.requests_base + sum(
                pool.slot_of(ch).requests for ch in pool.children.values()
            )
            slow += pool.header.slow_requests
        line = f"Processes active: {active}, idle: {idle}, Requests: {requests}, slow: {slow}"
        for pool in self.pools:
            if pool.start_backoff:
                line += (
                    f"; [pool {pool.name}] new workers cannot start, "
                    f"retrying every {pool.start_backoff:g} s"
                )
        return line

    def _feed_watchdog(self, now: float) -> None:
        """WATCHDOG=1 every half WatchdogSec, from the loop: a stuck loop is restarted."""
        if self.watchdog is None or now < self.next_watchdog:
            return
        self.next_watchdog = now + self.watchdog / 2
        systemd.notify("WATCHDOG=1")

    def _maintain(self, pool: RunningPool, now: float, initial: bool = False) -> None:
        """Bring the pool to its size: replace the dead, add spares, retire the idle."""
        if self.state != State.RUNNING or pool.reload.active:
            return
        if now < pool.spawn_blocked_until:
            return
        cfg = pool.config
        census = pool.census()
        grace = self.config.process_control_timeout
        if cfg.pm == "static":
            decision = static_decision(census, pool.target)
        elif cfg.pm == "dynamic":
            if initial:
                decision = static_decision(census, cfg.effective_start_servers)
            else:
                decision = dynamic_decision(census, cfg, pool.spawn_rate)
                pool.spawn_rate = decision.next_rate
        else:
            self._retire_idle_ondemand(pool, now, grace)
            return
        if decision.full:
            self._reached_max_children(pool)
        else:
            pool.full_warned = False
        if decision.busy_warning:
            log.warning(
                "[pool %s] seems busy (you may need to increase start_servers, or "
                "min/max_spare_servers), spawning %d children, there are %d idle, "
                "and %d total children",
                pool.name,
                decision.spawn,
                census.idle,
                census.total,
            )
        spawn = decision.spawn
        if pool.start_backoff:
            # New workers could not start: one at a time until one does, so
            # a still-broken deploy costs one fork and one log line per retry.
            spawn = 0 if census.starting else min(spawn, 1)
        for _ in range(spawn):
            self._spawn(pool)
        if decision.retire_idle:
            victims = pool.idle_children_oldest_first()[: decision.retire_idle]
            if len(victims) < decision.retire_idle and cfg.pm == "static":
                busy = [c for c in pool.live_children() if c not in victims]
                victims += busy[: decision.retire_idle - len(victims)]
            for child in victims:
                log.debug("[pool %s] retiring idle child %d", pool.name, child.pid)
                pool.retire(child, now, grace)

    def _retire_idle_ondemand(self, pool: RunningPool, now: float, grace: float) -> None:
        limit = pool.config.process_idle_timeout
        for child in pool.live_children():
            slot = pool.slot_of(child)
            if slot.state == SlotState.IDLE and now - pool.idle_since(child, slot) > limit:
                log.debug("[pool %s] child %d idle for %g s: retiring", pool.name, child.pid, limit)
                pool.retire(child, now, grace, idle=True)

    def _reached_max_children(self, pool: RunningPool) -> None:
        """PHP-FPM's "max children reached": counted and logged once per episode."""
        if pool.full_warned:
            return
        pool.full_warned = True
        pool.header.max_children_reached += 1
        pool.board.write_header(pool.header)
        log.warning(
            "[pool %s] server reached max_children setting (%d), consider raising it",
            pool.name,
            pool.config.max_children,
        )

    # == ondemand ===================================================================

    def _wants_accept_watch(self, pool: RunningPool) -> bool:
        if pool.config.pm != "ondemand" or pool.reload.active:
            return False
        if time.monotonic() < pool.spawn_blocked_until:
            return False
        census = pool.census()
        if census.idle or census.starting:
            return False
        if census.total >= pool.config.max_children:
            return not pool.full_warned
        return True

    def _on_connection_waiting(self, pool: RunningPool) -> None:
        census = pool.census()
        if census.idle or census.starting:
            return
        if census.total >= pool.config.max_children:
            self._reached_max_children(pool)
            return
        pool.full_warned = False
        self._spawn(pool)

    # == sockets, logs, files =======================================================

    def _open_sockets(self) -> None:
        handover = reexec.take_handover()
        self.listeners = Listeners.inherit(handover.sockets, handover.owned_paths)
        self.predecessors = set(handover.workers)
        # A channel no pool of this configuration takes is shut when the
        # previous workers are told to finish (see _retire_predecessors).
        self.predecessor_channels = handover.channels
        inherited = handover.pool_channels
        self.resumed = bool(handover.sockets or handover.workers)
        if handover.sockets:
            log.info(
                "master %d re-executed: %d sockets kept, %d previous workers still serving",
                os.getpid(),
                len(handover.sockets),
                len(self.predecessors),
            )
        try:
            for cfg in self.config.pools:
                listeners = [self._listener(cfg, spec) for spec in cfg.listen]
                ends = inherited.pop(cfg.name, None)
                channel = None if ends is None else Channel(*ends)
                pool = RunningPool(cfg, listeners, channel)
                if ends is not None and pool.handoff is not channel:
                    inherited[cfg.name] = ends  # not a pool that passes connections any more
                self.pools.append(pool)
                if cfg.status_listen:
                    sock = self._listener(cfg, cfg.status_listen)
                    self.status_servers.append(StatusServer(sock, StatusResponder(pool)))
        except BaseException:
            self._close_sockets()
            raise
        for send, receive in inherited.values():
            receive.close()
            self.predecessor_channels.append(send)
        for address in self.listeners.close_unclaimed():
            log.warning("inherited socket %s matches no pool's listen; closing it", address)

    def _listener(self, cfg: PoolConfig, spec: str) -> socket.socket:
        """The socket for ``spec``: inherited (systemd, re-exec) or freshly bound."""
        sock = self.listeners.claim(spec)
        if sock is not None:
            log.info("[pool %s] using inherited socket %s", cfg.name, spec)
            return sock
        return self.listeners.bind(
            spec,
            mode=cfg.listen_mode,
            backlog=cfg.listen_backlog,
            owner=cfg.listen_owner,
            group=cfg.listen_group,
        )

    def _close_sockets(self) -> None:
        for server in self.status_servers:
            server.close()
        self.listeners.close()

    def _preload_apps(self) -> None:
        for pool in self.pools:
            if pool.config.app_object is not None:
                pool.app = pool.config.app_object
            elif pool.config.preload_app:
                log.info("[pool %s] preloading %s in the master", pool.name, pool.config.app)
                try:
                    pool.app = load_pool_app(pool.config.app)
                except BootError as exc:
                    # The exit table's 3, as when a worker cannot import it.
                    problem = preflight.Problem(f"[pool {pool.name}] {exc}", app=True)
                    raise preflight.StartupError([problem]) from None

    def _write_pid_file(self) -> None:
        if self.config.pid_file:
            with open(self.config.pid_file, "w") as f:
                f.write(f"{os.getpid()}\n")
            self.pid_file_written = True

    def _cleanup(self) -> None:
        signal.set_wakeup_fd(-1)
        for sig in reexec.MASTER_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        for pool in self.pools:
            for child in pool.children.values():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGKILL)
            for child in pool.children.values():
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(child.pid, 0)
            pool.children.clear()
        for pipe in self.outputs.values():
            pipe.close()
        self.outputs.clear()
        self._close_sockets()
        for pool in self.pools:
            pool.close()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if self.config.pid_file and self.pid_file_written:
            # Only our own: a start refused because another master holds the
            # socket must not remove that master's pid file.
            with contextlib.suppress(OSError):
                os.unlink(self.config.pid_file)


def start_exit_code(status: int, other: int | None = EXIT_WORKERS) -> int | None:
    """The master's exit status when its workers never started (``status`` from waitpid).

    3 when the worker said the app cannot be loaded, 4 when it said anything
    else stopped it (user, group, chdir); ``other`` for any other end (a
    crash while starting: 4 by default).
    """
    if os.WIFEXITED(status):
        code = os.WEXITSTATUS(status)
        if code == EXIT_APP_ERROR:
            return EXIT_APP_IMPORT
        if code == EXIT_BOOT_ERROR:
            return EXIT_WORKERS
    return other


def run_master(config: MasterConfig) -> int:
    """Run the pools of ``config`` until stopped; return the process exit code.

    Raises :class:`~fcgi.errors.ConfigError` (nothing forked yet) for a socket
    that cannot be bound or an app that cannot be preloaded.
    """
    # Until Master.run has its handlers, a signal waits instead of killing a
    # master that is still starting (it may already hold sockets).
    reexec.block_signals()
    # Before anything is bound, written or forked: a mistake that would only
    # show when a worker starts (an ondemand pool's first request) stops the
    # start instead, and leaves nothing behind.
    try:
        preflight.check(config)
    except BaseException:
        reexec.unblock_signals()
        raise
    setup_logging(config)
    return Master(config).run()


def _warn_request(pool: RunningPool, child: Child, slot: Slot, what: str, *args: object) -> None:
    """A warning about the request a child runs: pool, pid, method and URI, then ``what``."""
    log.warning(
        "[pool %s] child %d, method %s, uri %s: " + what,
        pool.name,
        child.pid,
        slot.method,
        slot.uri,
        *args,
    )
