"""``c2c``: coherent single-copy links between ranks of one host (load/store into a peer's memory).

On a CPU host the "chip-to-chip" fabric is the memory system itself; what a c2c link adds over
``shm`` is that peers read, write and reduce *each other's* memory, so data moves once instead of
being staged through a FIFO (copy in, copy out). Two modes, agreed per host at set-up:

* ``cma`` — cross-memory attach: ``process_vm_readv/writev`` between the ranks' own (user) buffers.
  It needs the kernel's permission to ptrace-read the peer (same uid, and
  ``kernel.yama.ptrace_scope`` 0, or CAP_SYS_PTRACE; containers may forbid it with seccomp). Every
  rank test-reads a word in every same-host peer at set-up; only if all succeed is cma used.
* ``window`` — the fallback when any probe fails (or ``HETCCL_C2C_MODE=window``): each pair segment
  also holds one pre-faulted window per direction that the peer loads from directly.

Each c2c pair also carries an ordinary shm FIFO pair (same segment), used by every schedule that has
no single-copy form yet (broadcast, reduce_scatter, alltoall, small-message recursive doubling, ...).
The single-copy schedules are in _native/single_copy.pyx. In cma mode the Communicator runs broadcast,
allgather and alltoall on plain buffers single-copy from the sizes where the communicator-creation probe
measured them faster than the FIFOs (collectives/single_copy_probe.py); ring allreduce and allgather
run single-copy from fixed sizes when HETCCL_C2C_DIRECT is on. Buffers from
``comm.alloc`` (hetccl/memory/symmetric.py) are mapped by every local rank, so collectives over them
skip CMA altogether and use plain loads and stores (_native/symmetric_heap.pyx), in either mode and by
default; both reuse the control slots and the sync protocol of this transport (direct.pxd).
"""
import logging
import os

from ..errors import HetcclError, InvalidUsage, TransportError
from ..units import size_label
from .base import LinkContext, exchange_cards
from .shm import ShmTransport

log = logging.getLogger("hetccl.transport")

MODES = ("auto", "cma", "window")
# Smallest call (bytes) that runs single-copy, per collective, once switched on; None: never (the
# FIFO schedules then serve it). Below 32 KiB the FIFO schedules win: a single-copy call costs two
# all-rank syncs plus the CMA system calls, while a small FIFO message rides in its header's cache
# lines.
DIRECT_MIN_BYTES = {"allreduce": 32 << 10, "allgather": 32 << 10}


def direct_thresholds():
    """The single-copy thresholds in force: HETCCL_C2C_DIRECT=on uses DIRECT_MIN_BYTES, a number
    of bytes sets both, off (the default) leaves every call on the FIFO schedules.

    Off by default because on the 2-vCPU VM this was built on, a CMA copy runs at 0.3-0.4x a
    streaming memcpy and the single-copy schedules measured 0.77-0.89x the FIFO ring (bench/RESULTS.md);
    on hosts where cross-memory copies run near memory speed they are the faster path."""
    spec = os.environ.get("HETCCL_C2C_DIRECT", "off").strip().lower() or "off"
    if spec in ("off", "0", "no"):
        return None
    if spec in ("on", "1", "yes"):
        return dict(DIRECT_MIN_BYTES)
    try:
        n = int(spec)
    except ValueError:
        raise InvalidUsage(f"HETCCL_C2C_DIRECT={spec!r}: use off, on or a size in bytes") from None
    return {k: n for k in DIRECT_MIN_BYTES}
_MODE_CODE = {"cma": 1, "window": 2}


def requested_mode() -> str:
    """HETCCL_C2C_MODE: auto (cma if every probe succeeds, else window), cma (fail otherwise), window."""
    m = os.environ.get("HETCCL_C2C_MODE", "auto").strip().lower() or "auto"
    if m not in MODES:
        raise InvalidUsage(f"HETCCL_C2C_MODE={m!r}: choose auto, cma or window")
    return m


def window_bytes(local_size: int) -> int:
    """Bytes of each direction's window (window mode): big rounds for few ranks, bounded memory
    (and first-touch time) for many: 16 MiB for 2 ranks, 8 MiB up to 4, 2 MiB beyond."""
    return 16 << 20 if local_size <= 2 else 8 << 20 if local_size <= 4 else 2 << 20


def ptrace_policy() -> str:
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as f:
            return f"kernel.yama.ptrace_scope={f.read().strip()}"
    except OSError:
        return "no Yama ptrace policy"


def explain_errno(err: int) -> str:
    if err == -1:
        return "a test read returned the wrong bytes"
    name = os.strerror(err)
    if err in (1, 13):                     # EPERM, EACCES
        return (f"cross-memory attach refused ({name}): {ptrace_policy()}, differing uids, a missing "
                f"CAP_SYS_PTRACE or a container's seccomp policy forbid process_vm_readv")
    if err == 38:                          # ENOSYS
        return "this kernel has no process_vm_readv (CONFIG_CROSS_MEMORY_ATTACH off)"
    return f"process_vm_readv failed: {name}"


def card_fields() -> dict:
    """What peers need to probe cross-memory attach into this process."""
    from .._native.single_copy import probe_address
    pid, addr, value = probe_address()
    return {"cma_probe": [pid, addr, value]}


def probe(card: dict) -> int:
    """0 if this process can read the peer's probe word (see card_fields), else an errno (-1: wrong)."""
    from .._native.single_copy import cma_probe
    pid, addr, value = card["cma_probe"]
    return cma_probe(pid, addr, value)


def agree_mode(store, comm_id: str, rank: int, cards: list, timeout: float) -> None:
    """Probe every same-host peer, share the verdicts through the store, and record in every card
    the host's c2c mode ('cma' or 'window') and why. All ranks derive the same answer."""
    mine = cards[rank]
    want = requested_mode()
    fails = []
    if want != "window":
        for c in cards:
            if c["rank"] != rank and c["host"] == mine["host"] and "cma_probe" in c:
                err = probe(c)
                if err:
                    fails.append(f"rank {rank} -> rank {c['rank']}: {explain_errno(err)}")
    store.set(f"{comm_id}/c2c/{rank}", ("\n".join(fails) or "ok").encode())
    raw = store.multi_get([f"{comm_id}/c2c/{r}" for r in range(len(cards))], timeout=timeout)
    verdict = {r: bytes(b).decode() for r, b in enumerate(raw)}
    for host in {c["host"] for c in cards}:
        ranks = [c["rank"] for c in cards if c["host"] == host]
        bad = [verdict[r] for r in ranks if verdict[r] != "ok"]
        if want == "window":
            mode, why = "window", "HETCCL_C2C_MODE=window"
        elif bad:
            mode, why = "window", bad[0].splitlines()[0]
        else:
            mode, why = "cma", f"process_vm_readv between all {len(ranks)} local ranks works ({ptrace_policy()})"
        if mode == "window" and want == "cma":
            raise TransportError(f"HETCCL_C2C_MODE=cma but {why}; unset it to fall back to the "
                                 f"shared window")
        for c in cards:
            if c["host"] == host:
                c["c2c_mode"], c["c2c_why"] = mode, why


def local_mode() -> tuple[str, str]:
    """The mode c2c would use between two ranks started like this process (for `hetccl doctor`):
    forks a child and test-reads it."""
    want = requested_mode()
    if want == "window":
        return "window", "HETCCL_C2C_MODE=window"
    card = card_fields()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                           # the child: wait until the parent has probed it
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    os.close(r)
    try:
        err = probe({"cma_probe": [pid, card["cma_probe"][1], card["cma_probe"][2]]})
    finally:
        os.write(w, b"x")
        os.close(w)
        os.waitpid(pid, 0)
    if err:
        return "window", explain_errno(err)
    return "cma", f"process_vm_readv into another process works ({ptrace_policy()})"


class C2CTransport(ShmTransport):
    name = "c2c"
    preference = 40                 # same host, single copy
    link_class = "c2c"
    same_host = True
    wire = False
    one_sided = True
    cost = None                     # never measured alone: priced like the costliest declared link
    link_kind = "c2c"               # shm FIFOs plus the single-copy control slots and windows
    suffix = "-c2c"

    @classmethod
    def available(cls) -> bool:
        return os.path.isdir("/dev/shm") and hasattr(os, "fork")

    def score(self, a: dict, b: dict) -> int:
        return self.preference if a["host"] == b["host"] and a.get("c2c_mode") and b.get("c2c_mode") else 0

    def card_fields(self) -> dict:
        return card_fields()

    def agree(self, store, comm_id: str, rank: int, cards: list, timeout: float) -> None:
        agree_mode(store, comm_id, rank, cards, timeout)

    def agree_pair(self, sock, cards: dict, rank: int, peer: int, timeout: float) -> None:
        """Both directions must be readable for cma: each end probes the other, and the pair
        uses cma only if both probes succeed (the window otherwise, unless cma was demanded)."""
        err = probe(cards[peer]) if requested_mode() != "window" else -2
        theirs = exchange_cards(sock, {"err": err}, timeout)["err"]
        mode = "cma" if err == 0 and theirs == 0 else "window"
        if mode == "window" and requested_mode() == "cma":
            raise TransportError("HETCCL_C2C_MODE=cma but cross-memory attach between these processes fails")
        cards[rank]["c2c_mode"] = cards[peer]["c2c_mode"] = mode

    def doctor(self) -> tuple[list, dict]:
        if not self.available():
            return [], {}
        try:
            mode, why = local_mode()
        except HetcclError as e:
            mode, why = "error", str(e)
        return [f"c2c mode: {mode} ({why})"], {"c2c_mode": mode}

    def describe_links(self, cards: list, facts: dict) -> list:
        """Each host's mode, and which single-copy routes the communicator runs."""
        modes = {(c["host"], c.get("c2c_mode"), c.get("c2c_why")) for c in cards if c.get("c2c_mode")}
        lines = [f"c2c on {host}: {mode} ({why})" for host, mode, why in sorted(modes)]
        direct_min, plain = facts["direct_min"], facts["single_copy"]
        lines.append("single-copy ring allreduce/allgather: " + (
            ", ".join(f"{k} from {v} bytes" if v != float("inf") else f"{k} off"
                      for k, v in direct_min.items())
            if direct_min is not None else "off (HETCCL_C2C_DIRECT=on switches it on when every pair is c2c)"))
        lines.append("single-copy plain buffers (cma, measured against the FIFOs): " + (
            "; ".join(f"{k} at " + (", ".join(size_label(n) for n, won in v if won) or "no size measured")
                      for k, v in plain.items())
            if plain else "off (needs every pair c2c in cma mode; HETCCL_C2C_DIRECT=off also keeps it off)"))
        lines.append("comm.alloc buffers: " + (
            "symmetric (single-copy allreduce, allgather, broadcast, reduce_scatter, alltoall)"
            if facts["symmetric"] else "private memory (the symmetric schedules need every pair on c2c)"))
        lines.append("comm.register: " + (
            "moves a buffer's pages into shared memory where its owner holds them alone (then the "
            "symmetric schedules), else pre-faults them" if facts.get("register_shares") else
            "pre-faults the pages (sharing them needs every pair c2c in cma mode)"))
        return lines

    def endpoints(self) -> dict:
        return {"c2c": ({"HETCCL_C2C_MODE": "cma"}, cma_permitted),
                "c2c-window": ({"HETCCL_C2C_MODE": "window"}, None)}

    def _mode(self, ctx: LinkContext) -> str:
        return ctx.cards[ctx.rank].get("c2c_mode", "window")

    def segment_bytes(self, ctx: LinkContext, fb: int) -> int:
        from .._native.segment import c2c_segment_bytes
        # windows serve the single-copy collectives only: a lone endpoint pair (pair_endpoint.py) skips them
        win = window_bytes(ctx.local_size) if (self._mode(ctx) == "window" and
                                               getattr(ctx.engine, "c2c_windows", True)) else 0
        return c2c_segment_bytes(fb, win)

    def add_link(self, ctx: LinkContext, peer: int, sock, seg, fb: int, low: bool) -> None:
        mode = self._mode(ctx)
        self.hand_over(ctx.engine, peer, sock.fileno(), seg, fb, low, _MODE_CODE[mode],
                       int(ctx.cards[peer]["pid"]), window_bytes(ctx.local_size))


def cma_permitted():
    """None if c2c would run in cma mode between processes like this one, else why not."""
    mode, why = local_mode()
    return None if mode == "cma" else f"cross-memory attach is not permitted here: {why}"
