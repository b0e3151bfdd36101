"""The few HETCCL_* settings that are read in more than one place (all are in docs/environment.md)."""
import logging
import os

from .errors import InvalidUsage

DEFAULT_TIMEOUT = 600.0
DEFAULT_PEER_TIMEOUT = 30.0
DEFAULT_WATCHDOG = 300.0


def _seconds_env(name: str, default: float):
    """The number of seconds in environment variable ``name`` (default when unset or empty)."""
    env = os.environ.get(name)
    if not env:
        return default
    try:
        return float(env)
    except ValueError:
        raise InvalidUsage(f"{name}={env!r} is not a number of seconds") from None


def timeout(value=None) -> float:
    """Seconds every wait may take: explicit value, else HETCCL_TIMEOUT, else 10 minutes."""
    if value is None:
        value = _seconds_env("HETCCL_TIMEOUT", DEFAULT_TIMEOUT)
    if hasattr(value, "total_seconds"):
        value = value.total_seconds()
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InvalidUsage(f"timeout must be a number of seconds (or a timedelta), got {value!r}") from None
    if value <= 0:
        raise InvalidUsage(f"timeout must be positive seconds, got {value}")
    return value


def peer_timeout() -> float:
    """Seconds a peer may stay unreachable before it is declared failed (HETCCL_PEER_TIMEOUT, else
    30): the kernel's keepalive on every link (a vanished host, a downed link) and the silence
    allowed to a rank during an agreement (recovery/). Unlike HETCCL_TIMEOUT it does not bound
    waiting for a live but busy rank: a stalled process on a live host still answers keepalives."""
    value = _seconds_env("HETCCL_PEER_TIMEOUT", DEFAULT_PEER_TIMEOUT)
    if value < 1:
        raise InvalidUsage(f"HETCCL_PEER_TIMEOUT={value:g}: at least 1 s (the kernel counts whole seconds)")
    return value


def watchdog() -> float:
    """Seconds a collective may wait before its rank logs a hang report (HETCCL_WATCHDOG_S, else
    300, half the default operation timeout; 0: off). docs/reliability.md says why it is on."""
    value = _seconds_env("HETCCL_WATCHDOG_S", DEFAULT_WATCHDOG)
    if value < 0:
        raise InvalidUsage(f"HETCCL_WATCHDOG_S={value:g}: seconds >= 0 (0 turns the watchdog off)")
    return value


def setup_logging(rank: int) -> None:
    """HETCCL_DEBUG=info|debug|tuning (comma-separated) turns on hetccl's log on stderr."""
    spec = os.environ.get("HETCCL_DEBUG", "").lower()
    if not spec:
        return
    logger = logging.getLogger("hetccl")
    if any(getattr(h, "_hetccl", False) for h in logger.handlers):
        return
    h = logging.StreamHandler()
    h._hetccl = True
    h.setFormatter(logging.Formatter(f"hetccl[{rank}] %(name)s %(levelname)s: %(message)s"))
    logger.addHandler(h)
    logger.setLevel(logging.DEBUG if "debug" in spec else logging.INFO)
