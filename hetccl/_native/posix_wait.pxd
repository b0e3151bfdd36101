# The POSIX calls every waiting loop of the native core shares (progress, point-to-point links,
# single-copy schedules, UCX): poll() on sockets and event fds, and sched_yield() for the
# spin-then-yield-then-block policy. Declared once here and cimported.
cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd* fds, unsigned long nfds, int timeout)
    short POLLIN
    short POLLOUT
    short POLLHUP
    short POLLERR
    short POLLNVAL
    short POLLRDHUP

cdef extern from "<sched.h>" nogil:
    int sched_yield()
