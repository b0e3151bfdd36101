# The run_* halves of the dispatch (dispatch.pyx) on buffers already pinned: the latency path
# (latency.pyx) calls them straight.
from hetccl._native.engine cimport Engine

cdef int run_allreduce(Engine e, Py_buffer* a, Py_buffer* b, bint inplace, int dtype, int op, int algo,
                       double timeout) except -1
cdef int run_allgather(Engine e, Py_buffer* sv, Py_buffer* rv, int dtype, int algo, double timeout) except -1
cdef int run_broadcast(Engine e, char* buf, size_t nb, int root, int dtype, int algo,
                       double timeout) except -1
cdef int run_reduce_scatter(Engine e, Py_buffer* a, Py_buffer* b, int dtype, int op, int algo,
                            double timeout) except -1
cdef int run_alltoall(Engine e, Py_buffer* a, Py_buffer* b, int dtype, int algo, double timeout) except -1
