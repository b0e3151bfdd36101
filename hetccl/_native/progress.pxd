# Driving streams over an engine's links until they are done (progress.pyx): the one place that
# progresses, waits (spin, yield, then sleep), and looks for dead peers.
from libc.stdint cimport uint64_t
from hetccl._native.engine cimport Engine
from hetccl._native.link cimport Stream, Seg

cdef enum:
    MAX_WAIT = 8          # streams one wait may sleep on (block; hc_life_sleep_many's limit)

cdef void open_stream(Engine e, Stream* s, int peer, Seg* segs, int nseg, int coll, int dtype, int op,
                      int phase, uint64_t count, size_t esize, bint is_send) noexcept nogil
cdef int run_step(Engine e, Stream* snd, Stream* rcv, bint trailing, double deadline) noexcept nogil
cdef int xfer(Engine e, int to, Seg* ssegs, int ns, int frm, Seg* rsegs, int nr, int coll, int dtype,
              int op, int phase, uint64_t count, bint fused, double deadline) noexcept nogil
cdef int run_pairs(Engine e, Stream* snd, Stream* rcv, int n, double deadline) noexcept nogil
cdef bint can_fuse(Engine e, int to, int frm) noexcept nogil
cdef size_t slice_bytes(Engine e, int prev, int nxt, size_t es) noexcept nogil
