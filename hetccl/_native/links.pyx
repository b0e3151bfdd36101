# cython: language_level=3
"""The link kinds the engine knows: one registration line per kind.

A link kind is a table of functions (link.pxd: LinkKind) in its own module, link_<name>.pxd; its
code is its place in this registry. Python reads ``KINDS`` (name -> code): a transport declares the
name of the kind its pairs use and connects a pair with ``Engine.attach(peer, name, fd, *args)``.
"""
from libc.stdint cimport uint32_t
from hetccl._native.link cimport Link, LinkKind, Stream, E_PEER_LOST, ssize_t
from hetccl._native.posix_wait cimport pollfd
from hetccl._native.link_c2c cimport c2c_kind
from hetccl._native.link_rdma cimport rdma_kind
from hetccl._native.link_shm cimport shm_kind
from hetccl._native.link_tcp cimport tcp_kind

cdef enum:
    MAX_KINDS = 16

ctypedef void (*declare_fn)(LinkKind* k) noexcept

cdef LinkKind _table[MAX_KINDS]
cdef int _count = 1                       # code 0: no link (below)

KINDS = {}                                # name -> code, for Python


cdef int register(declare_fn declare) except -1:
    global _count
    cdef LinkKind* k = &_table[_count]
    declare(k)
    k.code = _count
    if k.name.decode() in KINDS or k.send == NULL or k.recv == NULL or k.arm == NULL or k.attach == NULL:
        raise RuntimeError(f"link kind {k.name.decode()!r} is declared twice or incompletely")
    KINDS[k.name.decode()] = _count
    _count += 1
    return 0


# code 0, "none": the kind of a link not attached (this rank's own, or one close() released).
# Schedules never address one in a correct program; if one does, it finds the peer lost.

cdef long none_progress(Stream* s) noexcept nogil:
    return E_PEER_LOST

cdef bint none_arm(Link* L, bint rx, size_t need, uint32_t how, pollfd* f, uint32_t** word) noexcept nogil:
    f.fd = -1                             # poll() skips it
    f.events = 0
    return True

cdef void none_disarm(Link* L, bint rx) noexcept nogil:
    pass

cdef ssize_t none_write(Link* L, const char* src, size_t n) noexcept nogil:
    return E_PEER_LOST

cdef ssize_t none_read(Link* L, char* dst, size_t n) noexcept nogil:
    return E_PEER_LOST

cdef bint none_ready(Link* L, bint rx, bint tx) noexcept nogil:
    return True

cdef object none_attach(Link* L, tuple args, bint engine):
    raise ValueError("no link kind is named 'none'")

cdef void none_close(Link* L) noexcept nogil:
    pass

_table[0] = LinkKind(code=0, name=b"none", align=1, fuses=False, futex=False, line_bytes=0,
                     send=none_progress,
                     recv=none_progress, arm=none_arm, disarm=none_disarm, woken=NULL, write=none_write,
                     read=none_read, ready=none_ready, attach=none_attach, close=none_close)


register(shm_kind)
register(tcp_kind)
register(rdma_kind)
register(c2c_kind)


cdef const LinkKind* unlinked() noexcept nogil:
    return &_table[0]


cdef const LinkKind* kind_named(str name) except NULL:
    code = KINDS.get(name)
    if code is None:
        raise ValueError(f"unknown link kind {name!r}; the engine knows {', '.join(KINDS)}")
    return &_table[<int>code]
