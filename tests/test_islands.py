"""Islands in one hetccl communicator: formation (which ranks, which bridge, which leader) and the
collectives composed across them, exact against numpy.

The mpirun tests run tests/islands_worker.py: every ReduceOp on integer, floating (float16,
bfloat16, float32, float64) and bool buffers of 0, 1, 7, 1001 and 2^18+3 elements, in place and
out of place, forced through the islands (both composed forms where the islands are equal) and as
the tuner chooses; allgather (in place too) and broadcast from every root. Island A runs on the MPI
bridge, island B on hetccl's own shared memory.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from hetccl import InvalidUsage
from hetccl.bridges import formation
from hetccl.bridges.base import HOST, BridgeError
from hetccl.collectives.islands import Staging
from hetccl.topology import topofile
from hetccl.topology.model import Link, Node, RankPlace, Topology
from tests.mpirun_util import run_worker


# ------------------------------------------------------------------ mixed islands under mpirun

def test_mixed_islands_two_plus_two():
    rows = run_worker("mixed")
    assert {r["islands"] for r in rows} == {"mpi:0,1;hetccl:2,3"}
    assert all(int(r["checks"]) > 900 for r in rows)


def test_unequal_islands_three_plus_one():
    rows = run_worker("unequal")
    assert {r["islands"] for r in rows} == {"mpi:0,1,2;hetccl:3"}


def test_islands_from_topology_file(tmp_path):
    """The file's per-rank 'bridge' field forms a non-contiguous MPI island (ranks 0 and 2)."""
    path = tmp_path / "topo.json"
    path.write_text(json.dumps({"format": "hetccl-topology", "version": 2, "ranks": [
        {"rank": r, "host": "a", "bridge": "mpi" if r % 2 == 0 else "none"} for r in range(4)]}))
    rows = run_worker("topofile", HETCCL_TOPO_FILE=str(path))
    assert {r["islands"] for r in rows} == {"mpi:0,2;hetccl:1,3"}


# ------------------------------------------------------------------ formation (no processes)

def _card(rank, request=None, vendor=None, mpi_rank=None, job="j/4", have=("mpi",)):
    hw = {"accelerators": [{"accel": vendor}]} if vendor else {}
    return {"rank": rank, "host": "h",
            "topo": {"place": {"device": 0 if vendor else None}, "hw": hw},
            "bridge": {"request": request, "have": list(have), "error": None,
                       "mpi": None if mpi_rank is None else {"rank": mpi_rank, "size": 4, "job": job}}}


def _topo(n, **place):
    return Topology([Node("net", "network")], [], [RankPlace(r, "h", **place) for r in range(n)])


def test_no_bridge_means_no_islands():
    assert formation.form([_card(r) for r in range(3)], _topo(3)) is None


def test_explicit_request_wins_and_mpi_islands_follow_the_job():
    cards = [_card(0, "mpi", mpi_rank=0), _card(1, "mpi", mpi_rank=1), _card(2), _card(3, "none")]
    isl = formation.form(cards, _topo(4))
    assert [(i.kind, i.ranks) for i in isl] == [("mpi", (0, 1)), ("hetccl", (2, 3))]
    cards = [_card(0, "mpi", mpi_rank=0, job="a"), _card(1, "mpi", mpi_rank=0, job="b")]
    assert [i.ranks for i in formation.form(cards, _topo(2))] == [(0,), (1,)]   # two mpirun jobs


def test_topology_file_bridge_is_second_and_vendor_third():
    topo = _topo(3)
    topo.ranks[0].bridge = "mpi"
    cards = [_card(0, mpi_rank=0), _card(1, "none", vendor="nvidia", have=("mpi", "nccl")),
             _card(2, vendor="nvidia", have=("mpi", "nccl"))]
    isl = formation.form(cards, topo)
    assert [(i.kind, i.ranks) for i in isl] == [("mpi", (0,)), ("hetccl", (1,)), ("nccl", (2,))]
    # a vendor whose bridge this hetccl lacks stays on hetccl's transports
    assert formation.form([_card(0, vendor="nvidia", have=("mpi",))], _topo(1)) is None
    assert formation.vendor_library("amd") == "rccl" and formation.vendor_library("ascend") == "hccl"
    assert formation.vendor_library(None) is None and formation.vendor_library("cambricon") == "cncl"
    assert formation.vendor_library("kunlunxin") == "bkcl" and formation.vendor_library("enflame") == "eccl"
    assert formation.vendor_library("some-new-vendor") is None


def test_unusable_request_raises_the_same_error_everywhere():
    cards = [_card(0, "mpi"), _card(1)]
    cards[0]["bridge"]["error"] = "the MPI bridge needs the job to be started by mpirun/mpiexec"
    with pytest.raises(InvalidUsage, match="rank 0: the MPI bridge needs the job to be started by mpirun"):
        formation.form(cards, _topo(2))
    with pytest.raises(InvalidUsage, match="not started by mpirun"):
        formation.form([_card(0, "mpi")], _topo(1))          # no MPI world rank in its card
    with pytest.raises(InvalidUsage, match="cannot be one MPI process"):
        formation.form([_card(0, "mpi", mpi_rank=0), _card(1, "mpi", mpi_rank=0)], _topo(2))


def test_automatic_choice_takes_only_bridges_that_can_take_host_buffers():
    """The NCCL-family and HCCL bridges work on device memory and stage host buffers; a GPU rank
    is put on them automatically only where the library is usable (not on this machine)."""
    from hetccl.bridges.nccl import NcclBridge
    assert formation.stageable("mpi")
    assert formation.stageable("nccl") == all(callable(getattr(NcclBridge, m, None)) for m in formation.STAGING)
    gpu = {"place": {"device": 0}, "hw": {"accelerators": [{"accel": "nvidia"}]}}
    assert formation.card_field(None, gpu)["have"] == []      # this machine: no usable, stageable NCCL


def test_bridge_names_are_checked():
    with pytest.raises(InvalidUsage, match="is not a bridge; use one of"):
        formation.requested("mpich", 0)
    assert formation.requested({0: "MPI"}, 0) == "mpi" and formation.requested({0: "mpi"}, 1) is None
    assert formation.requested("auto", 0) is None and formation.requested("none", 0) == "none"
    assert formation.card_field("hccl")["error"].startswith("no usable hccl library on this rank")
    assert formation.card_field(None)["error"] is None and formation.card_field(None)["have"] == []


def test_leader_is_the_rank_nearest_the_fastest_nic():
    nodes = [Node("net", "network"), Node("nic:h/slow", "nic", "h"), Node("nic:h/fast", "nic", "h")]
    links = [Link("nic:h/slow", "net", "tcp", 1e9), Link("nic:h/fast", "net", "rdma", 25e9)]
    topo = Topology(nodes, links, [RankPlace(0, "h", nic="slow"), RankPlace(1, "h", nic="slow"),
                                   RankPlace(2, "h", nic="fast"), RankPlace(3, "h", nic="fast")])
    cards = [_card(r, "mpi", mpi_rank=r) for r in range(4)]
    assert formation.form(cards, topo)[0].leader == 2
    assert formation.form(cards, _topo(4))[0].leader == 0          # no NIC known: lowest rank


def test_topology_file_version_2_bridge_field(tmp_path):
    d = {"format": "hetccl-topology", "version": 2,
         "ranks": [{"rank": 0, "host": "a", "bridge": "mpi"}, {"rank": 1, "host": "a"}]}
    topo = topofile.from_dict(d)
    assert [r.bridge for r in topo.ranks] == ["mpi", None]
    path = tmp_path / "t.json"
    topofile.dump(topo, str(path))
    assert topofile.load(str(path)).ranks[0].bridge == "mpi"
    with pytest.raises(InvalidUsage, match="version 2 file"):
        topofile.from_dict({**d, "version": 1})
    with pytest.raises(InvalidUsage, match="'bridge' must be a library name"):
        topofile.from_dict({**d, "ranks": [{"rank": 0, "host": "a", "bridge": 3}]})


# ------------------------------------------------------------------ staging through host memory

class _DeviceMemoryBridge:
    """A bridge on another memory type, modelled by private numpy buffers (counts every copy)."""
    kind, memory = "fake", "fakedev"

    def __init__(self):
        self.copies = []

    def device_buffer(self, nbytes):
        return np.zeros(nbytes, np.uint8)

    def copy_in(self, dev, host):
        self.copies.append("in")
        dev[:host.nbytes] = host.view(np.uint8).reshape(-1)

    def copy_out(self, host, dev):
        self.copies.append("out")
        host.view(np.uint8).reshape(-1)[:] = dev[:host.nbytes]


def test_device_bridges_get_their_buffers_staged():
    b = _DeviceMemoryBridge()
    st = Staging(b)
    src = np.arange(10, dtype=np.float32)
    dst = np.zeros(10, np.float32)
    seen = []

    def step(send, recv, count):                    # what a device collective sees
        assert not np.shares_memory(send, src) and not np.shares_memory(recv, dst)
        seen.append(count)
        recv[:send.size] = send * 2
    st.run(step, src, dst, 10)
    assert np.array_equal(dst.view(np.uint8), (src.view(np.uint8) * 2)) and b.copies == ["in", "out"]
    assert seen == [10]


def test_host_bridges_use_the_callers_buffers_and_incomplete_device_bridges_are_refused():
    class HostBridge:
        kind, memory = "h", HOST
    seen = []
    x = np.ones(3)
    Staging(HostBridge()).run(lambda s, r: seen.append(s is x and r is x), x, x)
    assert seen == [True]

    class NoCopies:
        kind, memory = "nocopy", "cuda"
    with pytest.raises(BridgeError, match="has no device_buffer"):
        Staging(NoCopies())


# ------------------------------------------------------------------ an NCCL-API island (ABI double)

def _open_fake(ctx):
    """Opener of the test's NCCL-API island: the ABI double of tests/fakeccl over host memory."""
    import os

    from hetccl.bridges import nccl
    from hetccl.bridges.vendor import Runtime
    d = os.environ["FAKECCL_DIR"]
    vendor = nccl.custom("fakeccl", os.path.join(d, "libfakeccl.so"), "fakeccl",
                         Runtime((os.path.join(d, "libfakert.so"),), "fakert"), memory=HOST, dlpack_devices=(1,))
    return nccl.NcclBridge(ctx.store, ctx.key_prefix, ctx.index, len(ctx.island.ranks), vendor=vendor,
                           timeout=ctx.timeout)


def _nccl_island_rank(rank, size):
    import hetccl
    from tests.islands_worker import Checker, matrix
    formation.register("fakeccl", "tests.test_islands:_open_fake")
    comm = hetccl.init(timeout=120, bridges={0: "fakeccl", 1: "fakeccl"})
    kinds = [(i.kind, i.ranks) for i in comm._islands.islands]
    chk = Checker(comm)
    matrix(chk, forms=("rails", "leaders"), large=False)     # the double holds 1 MiB per call
    comm.close()
    return kinds, chk.n


def test_nccl_api_island_next_to_a_hetccl_island(tmp_path_factory):
    """Island A on the NCCL-family bridge (the ABI double, host memory), island B on hetccl shm:
    the same exact matrix as the MPI case, without mpirun."""
    from tests import fakeccl
    from tests.launcher import run_ranks
    libs = fakeccl.build_or_skip(tmp_path_factory)
    # the island's probe times a host-memory bridge at 16 MiB (islands.PROBE_SIZES): a slot that holds it
    results = run_ranks(_nccl_island_rank, 4, timeout=600,
                        env=dict(fakeccl.env(libs), FAKECCL_SLOT_BYTES=str(16 << 20)))
    for kinds, n in results:
        assert kinds == [("fakeccl", (0, 1)), ("hetccl", (2, 3))] and n > 900
