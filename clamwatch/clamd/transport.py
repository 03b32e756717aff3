"""Sockets to clamd: nonblocking connect, and writes that carry descriptors.

OS errors are mapped to :class:`ClamdConnectionError` here, at the boundary,
and nowhere else (httpcore's ``map_exceptions``).
"""

from __future__ import annotations

import array
import contextlib
import errno
import os
import socket
import stat

from clamwatch.clamd.address import ClamdAddress
from clamwatch.files import describe_os_error


class ClamdConnectionError(Exception):
    """The connection to clamd could not be made or was lost."""

    def __init__(self, message: str, *, denied: bool = False) -> None:
        super().__init__(message)
        # the kernel refused us the socket (EACCES, EPERM): no wait fixes that
        # by itself, unless clamd is just setting its socket's mode (Engine)
        self.denied = denied


def describe_socket_access(path: str) -> str:
    """What an admin needs to see when connecting to the Unix socket ``path`` is denied.

    Connecting takes write permission on the socket and search permission
    on every directory above it: say who owns it, its mode, and who we are.
    """
    import grp
    import pwd

    def user(uid: int) -> str:
        with contextlib.suppress(KeyError):
            return pwd.getpwuid(uid).pw_name
        return str(uid)

    def group(gid: int) -> str:
        with contextlib.suppress(KeyError):
            return grp.getgrgid(gid).gr_name
        return str(gid)

    we = user(os.geteuid())
    groups = ", ".join(group(g) for g in sorted({os.getegid(), *os.getgroups()}))
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"{path}: {describe_os_error(exc)}; this process runs as {we}, groups {groups}"
    mode = stat.filemode(st.st_mode)
    return (
        f"{path} is {mode} {user(st.st_uid)}:{group(st.st_gid)}, and connecting takes write"
        f" permission on it; this process runs as {we}, groups {groups}"
    )


def open_socket(address: ClamdAddress) -> tuple[socket.socket, bool]:
    """A nonblocking socket connecting to ``address``; True when the connect is done."""
    try:
        if address.path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            target: str | tuple[object, ...] = address.path
        else:
            assert address.host is not None and address.port is not None
            family, kind, proto, _, target = socket.getaddrinfo(
                address.host, address.port, type=socket.SOCK_STREAM
            )[0]
            sock = socket.socket(family, kind | socket.SOCK_CLOEXEC, proto)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except socket.gaierror as exc:  # its errno is getaddrinfo()'s, not one os.strerror knows
        raise ClamdConnectionError(f"cannot look up {address.host}: {exc.strerror}") from exc
    except OSError as exc:
        raise ClamdConnectionError(describe_os_error(exc)) from exc
    sock.setblocking(False)
    code = sock.connect_ex(target)
    if code == 0:
        return sock, True
    if code == errno.EINPROGRESS:
        return sock, False
    sock.close()
    # EAGAIN on a Unix socket: clamd's listen backlog is full; retried later
    message = os.strerror(code)
    denied = code in (errno.EACCES, errno.EPERM)
    if denied and address.path is not None:
        message = f"{message} ({describe_socket_access(address.path)})"
    elif code == errno.ECONNREFUSED and address.path is not None:
        message += _not_a_socket(address.path)
    raise ClamdConnectionError(message, denied=denied)


def _not_a_socket(path: str) -> str:
    """Why a connect to ``path`` was refused when it is no socket at all, else ""."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return ""
    if stat.S_ISSOCK(mode):
        return ""  # clamd is gone and left its socket (or is not listening yet)
    kind = "a directory" if stat.S_ISDIR(mode) else "a regular file" if stat.S_ISREG(mode) else ""
    return f" ({path} is {kind}, not a socket)" if kind else f" ({path} is not a socket)"


def acknowledge_now(sock: socket.socket) -> None:
    """Have the kernel acknowledge what was just read at once, not up to 40 ms later.

    clamd writes its replies with Nagle's algorithm on, so a reply written
    while an earlier one is unacknowledged waits in clamd's socket for our
    ACK. Linux holds back an ACK that no data of ours can carry for its
    delayed-ACK timeout (40 ms at least), so a client with nothing left to
    send got the last replies of a scan 30-40 ms late (measured: the last
    50 ms of a 10,000-file `scan --stream` brought a third of the replies
    they should have). TCP_QUICKACK sends the pending ACK now; the kernel
    may delay again later, so the engine sets it after each read that
    nothing will follow. A socket that does not take it (a Unix socket,
    which has no ACKs) is left as it is.
    """
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)


def finish_connect(sock: socket.socket) -> None:
    """After a nonblocking connect became writable: did it succeed?"""
    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if code != 0:
        raise ClamdConnectionError(os.strerror(code))


def send_with_fd(sock: socket.socket, data: bytes | bytearray | memoryview, fd: int | None) -> int:
    """Write what the socket takes of ``data``; ``fd`` rides on the first byte."""
    if fd is None:
        return sock.send(data)
    fds = array.array("i", [fd])
    return sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
