# Acquire C-contiguous buffers from any buffer-protocol object (numpy arrays, bytearray, ...).
cdef int get_buffer(object obj, Py_buffer* view, bint writable) except -1
cdef int check_overlap(Py_buffer* a, Py_buffer* b, bint same) except -1
