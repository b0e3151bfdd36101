# Integer codes shared between the Python layer (hetccl/dtypes.py, hetccl/ops.py) and the Cython core.
# Keep both sides in sync: tests/test_codes.py checks them.

cdef enum DType:
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

cdef enum Op:
    OP_SUM = 0
    OP_PROD = 1
    OP_MIN = 2
    OP_MAX = 3
    OP_AVG = 4
    OP_BAND = 5
    OP_BOR = 6
    OP_BXOR = 7
    OP_COUNT = 8

cdef enum Coll:
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

cdef enum Algo:
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


cdef inline size_t dtype_size(int dtype) noexcept nogil:
    if dtype < 0:
        return 1
    if dtype <= DT_UINT8 or dtype >= DT_FP8_E4M3:
        return 1
    if dtype <= DT_UINT16 or dtype == DT_FLOAT16 or dtype == DT_BFLOAT16:
        return 2
    if dtype <= DT_UINT32 or dtype == DT_FLOAT32:
        return 4
    return 8
