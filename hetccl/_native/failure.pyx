# cython: language_level=3
"""What went wrong in an engine, and the exception that tells the user what to do about it.

Native code reports errors as negative codes (link.pxd: E_*) and leaves the details in the engine's
Failure (failure.pxd): the peer, the two headers of a mismatch, a signal handler's exception. Once
back under the GIL, ``raise_error`` turns them into HetcclTimeout, PeerLostError, InvalidUsage
(mismatched collectives, both calls described) or, when the engine was interrupted meanwhile
(abort, close, revoke, a peer declared lost: life.pxd), the exception of that interrupt, which is
what the time-out or the lost peer really followed from.
"""
from cpython.exc cimport PyErr_CheckSignals
from cpython.ref cimport PyObject, Py_INCREF, Py_XDECREF
from libc.stdint cimport uint8_t, uint32_t
from libc.string cimport memcpy

from hetccl._native.life cimport *
from hetccl._native.link cimport E_MISMATCH, E_PEER_LOST, E_TIMEOUT, E_INTERRUPTED, E_BAD_ADDRESS
from hetccl._native.wire cimport HDR_BYTES, MAGIC

import os as _os
import struct as _struct

from hetccl._native.codes import COLLECTIVE_NAMES, dtype_name, op_name
from hetccl.errors import (HetcclTimeout, PeerLostError, PeerProtocolError, InvalidUsage, CommAborted,
                           CommRevoked, TransportError)


def describe_header(bytes h):
    """Human-readable form of a 32-byte wire header (wire.pxd), for mismatch errors."""
    magic, coll, dt, op, phase, seq, aux, count, sender = _struct.unpack("<IBBBBIIQI4x", h)
    if magic != MAGIC:
        return "garbage (not a hetccl header)"
    # the symmetric broadcast carries its root in the op byte (symmetric_heap.pyx): name it, so ranks
    # naming different roots read as that, not as "different algorithms"
    return (f"{COLLECTIVE_NAMES.get(coll, f'collective#{coll}')} #{seq} of {count} {dtype_name(dt)}"
            + (f" with {op_name(op)}" if coll in (1, 3, 5) else "")
            + (f" from root {op}" if coll == 4 and op else ""))


cdef void note_mismatch(Failure* f, int peer, const uint8_t* got, const uint8_t* want) noexcept nogil:
    f.peer = peer
    memcpy(f.got, got, HDR_BYTES)
    memcpy(f.want, want, HDR_BYTES)


cdef int check_signals(Failure* f) noexcept nogil:
    """Run Python's signal handlers (a quiet sleep is the time for Ctrl-C); E_INTERRUPTED, keeping
    the handler's exception for raise_error, if one raised."""
    with gil:
        try:
            _check_signals()
        except BaseException as e:
            Py_XDECREF(f.pending)
            Py_INCREF(e)
            f.pending = <PyObject*>e
            return E_INTERRUPTED
    return 0


cdef int _check_signals() except -1:
    return PyErr_CheckSignals()


cdef int failure_init(Failure* f) except -1:
    f.broken = False
    f.peer = -1
    f.pending = NULL
    if hc_life_init(&f.life) < 0:
        e = _os.strerror(_errno())
        raise OSError(f"cannot create the engine's eventfd: {e}")
    return 0


cdef extern from "<errno.h>" nogil:
    int errno

cdef int _errno() noexcept:
    return errno


cdef void failure_free(Failure* f) noexcept:
    Py_XDECREF(f.pending)
    f.pending = NULL


cdef int enter(Failure* f, int rank, str what) except -1:
    """Count an entry into the engine's resources (life.pxd), or raise why there is none."""
    cdef uint32_t w = hc_life_enter(&f.life)
    if w:
        f.broken = True
        raise interrupt_error(f, rank, what)
    if f.broken:
        hc_life_leave(&f.life)
        check_usable(f, rank)
    return 0


cdef object interrupt_error(Failure* f, int rank, str what):
    """The exception `what` (an operation's name) raises after the interrupt (CommAborted if
    there was none: the communicator is closing)."""
    cdef uint32_t w = hc_life_intr(&f.life)
    cdef int reason = life_reason(w), peer = life_peer(w)
    if reason == LIFE_REVOKED:
        return CommRevoked(f"{what} on rank {rank}: this communicator was revoked (its ranks "
                           f"gave up on it after a failure), so its pending and later operations "
                           f"fail; go on with a communicator of the survivors, or a new one")
    if reason == LIFE_PEER_LOST:
        err = PeerLostError(f"{what} on rank {rank}: rank {peer} was declared lost (it "
                            f"stopped answering); this communicator cannot be used any more")
        err.peer = peer
        return err
    return CommAborted(f"{what} on rank {rank}: this communicator was aborted or closed "
                       f"(comm.abort(), close(), or an earlier error); create a new one with "
                       f"hetccl.init()")


cdef int check_usable(Failure* f, int rank) except -1:
    if hc_life_intr(&f.life):
        f.broken = True
        raise interrupt_error(f, rank, "this call")
    if f.broken:
        raise CommAborted("this communicator was aborted after an earlier error (or closed); "
                          "create a new one with hetccl.init()")
    return 0


cdef int raise_error(Failure* f, int rank, int rc, str what, double timeout) except -1:
    """Raise the exception of error code rc of operation `what` (which ran with `timeout`)."""
    cdef uint32_t w = hc_life_intr(&f.life)
    cdef object exc
    peer = f.peer
    f.broken = True
    if w and rc != E_MISMATCH and rc != E_INTERRUPTED and rc != E_BAD_ADDRESS:
        raise interrupt_error(f, rank, what)   # what a peer's loss or a time-out really followed from
    if rc == E_MISMATCH:
        got = describe_header(bytes(f.got[:HDR_BYTES]))
        want = describe_header(bytes(f.want[:HDR_BYTES]))
        if got == want:            # same call, different schedule: the algorithms differ
            got += f" (algorithm step {f.got[7]})"
            want += f" (algorithm step {f.want[7]}); the ranks chose different algorithms: " \
                    f"pass the same algorithm= / HETCCL_ALGO on every rank"
        raise InvalidUsage(f"mismatched collective: rank {peer} called {got}, but rank {rank} "
                           f"called {want}; every rank must call the same collectives in the same "
                           f"order with the same count, dtype and op")
    if rc == E_PEER_LOST:
        err = PeerLostError(f"rank {peer} closed its connection to rank {rank} during {what} "
                            f"(it died, was killed, or aborted after an error of its own: check its "
                            f"output); this communicator cannot be used any more")
        err.peer = peer if peer >= 0 else None
        raise err
    if rc == E_BAD_ADDRESS:
        err = PeerProtocolError(f"{what} on rank {rank}: rank {peer} published a buffer address that is "
                                f"not mapped in its process, though it is alive: a bug or memory "
                                f"corruption on rank {peer} (check its buffers: freed or replaced "
                                f"during the call?); this communicator cannot be used any more")
        err.peer = peer if peer >= 0 else None
        raise err
    if rc == E_TIMEOUT:
        raise HetcclTimeout(f"{what} on rank {rank} timed out after {timeout:g} s waiting for "
                            f"rank {peer}; a rank may be stuck or may not have called {what} "
                            f"(raise timeout= or HETCCL_TIMEOUT if the job is just slow)")
    if rc == E_INTERRUPTED and f.pending != NULL:
        exc = <object>f.pending
        Py_XDECREF(f.pending)
        f.pending = NULL
        raise exc
    raise TransportError(f"{what} failed on rank {rank} (code {rc})")
