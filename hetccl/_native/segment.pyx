# cython: language_level=3
"""The POSIX shared-memory segment that a shm or c2c link maps, and how big it must be."""
from libc.stdint cimport uintptr_t

from hetccl._native.c2c cimport C2C_CTL_BYTES
from hetccl._native.fifo cimport FIFO_CTL

import os as _os

from hetccl.errors import TransportError

cdef extern from "<sys/mman.h>" nogil:
    void* mmap(void* addr, size_t length, int prot, int flags, int fd, long offset)
    int munmap(void* addr, size_t length)
    int shm_open(const char* name, int oflag, int mode)
    int shm_unlink(const char* name)
    int PROT_READ
    int PROT_WRITE
    int MAP_SHARED
    int MAP_POPULATE
    void* MAP_FAILED

cdef extern from "<fcntl.h>" nogil:
    int posix_fallocate(int fd, long offset, long length)
    int O_CREAT
    int O_EXCL
    int O_RDWR

cdef extern from "<unistd.h>" nogil:
    int ftruncate(int fd, long length)
    int c_close "close"(int fd)

cdef extern from "<errno.h>" nogil:
    int errno


def segment_bytes(size_t fifo_bytes):
    """Bytes of one shm pair's segment: two control blocks and two FIFOs of fifo_bytes."""
    return FIFO_CTL + 2 * fifo_bytes


def c2c_segment_bytes(size_t fifo_bytes, size_t window_bytes):
    """Bytes of one c2c pair's segment: the shm pair's, the two control slots, two windows (0 bytes
    each outside window mode)."""
    return FIFO_CTL + 2 * fifo_bytes + C2C_CTL_BYTES + 2 * window_bytes


cdef class ShmSegment:
    """A POSIX shared-memory segment (mode 0600), mapped and pre-faulted (MAP_POPULATE).

    The creator unlinks it as soon as the peer has mapped it (see transports/shm.py), so nothing is
    left in /dev/shm even if both processes are killed afterwards."""
    cdef readonly bytes name
    cdef readonly size_t size
    cdef char* base
    cdef bint linked

    def __cinit__(self, name, size_t size, bint create):
        cdef int fd
        cdef int rc
        cdef void* p
        self.name = name.encode() if isinstance(name, str) else bytes(name)
        self.size = size
        self.base = NULL
        if create:
            fd = shm_open(self.name, O_CREAT | O_EXCL | O_RDWR, 0o600)
        else:
            fd = shm_open(self.name, O_RDWR, 0o600)
        if fd < 0:
            e = _os.strerror(errno)
            raise TransportError(f"cannot {'create' if create else 'open'} shared memory "
                                 f"{self.name.decode()}: {e}; is /dev/shm mounted and writable? "
                                 f"(set HETCCL_TRANSPORTS=tcp to avoid shared memory)")
        self.linked = True
        if not create:
            # the size came from the peer: a smaller file would SIGBUS on first touch
            try:
                have = _os.fstat(fd).st_size
            except OSError:
                have = -1
            if have < <long long>size:
                c_close(fd)
                raise TransportError(f"shared memory {self.name.decode()} has {have} bytes, but "
                                     f"the peer said {size}; refusing to map it (a stale segment, "
                                     f"or a peer of another job)")
        if create and ftruncate(fd, size) != 0:
            e = _os.strerror(errno)
            c_close(fd)
            shm_unlink(self.name)
            raise TransportError(f"cannot size shared memory {self.name.decode()} to {size} bytes: {e}")
        if create:
            # back every page now: on a full /dev/shm (tmpfs) this fails with ENOSPC, where
            # MAP_POPULATE would silently leave pages out and the first touch would be SIGBUS
            with nogil:
                rc = posix_fallocate(fd, 0, size)
            if rc != 0:
                c_close(fd)
                shm_unlink(self.name)
                from hetccl.memory.space import shm_space_error
                raise shm_space_error(f"shared memory {self.name.decode()}", size, rc,
                                      "set HETCCL_TRANSPORTS=tcp to avoid shared memory")
        with nogil:
            p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0)
        c_close(fd)
        if p == MAP_FAILED:
            if create:
                shm_unlink(self.name)
            raise TransportError(f"cannot map shared memory {self.name.decode()} ({size} bytes)")
        self.base = <char*>p

    def address(self):
        """Where the segment is mapped in this process (the links map their FIFOs from it)."""
        return <uintptr_t>self.base

    def unlink(self):
        if self.linked:
            shm_unlink(self.name)
            self.linked = False

    def close(self):
        if self.base != NULL:
            munmap(self.base, self.size)
            self.base = NULL
        self.unlink()

    def __dealloc__(self):
        if self.base != NULL:
            munmap(self.base, self.size)
