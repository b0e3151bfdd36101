# The integer codes shared by the native core and the Python layer: their one source.
#
# The compiled module (codes.pyx) exports every one as a plain int (``cpdef enum``), with their names;
# hetccl/collectives/algorithm.py reads the ALGO_* codes from it. hetccl/dtypes.py and hetccl/ops.py
# keep import-light copies of the dtype and op codes (``import hetccl`` loads no native code), which
# tests/test_codes.py holds to these.

cpdef enum:             # dtypes (hetccl/dtypes.py)
    DT_INT8 = 0
    DT_UINT8 = 1
    DT_INT16 = 2
    DT_UINT16 = 3
    DT_INT32 = 4
    DT_UINT32 = 5
    DT_INT64 = 6
    DT_UINT64 = 7
    DT_FLOAT16 = 8
    DT_BFLOAT16 = 9
    DT_FLOAT32 = 10
    DT_FLOAT64 = 11
    DT_FP8_E4M3 = 12
    DT_FP8_E5M2 = 13
    DT_BOOL = 14
    DT_COUNT = 15

cpdef enum:             # reduction ops (hetccl/ops.py)
    OP_SUM = 0
    OP_PROD = 1
    OP_MIN = 2
    OP_MAX = 3
    OP_AVG = 4
    OP_BAND = 5
    OP_BOR = 6
    OP_BXOR = 7
    OP_COUNT = 8

cpdef enum:             # collectives: the first byte of every wire header after the magic (wire.pxd)
    COLL_ALLREDUCE = 1
    COLL_ALLGATHER = 2
    COLL_REDUCE_SCATTER = 3
    COLL_BROADCAST = 4
    COLL_REDUCE = 5
    COLL_GATHER = 6
    COLL_SCATTER = 7
    COLL_ALLTOALL = 8
    COLL_BARRIER = 9
    COLL_SENDRECV = 10

cpdef enum:             # algorithms: the schedule a collective runs (dispatch.pyx; Python: collectives/*.py)
    ALGO_RING = 0
    ALGO_RD = 1
    ALGO_BINOMIAL = 2
    ALGO_CHAIN = 3
    ALGO_SCATTER_ALLGATHER = 4
    ALGO_PAIRWISE = 5
    ALGO_LINEAR = 6
    ALGO_RS_GATHER = 7
    ALGO_RABENSEIFNER = 8
    ALGO_DBTREE = 9
    ALGO_BRUCK = 10
    ALGO_RECURSIVE_HALVING = 11
    ALGO_DISSEMINATION = 12


cdef inline size_t dtype_size(int dtype) noexcept nogil:
    """Bytes of one element of dtype (1 for a negative dtype: the barrier's untyped messages)."""
    if dtype < 0:
        return 1
    if dtype <= DT_UINT8 or dtype >= DT_FP8_E4M3:
        return 1
    if dtype <= DT_UINT16 or dtype == DT_FLOAT16 or dtype == DT_BFLOAT16:
        return 2
    if dtype <= DT_UINT32 or dtype == DT_FLOAT32:
        return 4
    return 8
