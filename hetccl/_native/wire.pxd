# The 32-byte header every stream (FIFO, socket, UCX) and every single-copy call (published in the
# c2c control slots) starts with: its one definition.
#
#   bytes  0..3   MAGIC ("HCL1")            8..11  sequence number of the call on its engine
#          4      collective (COLL_*)      12..15  zero
#          5      dtype (DT_*; 255: none)  16..23  count (elements; what it counts is the schedule's)
#          6      op (OP_*; the symmetric broadcast: its root)
#          7      phase: the schedule's step, so ranks running different algorithms disagree here
#         24..27  sender's rank (not compared)   28..31  zero
#
# A receiver compares the first HDR_CHECKED bytes with the header it expects before it touches the
# payload: ranks calling different collectives, counts, dtypes, ops or algorithms get a clear error
# (failure.pyx describes both headers) instead of corrupted data.
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memset

cdef enum:
    HDR_BYTES = 32
    HDR_CHECKED = 24             # magic .. count must agree; the sender's rank need not
    MAGIC = 0x314C4348           # "HCL1"
    PHASE_DIRECT = 100           # phase byte of the single-copy (cma / window) schedules ...
    PHASE_SYMMETRIC = 101        # ... and of the schedules over symmetric allocations


cdef inline void put_header(uint8_t* h, int coll, int dtype, int op, int phase, uint32_t seq,
                            uint64_t count, int rank) noexcept nogil:
    memset(h, 0, HDR_BYTES)
    (<uint32_t*>h)[0] = MAGIC
    h[4] = <uint8_t>coll
    h[5] = <uint8_t>dtype
    h[6] = <uint8_t>op
    h[7] = <uint8_t>phase
    (<uint32_t*>(h + 8))[0] = seq
    (<uint64_t*>(h + 16))[0] = count
    (<uint32_t*>(h + 24))[0] = <uint32_t>rank
