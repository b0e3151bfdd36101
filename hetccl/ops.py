"""Reduction operations. The integer values mirror the Cython core's (_native/codes.pxd, their one
source; tests/test_codes.py holds them equal): ``import hetccl`` loads no native code."""
import enum

from .errors import InvalidUsage


class ReduceOp(enum.IntEnum):
    SUM = 0
    PROD = 1
    MIN = 2
    MAX = 3
    AVG = 4
    BAND = 5
    BOR = 6
    BXOR = 7


SUM, PROD, MIN, MAX, AVG, BAND, BOR, BXOR = (ReduceOp(i) for i in range(8))

_BY_NAME = {op.name.lower(): op for op in ReduceOp}


def as_op(op) -> ReduceOp:
    """Accept a ReduceOp, its integer value or its name ("sum", "max", ...)."""
    if isinstance(op, ReduceOp):
        return op
    if isinstance(op, str):
        try:
            return _BY_NAME[op.lower()]
        except KeyError:
            raise InvalidUsage(f"unknown reduction op {op!r}; use one of "
                               f"{', '.join(o.name for o in ReduceOp)}") from None
    try:
        return ReduceOp(int(op))
    except (TypeError, ValueError):
        raise InvalidUsage(f"unknown reduction op {op!r}; use hetccl.ReduceOp") from None
