"""Where clamd listens: ``unix:///path`` or ``tcp://host:port``, or read from clamd.conf."""

from __future__ import annotations

import os
import re

from clamwatch.units import parse_size
from clamwatch.value import Value

TYPE_CHECKING = False  # typing's own, without importing typing (see value.py)

if TYPE_CHECKING:
    from typing import Final

DEFAULT_CLAMD_CONF = "/etc/clamav/clamd.conf"


class AddressError(ValueError):
    """An address that cannot name a clamd socket, or no address to be found."""


class ClamdAddress(Value):
    """A clamd socket: ``path`` for a Unix socket, ``host``/``port`` for TCP."""

    __slots__ = ("path", "host", "port")
    path: Final[str | None]
    host: Final[str | None]
    port: Final[int | None]

    def __init__(
        self, *, path: str | None = None, host: str | None = None, port: int | None = None
    ) -> None:
        self.path = path
        self.host = host
        self.port = port

    @property
    def is_unix(self) -> bool:
        return self.path is not None

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix://{self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"


def parse_address(text: str) -> ClamdAddress:
    """``unix:///run/clamav/clamd.ctl``, ``/run/clamav/clamd.ctl``, ``tcp://127.0.0.1:3310``."""
    if text.startswith("/"):
        return ClamdAddress(path=text)
    if text.startswith("unix:"):
        path = text.removeprefix("unix:").removeprefix("//")  # "#", "?" are file name bytes
        if not path.startswith("/"):
            raise AddressError(f"{text!r}: a unix address needs an absolute path: unix:///path")
        return ClamdAddress(path=path)
    # here, not with the module: urllib.parse (and ipaddress) cost `clamwatch
    # scan` 2 ms of its start, and the usual address is a Unix socket
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(text)
        port = parts.port if parts.scheme == "tcp" else None
    except ValueError as exc:
        raise AddressError(f"{text!r}: {exc}") from exc
    if parts.scheme == "tcp":
        if not parts.hostname or not port:
            raise AddressError(f"{text!r}: a tcp address needs a host and a port: tcp://HOST:PORT")
        _check_host(parts.hostname, repr(text))
        return ClamdAddress(host=parts.hostname, port=port)
    raise AddressError(
        f"{text!r} is not a clamd address (expected unix:///PATH or tcp://HOST:PORT)"
    )


def _check_host(host: str, where: str) -> None:
    """A name no lookup can take (an empty label, one over 63 bytes) is an
    AddressError at once: getaddrinfo() raises UnicodeError for it, no OSError."""
    try:
        host.encode("idna")
    except UnicodeError:
        raise AddressError(f"{where}: {host!r} is not a valid host name") from None


class ClamdConf(Value):
    """What clamwatch needs from a clamd.conf: where to connect and clamd's limits."""

    __slots__ = (
        "path",
        "local_socket",
        "tcp_socket",
        "tcp_addr",
        "stream_max_length",
        "max_file_size",
        "max_scan_size",
        "max_scan_time",
        "alert_exceeds_max",
        "read_timeout",
        "max_queue",
        "exclude_paths",
    )
    path: Final[str]
    local_socket: Final[str | None]
    tcp_socket: Final[int | None]
    tcp_addr: Final[str | None]
    stream_max_length: Final[int | None]
    max_file_size: Final[int | None]  # as written; 0: no limit; None: not set
    max_scan_size: Final[int | None]
    max_scan_time: Final[float | None]  # seconds (milliseconds in the file); 0: no limit
    alert_exceeds_max: Final[bool]  # clamd reports each limit it meets as a FOUND
    read_timeout: Final[float | None]
    max_queue: Final[int | None]
    exclude_paths: Final[tuple[str, ...]]  # every ExcludePath, in order (for scan's walk)

    def __init__(
        self,
        path: str,
        *,
        local_socket: str | None = None,
        tcp_socket: int | None = None,
        tcp_addr: str | None = None,
        stream_max_length: int | None = None,
        max_file_size: int | None = None,
        max_scan_size: int | None = None,
        max_scan_time: float | None = None,
        alert_exceeds_max: bool = False,
        read_timeout: float | None = None,
        max_queue: int | None = None,
        exclude_paths: tuple[str, ...] = (),
    ) -> None:
        self.path = path
        self.local_socket = local_socket
        self.tcp_socket = tcp_socket
        self.tcp_addr = tcp_addr
        self.stream_max_length = stream_max_length
        self.max_file_size = max_file_size
        self.max_scan_size = max_scan_size
        self.max_scan_time = max_scan_time
        self.alert_exceeds_max = alert_exceeds_max
        self.read_timeout = read_timeout
        self.max_queue = max_queue
        self.exclude_paths = exclude_paths

    def address(self) -> ClamdAddress:
        """LocalSocket first (it allows FILDES), else TCPSocket on TCPAddr."""
        if self.local_socket:
            return ClamdAddress(path=self.local_socket)
        if self.tcp_socket:
            # clamd's default TCPAddr is every interface; loopback reaches it.
            host = self.tcp_addr or "127.0.0.1"
            _check_host(host, f"{self.path}: TCPAddr")
            return ClamdAddress(host=host, port=self.tcp_socket)
        raise AddressError(f"{self.path}: neither LocalSocket nor TCPSocket is set")


_LINE = re.compile(r"^\s*(\w+)(?:\s+(.*?))?\s*$")
# clamd.conf's booleans
_TRUE = frozenset({"yes", "true", "1"})
_FALSE = frozenset({"no", "false", "0"})


def _boolean(text: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ValueError(f"{text!r} is not yes or no")


def read_clamd_conf(file: str | os.PathLike[str] = DEFAULT_CLAMD_CONF) -> ClamdConf:
    """Read the few settings clamwatch uses; clamd(8) itself validates the rest."""
    path = os.fspath(file)
    try:
        with open(path, encoding="utf-8", errors="replace") as conf:
            text = conf.read()
    except OSError as exc:
        raise AddressError(f"{path}: {os.strerror(exc.errno or 0) or exc}") from exc
    values: dict[str, str] = {}
    excludes: list[str] = []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None or match.group(2) is None:
            continue
        value = match.group(2).strip().strip('"')
        if match.group(1) == "ExcludePath":  # the one key clamd takes many times
            excludes.append(value)
        elif match.group(1) not in values:
            # clamd takes the first TCPAddr as well; other keys appear once
            values[match.group(1)] = value
    try:
        return ClamdConf(
            path=path,
            local_socket=values.get("LocalSocket"),
            tcp_socket=int(values["TCPSocket"]) if "TCPSocket" in values else None,
            tcp_addr=values.get("TCPAddr"),
            stream_max_length=(
                parse_size(values["StreamMaxLength"]) if "StreamMaxLength" in values else None
            ),
            max_file_size=parse_size(values["MaxFileSize"]) if "MaxFileSize" in values else None,
            max_scan_size=parse_size(values["MaxScanSize"]) if "MaxScanSize" in values else None,
            max_scan_time=(int(values["MaxScanTime"]) / 1000 if "MaxScanTime" in values else None),
            # BlockMax: its deprecated name, which clamd 1.4 still honours
            alert_exceeds_max=_boolean(values.get("AlertExceedsMax", "no"))
            or _boolean(values.get("BlockMax", "no")),
            read_timeout=float(values["ReadTimeout"]) if "ReadTimeout" in values else None,
            max_queue=int(values["MaxQueue"]) if "MaxQueue" in values else None,
            exclude_paths=tuple(excludes),
        )
    except ValueError as exc:
        raise AddressError(f"{path}: {exc}") from exc
