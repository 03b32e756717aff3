"""From the admin's clamd settings to an engine: the address and its limits."""

from __future__ import annotations

from clamwatch.clamd.address import (
    DEFAULT_CLAMD_CONF,
    ClamdAddress,
    parse_address,
    read_clamd_conf,
)
from clamwatch.clamd.engine import EngineSettings
from clamwatch.config import ClamdSettings

# clamd's ReadTimeout is 120 s by default; a PING every 30 s is well inside it.
_DEFAULT_KEEPALIVE = 30.0


def resolve_engine(
    clamd: ClamdSettings, *, give_up_after: float | None
) -> tuple[ClamdAddress, EngineSettings]:
    """The address to use and the engine settings, from the settings and clamd.conf.

    clamd.conf is read when no address is given (LocalSocket first, else
    TCPSocket/TCPAddr), or when the admin named one other than the default;
    its StreamMaxLength and ReadTimeout then set our limits.
    Raises AddressError.
    """
    conf_given = clamd.clamd_conf != DEFAULT_CLAMD_CONF
    conf = read_clamd_conf(clamd.clamd_conf) if clamd.address is None or conf_given else None
    address = (
        conf.address() if clamd.address is None and conf else parse_address(clamd.address or "")
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
        request_timeout=clamd.request_timeout,
        keepalive=keepalive,
        give_up_after=give_up_after,
        max_stream_size=max_stream,
    )
    return address, settings
