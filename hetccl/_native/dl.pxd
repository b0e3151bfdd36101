# The dynamic loader, for the bindings that load a library at run time instead of linking it
# (ucx.pyx: UCX; ccl_api.pyx: NCCL-family, HCCL and their device runtimes).
cdef extern from "<dlfcn.h>" nogil:
    void* dlopen(const char* filename, int flags)
    void* dlsym(void* handle, const char* symbol)
    char* dlerror()
    int RTLD_NOW
    int RTLD_LOCAL
