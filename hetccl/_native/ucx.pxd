# The minimal, ABI-stable subset of UCX's UCP API (UCX >= 1.15), declared here rather than taken from
# the UCX headers so that hetccl builds without UCX installed: the library is dlopen()ed at run time
# (ucx.pyx) and reached through the UcpApi table of function pointers below.
#
# Layout rules kept from ucp.h / ucp_def.h (UCX 1.22, checked field by field):
# * every params struct starts with a uint64 field_mask; UCX reads only the fields whose bit is set,
#   so trailing fields a given UCX version does not know are never read (structs may only grow);
# * ucs_status_t is a *packed* enum (UCS_S_PACKED): one signed byte, also as a return value;
# * ucs_status_ptr_t is a pointer that is either NULL (done), an error code cast to a pointer, or a
#   request handle (UCS_PTR_IS_PTR).
from libc.stdint cimport int8_t, uint32_t, uint64_t, uintptr_t

ctypedef int8_t ucs_status_t
ctypedef void* ucs_status_ptr_t
ctypedef void* ucp_handle              # context, worker, ep, mem, rkey: all opaque pointers

cdef enum:
    UCS_OK = 0
    UCS_INPROGRESS = 1
    UCS_ERR_NO_MESSAGE = -1
    UCS_ERR_NO_RESOURCE = -2
    UCS_ERR_MESSAGE_TRUNCATED = -9
    UCS_ERR_BUSY = -15
    UCS_ERR_CANCELED = -16
    UCS_ERR_LAST = -100

    UCP_FEATURE_TAG = 1 << 0
    UCP_FEATURE_RMA = 1 << 1
    UCP_FEATURE_WAKEUP = 1 << 4
    UCP_FEATURE_STREAM = 1 << 5
    UCP_FEATURE_AM = 1 << 6

    UCP_PARAM_FIELD_FEATURES = 1 << 0
    UCP_PARAM_FIELD_MT_WORKERS_SHARED = 1 << 5
    UCP_PARAM_FIELD_NAME = 1 << 8

    UCP_WORKER_PARAM_FIELD_THREAD_MODE = 1 << 0
    UCP_WORKER_PARAM_FIELD_EVENTS = 1 << 2
    UCS_THREAD_MODE_SINGLE = 0
    UCS_THREAD_MODE_SERIALIZED = 1
    UCS_THREAD_MODE_MULTI = 2
    UCP_WAKEUP_RMA = 1 << 0
    UCP_WAKEUP_TAG_SEND = 1 << 2
    UCP_WAKEUP_TAG_RECV = 1 << 3
    UCP_WAKEUP_TX = 1 << 10
    UCP_WAKEUP_RX = 1 << 11

    UCP_EP_PARAM_FIELD_REMOTE_ADDRESS = 1 << 0
    UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE = 1 << 1
    UCP_EP_PARAM_FIELD_ERR_HANDLER = 1 << 2
    UCP_ERR_HANDLING_MODE_PEER = 1
    UCP_EP_CLOSE_FLAG_FORCE = 1 << 0

    UCP_OP_ATTR_FIELD_REQUEST = 1 << 0
    UCP_OP_ATTR_FIELD_CALLBACK = 1 << 1
    UCP_OP_ATTR_FIELD_FLAGS = 1 << 4
    UCP_OP_ATTR_FIELD_RECV_INFO = 1 << 7

    UCP_MEM_MAP_PARAM_FIELD_ADDRESS = 1 << 0
    UCP_MEM_MAP_PARAM_FIELD_LENGTH = 1 << 1
    UCP_MEM_MAP_PARAM_FIELD_PROT = 1 << 3
    UCP_MEM_MAP_PROT_ALL = (1 << 0) | (1 << 1) | (1 << 8) | (1 << 9)


cdef inline bint ucs_ptr_is_ptr(ucs_status_ptr_t p) noexcept nogil:
    return (<uintptr_t>p) - 1 < (<uintptr_t>(<long>UCS_ERR_LAST)) - 1

cdef inline ucs_status_t ucs_ptr_status(ucs_status_ptr_t p) noexcept nogil:
    """Status of a non-request return (NULL = UCS_OK, else the error cast to a pointer)."""
    return <ucs_status_t>(<long><uintptr_t>p)


cdef struct ucp_params_t:
    uint64_t field_mask
    uint64_t features
    size_t request_size
    void* request_init
    void* request_cleanup
    uint64_t tag_sender_mask
    int mt_workers_shared
    size_t estimated_num_eps
    size_t estimated_num_ppn
    const char* name
    size_t node_local_id

cdef struct ucp_worker_params_t:
    uint64_t field_mask
    int thread_mode
    unsigned long cpu_mask[16]            # ucs_cpu_set_t: 1024 bits
    unsigned events
    void* user_data
    int event_fd
    uint64_t flags
    const char* name
    size_t am_alignment
    uint64_t client_id

ctypedef void (*ucp_err_handler_cb_t)(void* arg, ucp_handle ep, ucs_status_t status) noexcept nogil

cdef struct ucp_err_handler_t:
    ucp_err_handler_cb_t cb
    void* arg

cdef struct ucs_sock_addr_t:
    const void* addr
    uint32_t addrlen

cdef struct ucp_ep_params_t:
    uint64_t field_mask
    const void* address
    int err_mode
    ucp_err_handler_t err_handler
    void* user_data
    unsigned flags
    ucs_sock_addr_t sockaddr
    void* conn_request
    const char* name
    ucs_sock_addr_t local_sockaddr

cdef struct ucp_tag_recv_info_t:
    uint64_t sender_tag
    size_t length

cdef union ucp_recv_info_u:
    size_t* length
    ucp_tag_recv_info_t* tag_info

cdef struct ucp_request_param_t:
    uint32_t op_attr_mask
    uint32_t flags
    void* request
    void* cb
    uint64_t datatype
    void* user_data
    void* reply_buffer
    int memory_type
    ucp_recv_info_u recv_info
    void* memh
    uint64_t remote_datatype
    const void* remote
    size_t remote_count

cdef struct ucp_mem_map_params_t:
    uint64_t field_mask
    void* address
    size_t length
    unsigned flags
    unsigned prot
    int memory_type
    const void* exported_memh_buffer


cdef struct UcpApi:
    const char* (*get_version_string)() noexcept nogil
    ucs_status_t (*config_read)(const char*, const char*, void**) noexcept nogil
    void (*config_release)(void*) noexcept nogil
    ucs_status_t (*init_version)(unsigned, unsigned, const ucp_params_t*, const void*, ucp_handle*) noexcept nogil
    void (*cleanup)(ucp_handle) noexcept nogil
    void (*context_print_info)(ucp_handle, void*) noexcept nogil
    ucs_status_t (*worker_create)(ucp_handle, const ucp_worker_params_t*, ucp_handle*) noexcept nogil
    void (*worker_destroy)(ucp_handle) noexcept nogil
    ucs_status_t (*worker_get_address)(ucp_handle, void**, size_t*) noexcept nogil
    void (*worker_release_address)(ucp_handle, void*) noexcept nogil
    unsigned (*worker_progress)(ucp_handle) noexcept nogil
    ucs_status_t (*worker_get_efd)(ucp_handle, int*) noexcept nogil
    ucs_status_t (*worker_arm)(ucp_handle) noexcept nogil
    ucs_status_ptr_t (*worker_flush_nbx)(ucp_handle, const ucp_request_param_t*) noexcept nogil
    ucs_status_t (*ep_create)(ucp_handle, const ucp_ep_params_t*, ucp_handle*) noexcept nogil
    ucs_status_ptr_t (*ep_close_nbx)(ucp_handle, const ucp_request_param_t*) noexcept nogil
    ucs_status_ptr_t (*ep_flush_nbx)(ucp_handle, const ucp_request_param_t*) noexcept nogil
    ucs_status_ptr_t (*tag_send_nbx)(ucp_handle, const void*, size_t, uint64_t, const ucp_request_param_t*) noexcept nogil
    ucs_status_ptr_t (*tag_recv_nbx)(ucp_handle, void*, size_t, uint64_t, uint64_t, const ucp_request_param_t*) noexcept nogil
    ucs_status_t (*tag_recv_request_test)(void*, ucp_tag_recv_info_t*) noexcept nogil
    ucs_status_ptr_t (*stream_send_nbx)(ucp_handle, const void*, size_t, const ucp_request_param_t*) noexcept nogil
    ucs_status_ptr_t (*stream_recv_data_nb)(ucp_handle, size_t*) noexcept nogil
    void (*stream_data_release)(ucp_handle, void*) noexcept nogil
    ucs_status_t (*request_check_status)(void*) noexcept nogil
    void (*request_cancel)(ucp_handle, void*) noexcept nogil
    void (*request_free)(void*) noexcept nogil
    ucs_status_t (*mem_map)(ucp_handle, const ucp_mem_map_params_t*, ucp_handle*) noexcept nogil
    ucs_status_t (*mem_unmap)(ucp_handle, ucp_handle) noexcept nogil
    ucs_status_t (*rkey_pack)(ucp_handle, ucp_handle, void**, size_t*) noexcept nogil
    void (*rkey_buffer_release)(void*) noexcept nogil
    ucs_status_t (*ep_rkey_unpack)(ucp_handle, const void*, ucp_handle*) noexcept nogil
    void (*rkey_destroy)(ucp_handle) noexcept nogil
    ucs_status_ptr_t (*put_nbx)(ucp_handle, const void*, size_t, uint64_t, ucp_handle, const ucp_request_param_t*) noexcept nogil
    ucs_status_ptr_t (*get_nbx)(ucp_handle, void*, size_t, uint64_t, ucp_handle, const ucp_request_param_t*) noexcept nogil
    const char* (*status_string)(ucs_status_t) noexcept nogil
    ucs_status_t (*config_modify)(void*, const char*, const char*) noexcept nogil
    void* (*tag_probe_nb)(ucp_handle, uint64_t, uint64_t, int, ucp_tag_recv_info_t*) noexcept nogil
    ucs_status_ptr_t (*tag_msg_recv_nbx)(ucp_handle, void*, size_t, void*, const ucp_request_param_t*) noexcept nogil


cdef struct EpState:
    # What the endpoint's error handler records (it runs inside worker progress): the peer failed.
    int failed
    ucs_status_t status


cdef UcpApi* ucp_api() noexcept nogil


cdef struct UcxLink:
    # One engine link carried by a UCP stream endpoint (see link_rdma.pxd). Owned by ucx.LinkHandle.
    UcpApi* api
    ucp_handle worker
    ucp_handle ep
    EpState* state
    int efd
    void* tx_req              # the one stream send in flight; its bytes are reported once complete
    const char* tx_src
    size_t tx_len
    char* rx_data             # the received chunk being consumed (UCX-owned until released)
    size_t rx_len
    size_t rx_off
    char carry[16]            # receive-and-reduce: an element split across two chunks
    size_t carry_len
