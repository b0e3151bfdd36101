# cython: language_level=3
"""The native ring of a communicator's flight record (see flight.pxd for why it is native).

One entry per collective call: sequence number, collective, bytes, count, dtype, op, root,
algorithm, state (queued, running, done, failed with the error's class) and three timestamps.
The latency path (latency.Hot) calls the cdef methods; comm.py's routes call the def ones
(``note`` the call's shape, then ``begin`` / ``started`` / ``finished`` / ``failed``). Readers take
``snapshot()`` copies; hetccl/flight/ turns them into records, reports and dumps.
"""
from libc.stdint cimport uint64_t, uint16_t, uint8_t
from libc.stdlib cimport calloc, free
from libc.string cimport memset

from hetccl._native.codes cimport dtype_size, DT_COUNT, OP_COUNT, COLL_SENDRECV

from hetccl._native.codes import COLLECTIVE_NAMES

FLIGHT_ALLGATHERV = COLL_SENDRECV + 1
# index = the Coll code of codes.pxd (FLIGHT_ALLGATHERV past them)
COLLECTIVES = ("?",) + tuple(COLLECTIVE_NAMES[c] for c in range(1, FLIGHT_ALLGATHERV)) + ("allgatherv",)
COLL_CODES = {name: i for i, name in enumerate(COLLECTIVES) if i}
STATES = ("?", "queued", "running", "done", "failed")
DEFAULT_CAPACITY = 256


cdef class Flight:
    """The last ``capacity`` (rounded up to a power of two, at least 2) collective calls of one
    communicator at this rank."""

    def __cinit__(self, int capacity=DEFAULT_CAPACITY):
        cdef uint64_t cap = 2
        while cap < <uint64_t>max(capacity, 2):
            cap <<= 1
        self.ring = <FlightEntry*>calloc(cap, sizeof(FlightEntry))
        if self.ring == NULL:
            raise MemoryError()
        self.mask = cap - 1
        self.seq = 0
        self.names = [""]
        self.ids = {"": 0}
        self.name_last = None
        self.id_last = 0
        self.has_note = False

    def __dealloc__(self):
        free(self.ring)
        self.ring = NULL

    @property
    def capacity(self):
        return self.mask + 1

    cdef uint16_t name_id(self, object name):
        if name is None:
            return 0
        i = self.ids.get(name)
        if i is None:
            if len(self.names) >= FL_MAX_NAMES:
                return 0
            i = len(self.names)
            self.names.append(str(name)[:64])
            self.ids[name] = i
        return i

    cdef uint64_t push(self, int coll, uint64_t nbytes, int dtype, int op, int root, object algo,
                       int state) except 0:
        """A new entry (the next sequence number, returned) in ``state`` (queued or running)."""
        cdef uint16_t a
        cdef uint64_t s
        cdef FlightEntry* e
        cdef double now = fl_now()
        if algo is self.name_last:
            a = self.id_last
        else:
            a = self.name_id(algo)
            self.name_last = algo
            self.id_last = a
        s = self.seq + 1
        self.seq = s
        e = &self.ring[s & self.mask]
        e.seq = s
        e.nbytes = nbytes
        e.count = nbytes // dtype_size(dtype) if 0 <= dtype < DT_COUNT else 0
        e.t_issue = now
        e.t_start = now if state == FL_RUNNING else 0.0
        e.t_end = 0.0
        e.root = root
        e.algo = a
        e.err = 0
        e.coll = <uint8_t>coll
        e.dtype = <uint8_t>dtype if 0 <= dtype < DT_COUNT else FL_NO_DTYPE
        e.op = <uint8_t>op if 0 <= op < OP_COUNT else FL_NO_DTYPE
        e.state = <uint8_t>state
        return s

    cdef void mark(self, uint64_t s, int state, uint16_t err) noexcept:
        """Entry ``s`` is running (FL_RUNNING), done or failed; nothing if the ring moved past it."""
        cdef FlightEntry* e = &self.ring[s & self.mask]
        if e.seq != s or s == 0:
            return
        if state == FL_RUNNING:
            e.t_start = fl_now()
        else:
            e.t_end = fl_now()
            e.err = err
        e.state = <uint8_t>state

    cdef void fail(self, uint64_t s, object exc):
        self.mark(s, FL_FAILED, self.name_id(type(exc).__name__))

    # ------------------------------------------------------------------ the Python routes (comm.py)

    def note(self, str what, Py_ssize_t nbytes, int dtype=-1, int op=-1, int root=-1):
        """The shape of the collective ``what`` about to be made (``begin`` takes it): bytes,
        dtype and op codes, root (-1: none)."""
        memset(&self.noted, 0, sizeof(FlightEntry))
        self.noted.coll = <uint8_t>COLL_CODES.get(what, 0)
        self.noted.nbytes = <uint64_t>nbytes if nbytes > 0 else 0
        self.noted.dtype = <uint8_t>dtype if 0 <= dtype < DT_COUNT else FL_NO_DTYPE
        self.noted.op = <uint8_t>op if 0 <= op < OP_COUNT else FL_NO_DTYPE
        self.noted.root = root
        self.has_note = True

    def begin(self, str what, algo=None, bint queued=False):
        """Open the entry of collective ``what`` (its shape from the last ``note`` of the same
        collective, else unknown), running or ``queued``; its sequence number."""
        cdef int coll = COLL_CODES.get(what, 0)
        cdef bint shaped = self.has_note and self.noted.coll == coll
        self.has_note = False
        return self.push(coll, self.noted.nbytes if shaped else 0,
                         self.noted.dtype if shaped else -1, self.noted.op if shaped else -1,
                         self.noted.root if shaped else -1, algo, FL_QUEUED if queued else FL_RUNNING)

    def started(self, uint64_t s):
        self.mark(s, FL_RUNNING, 0)

    def finished(self, uint64_t s):
        self.mark(s, FL_DONE, 0)

    def failed(self, uint64_t s, exc):
        self.fail(s, exc)

    # ------------------------------------------------------------------ readers

    def snapshot(self, Py_ssize_t last=0):
        """The ring's entries, oldest first (the ``last`` newest only, if > 0), as tuples
        (seq, collective, state, nbytes, count, dtype code or None, op code or None, root or None,
        algorithm, error class, t_issue, t_start or None, t_end or None); times are
        time.monotonic() seconds (to the kernel tick)."""
        cdef uint64_t cap = self.mask + 1, n, first, s
        cdef FlightEntry* e
        n = self.seq if self.seq < cap else cap
        if 0 < last < <Py_ssize_t>n:
            n = last
        first = self.seq - n + 1
        out = []
        for s in range(first, self.seq + 1):
            e = &self.ring[s & self.mask]
            if e.seq != s:
                continue
            out.append((s, COLLECTIVES[e.coll] if e.coll < len(COLLECTIVES) else "?",
                        STATES[e.state] if e.state < len(STATES) else "?",
                        e.nbytes, e.count,
                        None if e.dtype == FL_NO_DTYPE else e.dtype,
                        None if e.op == FL_NO_DTYPE else e.op,
                        None if e.root < 0 else e.root,
                        self.names[e.algo], self.names[e.err],
                        e.t_issue, e.t_start or None, e.t_end or None))
        return out

    def oldest_open(self):
        """(seq, t_issue, t_start or None) of the oldest entry still queued or running, or None:
        the operation a stuck communicator waits in."""
        cdef uint64_t cap = self.mask + 1, s
        cdef uint64_t first = self.seq - (self.seq if self.seq < cap else cap) + 1
        cdef FlightEntry* e
        for s in range(first, self.seq + 1):
            e = &self.ring[s & self.mask]
            if e.seq == s and (e.state == FL_QUEUED or e.state == FL_RUNNING):
                return (s, e.t_issue, e.t_start or None)
        return None


# ------------------------------------------------------------------ the dump signal

cdef extern from *:
    """
    #include <errno.h>
    #include <signal.h>
    #include <string.h>
    #include <unistd.h>
    /* Async-signal-safe: one byte into the pipe the control plane's thread watches (the dump
       itself runs on a thread of its own, never in the handler). The pid check keeps a forked
       child that has not installed its own pipe from waking its parent's. */
    static volatile int hc_dump_fd = -1;
    static volatile pid_t hc_dump_pid = 0;
    static void hc_on_dump_signal(int signum) {
        int saved = errno;
        char b = 1;
        (void)signum;
        if (hc_dump_fd >= 0 && getpid() == hc_dump_pid) {
            ssize_t w = write(hc_dump_fd, &b, 1);
            (void)w;
        }
        errno = saved;
    }
    /* 1: installed; 0: the signal has a handler already (not ours); -1: error */
    static int hc_install_dump_signal(int signum, int fd) {
        struct sigaction old, sa;
        if (sigaction(signum, NULL, &old) != 0)
            return -1;
        if ((old.sa_flags & SA_SIGINFO) ||
            (old.sa_handler != SIG_DFL && old.sa_handler != hc_on_dump_signal))
            return 0;
        hc_dump_fd = fd;
        hc_dump_pid = getpid();
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = hc_on_dump_signal;
        sigemptyset(&sa.sa_mask);
        sa.sa_flags = SA_RESTART;
        return sigaction(signum, &sa, NULL) == 0 ? 1 : -1;
    }
    static int hc_dump_signal_ours(int signum) {
        struct sigaction old;
        if (sigaction(signum, NULL, &old) != 0)
            return 0;
        return !(old.sa_flags & SA_SIGINFO) && old.sa_handler == hc_on_dump_signal;
    }
    """
    int hc_install_dump_signal(int signum, int fd)
    int hc_dump_signal_ours(int signum)


def install_dump_signal(int signum, int fd):
    """Make ``signum`` write a byte to ``fd`` (non-blocking), if nobody handles it yet (the default
    disposition, or this very handler, e.g. in a forked child); True if installed."""
    return hc_install_dump_signal(signum, fd) == 1


def dump_signal_installed(int signum):
    """Whether ``signum`` is handled by install_dump_signal's handler now."""
    return hc_dump_signal_ours(signum) == 1
