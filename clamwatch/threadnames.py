"""Thread names the kernel knows: what ``top -H``, ``ps -L`` and /proc show.

Python (before 3.14) keeps a thread's name to itself: the kernel shows every
thread under the process's own name, so an admin cannot tell which one is
busy. Each clamwatch thread calls :func:`name_this_thread` first thing, so
that ``top -H`` shows cw-dispatch, cw-clamd, cw-inotify, cw-walk,
cw-watch-roots, cw-action_N and cw-hook_N.
"""

from __future__ import annotations

import threading

_PREFIX = "clamwatch-"
_SHORT = "cw-"
_LIMIT = 15  # bytes: the kernel's TASK_COMM_LEN (16) less the final NUL


def kernel_name(name: str) -> str:
    """``clamwatch-dispatch`` -> ``cw-dispatch``, cut to what the kernel keeps."""
    if name.startswith(_PREFIX):
        name = _SHORT + name[len(_PREFIX) :]
    return name.encode()[:_LIMIT].decode(errors="ignore")


def name_this_thread() -> None:
    """Tell the kernel the calling thread's Python name (shortened); quiet if it cannot."""
    try:
        with open("/proc/thread-self/comm", "w", encoding="utf-8") as comm:
            comm.write(kernel_name(threading.current_thread().name))
    except OSError:
        pass  # no /proc (a chroot, another kernel): the names stay Python's own
