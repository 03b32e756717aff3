"""Running hooks: bounded in time, and in what a hook can make clamwatch hold.

Each hook runs in a session, and so a process group, of its own. A hook that
outlives hook_timeout, or that is still running when clamwatch stops, is
killed with its whole group: a shell script's `sleep` or `curl` kept its
stderr pipe open after the shell itself was killed, and waiting for that
pipe's end held a hook worker, and the daemon's stop, for as long as the
child lived. Its exit is told by a pidfd (pidfd_open(2)), not by the pipe's
end, which a child it left running in the background may hold open.

Only the last _TAIL bytes of stderr are kept (the event quotes its last
line): a hook that writes megabytes makes clamwatch read them, not keep
them.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

_TAIL = 4096  # bytes of stderr kept: enough for its last line
_READ = 1 << 16
_TICK = 0.05  # s between looks at the hook, where no pidfd tells of its exit
_DRAIN = 1 << 20  # bytes read at most after its exit, from children still writing


@dataclass(frozen=True, slots=True)
class HookEnd:
    status: int | None  # exit status; negative: killed by that signal; None: timed out
    stderr: bytes  # its last _TAIL bytes

    @property
    def last_line(self) -> str:
        lines = self.stderr.decode("utf-8", "replace").strip().splitlines()
        return lines[-1] if lines else ""


class HookProcesses:
    """The hooks running now, so that a stop can kill them all, each with its group."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen[bytes]] = set()  # started, not yet reaped
        self._stopping = False

    def run(self, argv: Sequence[str], env: Mapping[str, str], timeout: float) -> HookEnd:
        """Run ``argv`` to its end, or kill it and its group after ``timeout`` s.

        OSError when it cannot be started (missing, not executable).
        """
        process = subprocess.Popen(
            list(argv),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        with self._lock:
            self._running.add(process)
            if self._stopping:  # stopped while it was being started
                _kill_group(process)
        try:
            stderr, timed_out = self._follow(process, time.monotonic() + timeout)
        finally:
            # out of the set before it is reaped: a pid is killed only while
            # it cannot have been given to another process
            with self._lock:
                self._running.discard(process)
            assert process.stderr is not None
            process.stderr.close()
        status = process.wait()
        return HookEnd(None if timed_out else status, stderr)

    def kill_all(self) -> None:
        """Kill every hook running now, and any that starts from now on."""
        with self._lock:
            self._stopping = True
            for process in self._running:
                _kill_group(process)

    def _follow(self, process: subprocess.Popen[bytes], deadline: float) -> tuple[bytes, bool]:
        """Read its stderr until it exits (True: it was killed at ``deadline``)."""
        assert process.stderr is not None
        os.set_blocking(process.stderr.fileno(), False)
        pipe: int | None = process.stderr.fileno()
        tail = bytearray()
        try:
            pidfd: int | None = os.pidfd_open(process.pid)
        except OSError:  # an older kernel, or a seccomp filter that refuses it
            pidfd = None
        try:
            while not _exited(process.pid):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    with self._lock:
                        _kill_group(process)
                    return bytes(tail), True
                watched = [fd for fd in (pipe, pidfd) if fd is not None]
                wait = remaining if pidfd is not None else min(remaining, _TICK)
                readable, _, _ = select.select(watched, [], [], wait)
                if pipe is not None and pipe in readable and _read_into(pipe, tail) == 0:
                    pipe = None  # its end: only the exit is left to wait for
            if pipe is not None:
                read = 0
                while read < _DRAIN and (n := _read_into(pipe, tail)):  # None: no more now
                    read += n
            return bytes(tail), False
        finally:
            if pidfd is not None:
                os.close(pidfd)


def _read_into(pipe: int, tail: bytearray) -> int | None:
    """Read what is there: how much, 0 at the pipe's end, None when nothing is there now."""
    try:
        data = os.read(pipe, _READ)
    except BlockingIOError:
        return None
    tail += data
    del tail[:-_TAIL]
    return len(data)


def _exited(pid: int) -> bool:
    """Whether ``pid`` (a child) has exited; it is left to be reaped (WNOWAIT)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL to the hook's process group (its pid: start_new_session). Call with
    the lock held, on a process in the running set, so not yet reaped."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def describe_status(status: int) -> str:
    """'exited with status 3', 'was killed by signal 9 (SIGKILL)'."""
    if status >= 0:
        return f"exited with status {status}"
    try:
        name = f" ({signal.Signals(-status).name})"
    except ValueError:
        name = ""
    return f"was killed by signal {-status}{name}"
