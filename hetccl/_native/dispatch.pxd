# The run_* halves of the dispatch (dispatch.pyx) on buffers already pinned, and the rooted
# collectives' whole entries (cpdef: Python callers as before, C calls from the latency path,
# latency.pyx, without a Python call's argument parsing).
from hetccl._native.engine cimport Engine

cdef int run_allreduce(Engine e, Py_buffer* a, Py_buffer* b, bint inplace, int dtype, int op, int algo,
                       double timeout) except -1
cdef int run_allgather(Engine e, Py_buffer* sv, Py_buffer* rv, int dtype, int algo, double timeout) except -1
cdef int run_broadcast(Engine e, char* buf, size_t nb, int root, int dtype, int algo,
                       double timeout) except -1
cdef int run_reduce_scatter(Engine e, Py_buffer* a, Py_buffer* b, int dtype, int op, int algo,
                            double timeout) except -1
cdef int run_alltoall(Engine e, Py_buffer* a, Py_buffer* b, int dtype, int algo, double timeout) except -1
cpdef reduce(Engine e, sendobj, recvobj, int root, int dtype, int op, int algo, double timeout)
cpdef gather(Engine e, sendobj, recvobj, counts, int root, int dtype, int algo, double timeout)
cpdef scatter(Engine e, sendobj, recvobj, counts, int root, int dtype, int algo, double timeout)
