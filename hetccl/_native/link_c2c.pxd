# Link kind "c2c": an shm link (link_shm.pxd: streams go through the pair's FIFOs exactly as for
# shm) whose segment also holds the two sides' c2c control slots and, in window mode, one
# pre-faulted window per direction, for the single-copy schedules (single_copy.pyx,
# symmetric_heap.pyx; state: c2c.pxd).
#
# Segment layout: the shm FIFO pair (fifo.pxd), then C2C_CTL_BYTES of control slots (the lower
# rank's first), then the windows (the lower rank's transmit window first).
from libc.stdint cimport uintptr_t
from hetccl._native.c2c cimport C2CPeer, C2CSlot, C2C_CMA, C2C_WINDOW, C2C_SLOT_BYTES, C2C_CTL_BYTES, C2C_MAGIC
from hetccl._native.fifo cimport FIFO_CTL
from hetccl._native.link cimport Link, LinkKind
from hetccl._native.link_shm cimport shm_kind, shm_map


cdef inline object c2c_attach(Link* L, tuple args, bint engine):
    """args: (segment, fifo_bytes, low, mode, pid, window_bytes): mode C2C_CMA (1) or C2C_WINDOW
    (2), the peer's pid (for cross-memory attach), the bytes of each window (window mode). A
    PairLink (not engine) moves raw bytes through the FIFOs only: no slots, no windows."""
    cdef C2CPeer* c = &L.c2c
    cdef char* ctl
    cdef char* w0
    cdef size_t win
    segment, fifo_bytes, low, mode, pid, window_bytes = args
    if mode != C2C_CMA and mode != C2C_WINDOW:
        raise ValueError("mode must be 1 (cma) or 2 (window)")
    if not engine:
        return shm_map(L, segment, fifo_bytes, low)
    win = window_bytes if mode == C2C_WINDOW else 0
    if segment.size < FIFO_CTL + 2 * fifo_bytes + C2C_CTL_BYTES + 2 * win:
        raise ValueError(f"a segment of {segment.size} bytes cannot hold a c2c pair of FIFOs of "
                         f"{fifo_bytes} and windows of {win} bytes")
    shm_map(L, segment, fifo_bytes, low)
    ctl = <char*><uintptr_t>segment.address() + FIFO_CTL + 2 * <size_t>fifo_bytes
    w0 = ctl + C2C_CTL_BYTES
    c.mode = mode
    c.pid = pid
    c.mine = <C2CSlot*>(ctl if low else ctl + C2C_SLOT_BYTES)
    c.theirs = <C2CSlot*>(ctl + C2C_SLOT_BYTES if low else ctl)
    c.win = win
    c.win_tx = (w0 if low else w0 + win) if win else NULL
    c.win_rx = (w0 + win if low else w0) if win else NULL
    c.mine.magic = C2C_MAGIC
    c.mine.epoch = 0          # syncs passed: links are attached before an engine's first call
    return segment


cdef inline void c2c_kind(LinkKind* k) noexcept:
    shm_kind(k)
    k.name = b"c2c"
    k.attach = c2c_attach
