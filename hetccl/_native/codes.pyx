# cython: language_level=3
"""The integer codes of codes.pxd, for Python: every ``DT_*``, ``OP_*``, ``COLL_*`` and ``ALGO_*`` is
an attribute of this module (a plain int), and the names native error messages give them.

This is their one source: hetccl/collectives/algorithm.py reads the algorithm codes from here, and
tests/test_codes.py holds hetccl/dtypes.py and hetccl/ops.py (import-light copies) to them.
"""

# by DT_* code (hetccl.dtypes.NAMES is the same list)
DTYPE_NAMES = ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float16",
               "bfloat16", "float32", "float64", "float8_e4m3fn", "float8_e5m2", "bool")
DTYPE_SIZES = tuple(dtype_size(d) for d in range(DT_COUNT))

# by OP_* code (the names of hetccl.ReduceOp)
OP_NAMES = ("SUM", "PROD", "MIN", "MAX", "AVG", "BAND", "BOR", "BXOR")

COLLECTIVE_NAMES = {COLL_ALLREDUCE: "allreduce", COLL_ALLGATHER: "allgather",
                    COLL_REDUCE_SCATTER: "reduce_scatter", COLL_BROADCAST: "broadcast",
                    COLL_REDUCE: "reduce", COLL_GATHER: "gather", COLL_SCATTER: "scatter",
                    COLL_ALLTOALL: "alltoall", COLL_BARRIER: "barrier", COLL_SENDRECV: "send/recv"}

assert len(DTYPE_NAMES) == DT_COUNT and len(OP_NAMES) == OP_COUNT


def dtype_name(int dtype):
    return DTYPE_NAMES[dtype] if 0 <= dtype < DT_COUNT else f"dtype#{dtype}"


def op_name(int op):
    return OP_NAMES[op] if 0 <= op < OP_COUNT else f"op#{op}"
