"""From the admin's clamd settings to an engine: the address and its limits.

:class:`ClamdSettings` is what the admin wrote ([clamd] in the configuration,
or `clamwatch scan`'s options), :class:`EngineSettings` what the engine runs
with, and :func:`resolve_engine` the step from one to the other. They live
here, not in :mod:`clamwatch.config` and :mod:`clamwatch.clamd.engine`, so
that `clamwatch scan` (timed against clamdscan) does not import the TOML
configuration, and the configuration does not import the engine.
"""

from __future__ import annotations

import os

from clamwatch.clamd.address import (
    DEFAULT_CLAMD_CONF,
    AddressError,
    ClamdAddress,
    ClamdConf,
    parse_address,
    read_clamd_conf,
)
from clamwatch.clamd.job import TransportChoice
from clamwatch.value import Value

TYPE_CHECKING = False  # typing's own, without importing typing (see value.py)

if TYPE_CHECKING:
    from typing import Final

# clamd's ReadTimeout is 120 s by default; a PING every 30 s is well inside it.
_DEFAULT_KEEPALIVE = 30.0

# clamd answers OK, without scanning it, for a file larger than its
# MaxFileSize or its MaxScanSize (0: no limit), and for any file of 2 GiB - 2
# bytes or more: measured with clamd 1.4.6 by FILDES of sparse memfds that
# start with the EICAR test file (found up to each limit, OK one byte past).
CLAMD_MAX_FILE_SIZE = 100 * 1024 * 1024  # clamd's default MaxFileSize
CLAMD_MAX_SCAN_SIZE = 400 * 1024 * 1024  # clamd's default MaxScanSize
CLAMD_LARGEST_SCANNED = 2**31 - 3  # whatever its settings say
# And for a scan it stops at MaxScanTime (120 s by default; 0: no limit):
# measured with MaxScanTime 5 (ms), 10 and 90 MB files starting with EICAR.
CLAMD_MAX_SCAN_TIME = 120.0
# With AlertExceedsMax yes, clamd itself answers each of those with a
# Heuristics.Limits.Exceeded.* FOUND (measured, the 2 GiB limit included):
# every file is sent, and clamd's verdict stands.
UNLIMITED = 2**63 - 1
# A request's own deadline, when not set: this much above MaxScanTime, so a
# scan clamd allows is not cut short here, and at least the minimum; with no
# MaxScanTime, an hour.
_REQUEST_SLACK = 60.0
_REQUEST_TIMEOUT_MIN = 180.0
_REQUEST_TIMEOUT_UNLIMITED = 3600.0
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def scanned_size_limit(conf: ClamdConf | None) -> tuple[int, str]:
    """The largest file clamd scans, and where that limit comes from.

    From MaxFileSize and MaxScanSize in ``conf``, or clamd's defaults for
    those it does not set (None: no clamd.conf describes the clamd).
    """
    limits = [(CLAMD_LARGEST_SCANNED, "the largest file clamd scans at all")]
    for key, value, default in (
        ("MaxFileSize", conf.max_file_size if conf else None, CLAMD_MAX_FILE_SIZE),
        ("MaxScanSize", conf.max_scan_size if conf else None, CLAMD_MAX_SCAN_SIZE),
    ):
        if value is None:
            limits.append((default, f"clamd's default {key}"))
        elif value > 0:  # 0: no limit
            assert conf is not None
            limits.append((value, f"{key} in {conf.path}"))
    return min(limits)


def _describes(conf: ClamdConf, address: ClamdAddress) -> bool:
    """Whether the clamd that ``conf`` configures listens at ``address``."""
    if address.path is not None:
        return conf.local_socket is not None and os.path.realpath(
            conf.local_socket
        ) == os.path.realpath(address.path)
    if conf.tcp_socket != address.port:
        return False
    if conf.tcp_addr is None:  # clamd's default: every interface, loopback among them
        return address.host in _LOOPBACK
    return address.host == conf.tcp_addr


def _conf_for(address: ClamdAddress) -> ClamdConf | None:
    """The system's clamd.conf when it configures the clamd at ``address``."""
    try:
        conf = read_clamd_conf(DEFAULT_CLAMD_CONF)
    except AddressError:
        return None  # none, unreadable or broken: not ours to judge
    return conf if _describes(conf, address) else None


class ClamdSettings(Value):
    __slots__ = (
        "address",
        "clamd_conf",
        "transport",
        "sessions",
        "max_in_flight",
        "request_timeout",
        "keepalive",
        "max_stream_size",
        "max_file_size",
        "eicar_check",
    )
    address: Final[str | None]
    clamd_conf: Final[str]
    transport: Final[TransportChoice]
    sessions: Final[int]
    max_in_flight: Final[int | None]
    request_timeout: Final[float | None]
    keepalive: Final[float | None]
    max_stream_size: Final[int | None]
    max_file_size: Final[int | None]
    eicar_check: Final[bool]

    def __init__(
        self,
        *,
        address: str | None = None,  # None: from clamd_conf
        clamd_conf: str | os.PathLike[str] = DEFAULT_CLAMD_CONF,
        transport: TransportChoice = TransportChoice.AUTO,
        sessions: int = 2,
        max_in_flight: int | None = None,  # None: from clamd's MaxThreads (EngineSettings)
        request_timeout: float | None = None,  # None: above clamd's MaxScanTime (resolve_engine)
        keepalive: float | None = None,  # None: a third of clamd's ReadTimeout, at most 30 s
        max_stream_size: int | None = None,  # None: clamd.conf's StreamMaxLength
        # None: from MaxFileSize and MaxScanSize in clamd.conf (scanned_size_limit)
        max_file_size: int | None = None,
        eicar_check: bool = True,  # see EngineSettings
    ) -> None:
        self.address = address
        self.clamd_conf = os.fspath(clamd_conf)
        self.transport = transport
        self.sessions = sessions
        self.max_in_flight = max_in_flight
        self.request_timeout = request_timeout
        self.keepalive = keepalive
        self.max_stream_size = max_stream_size
        self.max_file_size = max_file_size
        self.eicar_check = eicar_check


class EngineSettings(Value):
    __slots__ = (
        "transport",
        "sessions",
        "max_in_flight",
        "request_timeout",
        "keepalive",
        "connect_timeout",
        "give_up_after",
        "max_attempts",
        "max_stream_size",
        "max_file_size",
        "max_file_size_from",
        "max_scan_time",
        "clamd_max_queue",
        "max_requests_per_session",
        "backoff_initial",
        "backoff_max",
        "eicar_check",
    )
    transport: Final[TransportChoice]
    sessions: Final[int]
    max_in_flight: Final[int | None]
    request_timeout: Final[float]
    keepalive: Final[float]
    connect_timeout: Final[float]
    give_up_after: Final[float | None]
    max_attempts: Final[int]
    max_stream_size: Final[int | None]
    max_file_size: Final[int]
    max_file_size_from: Final[str]
    max_scan_time: Final[float | None]
    clamd_max_queue: Final[int | None]
    max_requests_per_session: Final[int]
    backoff_initial: Final[float]
    backoff_max: Final[float]
    eicar_check: Final[bool]

    def __init__(
        self,
        *,
        transport: TransportChoice = TransportChoice.AUTO,
        sessions: int = 2,
        # None: sixteen times clamd's MaxThreads as STATS reports it (16 to
        # 64), over INSTREAM 24 times (24 to 96), so every clamd thread has
        # its next request waiting when it finishes one.
        max_in_flight: int | None = None,
        request_timeout: float = 180.0,  # above clamd's own MaxScanTime (120 s by default)
        # A PING when a session sent nothing for this long: clamd's
        # ReadTimeout (120 s by default, 180 s in Debian's clamd.conf) kills
        # idle input.
        keepalive: float = 30.0,
        connect_timeout: float = 10.0,
        give_up_after: float | None = None,  # None: wait for clamd forever (the daemon)
        max_attempts: int = 5,
        max_stream_size: int | None = None,  # clamd's StreamMaxLength, when known
        # The largest file clamd scans (see scanned_size_limit), and where
        # that comes from, for the message: a larger one is "not scanned".
        max_file_size: int = CLAMD_MAX_FILE_SIZE,
        max_file_size_from: str = "clamd's default MaxFileSize",
        # clamd's MaxScanTime in seconds (None: no limit): a clean reply that
        # took as long is "not scanned" (Engine._scan_reply)
        max_scan_time: float | None = CLAMD_MAX_SCAN_TIME,
        # clamd's MaxQueue, when known (clamd.conf); None: its default, 100.
        # Requests in flight stay below it (see Engine._cap_total).
        clamd_max_queue: int | None = None,
        max_requests_per_session: int = 100_000,
        backoff_initial: float = 0.1,
        backoff_max: float = 10.0,
        # Each session starts by having clamd scan the EICAR test file, and
        # clean replies are delivered once a later check passes: clamd that
        # does not find it is not scanning (it answers OK unscanned when its
        # TemporaryDirectory is full) and is treated as unreachable. False
        # for a clamd whose databases lack the EICAR signature.
        eicar_check: bool = True,
    ) -> None:
        self.transport = transport
        self.sessions = sessions
        self.max_in_flight = max_in_flight
        self.request_timeout = request_timeout
        self.keepalive = keepalive
        self.connect_timeout = connect_timeout
        self.give_up_after = give_up_after
        self.max_attempts = max_attempts
        self.max_stream_size = max_stream_size
        self.max_file_size = max_file_size
        self.max_file_size_from = max_file_size_from
        self.max_scan_time = max_scan_time
        self.clamd_max_queue = clamd_max_queue
        self.max_requests_per_session = max_requests_per_session
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.eicar_check = eicar_check

    @property
    def limits(self) -> tuple[int | None, int, str, float | None, float]:
        """What clamd.conf says of clamd's limits, as :meth:`with_limits_of` takes them."""
        return (
            self.max_stream_size,
            self.max_file_size,
            self.max_file_size_from,
            self.max_scan_time,
            self.request_timeout,
        )

    def with_limits_of(self, other: EngineSettings) -> EngineSettings:
        """These settings with clamd's limits (and the request deadline they set) from
        ``other``: read again from clamd.conf once clamd restarted."""
        return EngineSettings(
            transport=self.transport,
            sessions=self.sessions,
            max_in_flight=self.max_in_flight,
            request_timeout=other.request_timeout,
            keepalive=self.keepalive,
            connect_timeout=self.connect_timeout,
            give_up_after=self.give_up_after,
            max_attempts=self.max_attempts,
            max_stream_size=other.max_stream_size,
            max_file_size=other.max_file_size,
            max_file_size_from=other.max_file_size_from,
            max_scan_time=other.max_scan_time,
            clamd_max_queue=self.clamd_max_queue,
            max_requests_per_session=self.max_requests_per_session,
            backoff_initial=self.backoff_initial,
            backoff_max=self.backoff_max,
            eicar_check=self.eicar_check,
        )

    @property
    def stream_limit(self) -> int:
        """The most a stream may carry: StreamMaxLength when known, and never more than
        clamd scans (a larger one it would answer OK unscanned)."""
        if self.max_stream_size is None:
            return self.max_file_size
        return min(self.max_stream_size, self.max_file_size)


def resolve_engine(
    clamd: ClamdSettings, *, give_up_after: float | None
) -> tuple[ClamdAddress, EngineSettings]:
    """The address to use and the engine settings, from the settings and clamd.conf.

    See :func:`resolve_clamd` for when clamd.conf is read; its
    StreamMaxLength, MaxFileSize, MaxScanSize, MaxScanTime, ReadTimeout and
    MaxQueue then set our limits. Raises AddressError.
    """
    address, conf = resolve_clamd(clamd)
    return address, engine_settings(clamd, conf, give_up_after=give_up_after)


def resolve_clamd(clamd: ClamdSettings) -> tuple[ClamdAddress, ClamdConf | None]:
    """The address to use, and the clamd.conf that configures that clamd, if any.

    clamd.conf is read when no address is given (LocalSocket first, else
    TCPSocket/TCPAddr), or when the admin named one other than the default,
    or when the default one configures the clamd at the address given.
    Raises AddressError.
    """
    conf_given = clamd.clamd_conf != DEFAULT_CLAMD_CONF
    conf = read_clamd_conf(clamd.clamd_conf) if clamd.address is None or conf_given else None
    address = (
        conf.address() if clamd.address is None and conf else parse_address(clamd.address or "")
    )
    return address, conf or _conf_for(address)


def engine_settings(
    clamd: ClamdSettings, conf: ClamdConf | None, *, give_up_after: float | None
) -> EngineSettings:
    """The engine settings, from the settings and the clamd.conf of that clamd."""
    alerts = conf is not None and conf.alert_exceeds_max
    if clamd.max_file_size is not None:
        max_file_size, max_file_size_from = clamd.max_file_size, "as given to clamwatch"
    elif conf is not None and alerts:
        max_file_size, max_file_size_from = UNLIMITED, f"AlertExceedsMax in {conf.path}"
    else:
        max_file_size, max_file_size_from = scanned_size_limit(conf)
    max_scan_time = CLAMD_MAX_SCAN_TIME
    if conf is not None and conf.max_scan_time is not None:
        max_scan_time = conf.max_scan_time
    request_timeout = clamd.request_timeout
    if request_timeout is None:
        request_timeout = (
            max(_REQUEST_TIMEOUT_MIN, max_scan_time + _REQUEST_SLACK)
            if max_scan_time
            else _REQUEST_TIMEOUT_UNLIMITED
        )
    max_stream = clamd.max_stream_size
    keepalive = clamd.keepalive or _DEFAULT_KEEPALIVE
    if conf is not None:
        max_stream = max_stream or conf.stream_max_length
        if conf.read_timeout and not clamd.keepalive:
            keepalive = max(0.5, min(keepalive, conf.read_timeout / 3))
    settings = EngineSettings(
        transport=clamd.transport,
        sessions=clamd.sessions,
        max_in_flight=clamd.max_in_flight,
        request_timeout=request_timeout,
        keepalive=keepalive,
        give_up_after=give_up_after,
        max_stream_size=max_stream,
        max_file_size=max_file_size,
        max_file_size_from=max_file_size_from,
        # 0: no limit; AlertExceedsMax: clamd says when it stopped a scan
        max_scan_time=None if alerts else max_scan_time or None,
        clamd_max_queue=conf.max_queue if conf is not None else None,
        eicar_check=clamd.eicar_check,
    )
    return settings
