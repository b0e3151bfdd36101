# The registry of link kinds (links.pyx).
from hetccl._native.link cimport LinkKind

cdef const LinkKind* kind_named(str name) except NULL
cdef const LinkKind* unlinked() noexcept nogil
