"""Data types hetccl moves and reduces, and how numpy / buffer-protocol objects map onto them.

The integer codes mirror the Cython core's (_native/codes.pxd, their one source; tests/test_codes.py
holds them equal): ``import hetccl`` loads no native code.

bfloat16 and float8 are numpy dtypes defined by ``ml_dtypes``, whose extension takes 0.5-1 s to
load; it is imported on the first bfloat16/float8 use, not with hetccl. An array of those types can
only exist once ml_dtypes is imported, so ``from_numpy`` looks them up then, and ``numpy_dtype``
imports ml_dtypes when asked for one.
"""
import functools
import sys

import numpy as np

from .errors import InvalidUsage
from .ops import ReduceOp

INT8, UINT8, INT16, UINT16, INT32, UINT32, INT64, UINT64 = range(8)
FLOAT16, BFLOAT16, FLOAT32, FLOAT64, FP8_E4M3, FP8_E5M2, BOOL = range(8, 15)

NAMES = ["int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
         "float16", "bfloat16", "float32", "float64", "float8_e4m3fn", "float8_e5m2", "bool"]
ITEMSIZE = [1, 1, 2, 2, 4, 4, 8, 8, 2, 2, 4, 8, 1, 1, 1]
INTEGER = frozenset(range(8)) | {BOOL}
FLOATING = frozenset({FLOAT16, BFLOAT16, FLOAT32, FLOAT64, FP8_E4M3, FP8_E5M2})

# numpy dtype -> code; the ml_dtypes entries are added by _ml_dtypes(). Shared by reference with
# comm.py and the latency path (_native/latency.pyx), so it is only ever updated in place.
_NUMPY = {np.dtype(n): i for i, n in enumerate(NAMES) if n in np.sctypeDict or hasattr(np, n)}
_ML_CODES = (BFLOAT16, FP8_E4M3, FP8_E5M2)

# struct-module format characters of the buffer protocol (native byte order)
_FORMAT = {"b": INT8, "B": UINT8, "h": INT16, "H": UINT16, "i": INT32, "I": UINT32,
           "l": INT64, "L": UINT64, "q": INT64, "Q": UINT64, "e": FLOAT16, "f": FLOAT32,
           "d": FLOAT64, "?": BOOL, "c": UINT8}


def _ml_dtypes():
    """The ml_dtypes module, its bfloat16/float8 types registered in ``_NUMPY`` (first use only)."""
    try:
        import ml_dtypes
    except ImportError as e:  # a declared dependency; a broken environment still gets told why
        raise InvalidUsage(f"bfloat16 and float8 need the ml_dtypes package ({e}); "
                           f"pip install 'ml_dtypes>=0.3'") from None
    if np.dtype(ml_dtypes.bfloat16) not in _NUMPY:
        for code in _ML_CODES:
            _NUMPY[np.dtype(getattr(ml_dtypes, NAMES[code]))] = code
    return ml_dtypes


@functools.lru_cache(maxsize=None)
def numpy_dtype(code: int) -> np.dtype:
    """The numpy dtype of a hetccl dtype code (bfloat16/fp8 through ml_dtypes)."""
    name = NAMES[code]
    if code in _ML_CODES:
        return np.dtype(getattr(_ml_dtypes(), name))
    return np.dtype(name)


def from_numpy(dt) -> int:
    """The dtype code of a numpy dtype; InvalidUsage if hetccl cannot move it."""
    try:
        return _NUMPY[dt]
    except KeyError:
        pass
    dt = np.dtype(dt)
    if dt in _NUMPY:
        return _NUMPY[dt]
    if "ml_dtypes" in sys.modules:   # its types exist only once it is imported (by the caller)
        _ml_dtypes()
        if dt in _NUMPY:
            return _NUMPY[dt]
    if dt.byteorder == ">" or (dt.byteorder == "=" and np.little_endian is False):
        raise InvalidUsage(f"dtype {dt} is big-endian; convert with .astype('{dt.newbyteorder('=')}')")
    raise InvalidUsage(f"dtype {dt} is not supported; use one of {', '.join(NAMES)}")


def from_format(fmt: str) -> int:
    """The dtype code of a buffer-protocol format string (``memoryview.format``)."""
    f = fmt.lstrip("@=<")
    if fmt.startswith(">") or fmt.startswith("!"):
        raise InvalidUsage(f"buffer format {fmt!r} is big-endian; hetccl needs native byte order")
    try:
        return _FORMAT[f]
    except KeyError:
        raise InvalidUsage(f"buffer format {fmt!r} is not a supported element type; pass a numpy "
                           f"array or a buffer of one of {', '.join(NAMES)}") from None


def check_op(code: int, op: ReduceOp) -> None:
    """Raise InvalidUsage when *op* is not defined for dtype *code*."""
    if op in (ReduceOp.BAND, ReduceOp.BOR, ReduceOp.BXOR) and code not in INTEGER:
        raise InvalidUsage(f"{op.name} is a bitwise op and {NAMES[code]} is not an integer type; "
                           f"use SUM/PROD/MIN/MAX/AVG or view the data as an integer dtype")
    if code == BOOL and op in (ReduceOp.SUM, ReduceOp.AVG, ReduceOp.PROD):
        raise InvalidUsage(f"{op.name} on bool is ambiguous; use BOR (any), BAND (all), MIN or MAX")
