"""The few HETCCL_* settings that are read in more than one place (all are listed in the README)."""
import logging
import os

from .errors import InvalidUsage

DEFAULT_TIMEOUT = 600.0


def timeout(value=None) -> float:
    """Seconds every wait may take: explicit value, else HETCCL_TIMEOUT, else 10 minutes."""
    if value is None:
        env = os.environ.get("HETCCL_TIMEOUT")
        if not env:
            return DEFAULT_TIMEOUT
        try:
            value = float(env)
        except ValueError:
            raise InvalidUsage(f"HETCCL_TIMEOUT={env!r} is not a number of seconds") from None
    if hasattr(value, "total_seconds"):
        value = value.total_seconds()
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InvalidUsage(f"timeout must be a number of seconds (or a timedelta), got {value!r}") from None
    if value <= 0:
        raise InvalidUsage(f"timeout must be positive seconds, got {value}")
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
