"""hetccl topo --synth, hetccl simulate, the tuning file, and the simulator held to a measurement.

The simulator must decide with the runtime's code: these tests build communicator-free pricers
from topology files (hetccl/simulate/group.py) and check them against what the runtime's own
Planner and decide() do, against a recorded measurement of real jobs (tests/data/, written by
bench/validate_sim.py --record), and the commands end to end, including the --help examples.
"""
from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest

import hetccl
from hetccl.errors import InvalidUsage
from hetccl.topology import synth, topofile
from tests.launcher import REPO_ROOT, run_command, run_ranks

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "simulate_recorded.json")


def _topo(spec):
    return topofile.from_dict(synth.generate(spec), "synth")


def _group(spec, **kw):
    from hetccl.simulate.group import Group
    return Group(_topo(spec), **kw)


# ------------------------------------------------------------------ --synth

def test_synth_splits_hosts_by_vendor_and_writes_a_readable_file():
    d = synth.generate("hosts=20,accel=4,vendors=nvidia:60+hygon:25+ascend:15,nics=2,oversub=2")
    topo = topofile.from_dict(json.loads(json.dumps(d)), "x")      # the file format, round trip
    assert len(topo.ranks) == 80 and len(topo.hosts()) == 20
    bridges = [topo.ranks[r].bridge for r in range(80)]
    assert bridges.count("nccl") == 12 * 4 and bridges.count("rccl") == 5 * 4 and bridges.count("hccl") == 3 * 4
    assert topo.pair_class(0, 1) == "c2c" and topo.pair_class(0, 4) == "rdma"
    assert topo.nodes["net"].attrs["oversubscription"] == 2.0
    assert d["synth"]["nics"] == 2 and topo.ranks[3].nic == "nic1"            # 4 accelerators on 2 rails
    assert sum(1 for n in topo.nodes.values() if n.kind == "nic") == 40


@pytest.mark.parametrize("spec,what", [
    ("hosts=2,foo=1", "unknown key"), ("hosts=x", "whole number"), ("vendors=acme:100", "vendor 'acme'"),
    ("tiers=4", "tiers=4"), ("oversub=0.5", ">= 1"), ("ranks=10,accel=8", "multiple"), ("hosts", "key=value")])
def test_synth_rejects_bad_specs_saying_what_is_wrong(spec, what):
    with pytest.raises(InvalidUsage, match=what):
        synth.generate(spec)


def test_topo_synth_command_writes_the_file(tmp_path):
    out = tmp_path / "c.json"
    p = run_command([sys.executable, "-m", "hetccl", "topo", "--synth", "hosts=4,accel=2", "-o", str(out)], timeout=60)
    assert p.returncode == 0, p.stderr
    assert "wrote" in p.stdout and len(json.loads(out.read_text())["ranks"]) == 8
    bad = run_command([sys.executable, "-m", "hetccl", "topo", "--synth", "hosts=0"], timeout=60)
    assert bad.returncode == 2 and "at least 1" in bad.stderr


# ------------------------------------------------------------------ the same code decides

def test_simulated_group_decides_as_the_runtime_planner():
    """A Planner built the way a communicator builds it and the simulator's TopologyPricer give
    the same choice and price at every size (one implementation: collectives/decide.py)."""
    from hetccl.collectives.decide import decide
    from hetccl.collectives.hierarchical import Planner
    from hetccl.collectives.cost_model import CostModel, LinkCost
    from hetccl.collectives.tuner import Tuner
    from hetccl.simulate.group import Group
    topo = topofile.from_dict(synth.generate("hosts=4,accel=4,vendors=cpu:100,nics=1"), "f")
    model = CostModel(LinkCost(30e-6, 1 / 0.13e9, 1 / 50e9, fifo=False), "tuning file", "", ("c2c", "rdma"))

    class Comm:                                  # what a Planner reads of a Context
        rank = 0
        tuner = Tuner(len(topo.ranks), model, "")
    plan = Planner(Comm(), topo, 2.0)
    g = Group(topo, model, load=2.0)
    for n in [1 << k for k in range(4, 28, 2)]:
        a, _ = decide(Comm.tuner, plan, None, "allreduce", n)
        assert g.decide("allreduce", n) == (a.name, None)
        assert g.rows("allreduce", n)[a.name] == pytest.approx(plan.price(a, n))


def test_mixed_vendor_cluster_composes_islands_and_explains_why():
    from hetccl.simulate.sweep import simulate
    g = _group("hosts=8,accel=4,vendors=nvidia:50+hygon:50,nics=4")
    doc = simulate(g, "allreduce", [1 << 10, 1 << 20, 1 << 30])
    assert all(r["choice"].startswith("islands:") for r in doc["sizes"])      # device islands compose
    assert all("device islands" in r["why"] for r in doc["sizes"])
    assert {"ring", "hierarchical", "islands:rails", "islands:leaders"} <= set(doc["sizes"][1]["algorithms"])
    assert "nccl island" in doc["islands"] and "rccl island" in doc["islands"]
    text = g.explain("allreduce", 1 << 20)
    assert "topology-aware pricing" in text and "islands (" in text and "modelled on the island's links" in text


def test_oversubscription_and_rails_change_the_network_price():
    """what-if material: 512 ranks, 8 per host, 8 hosts per leaf. Recursive doubling's steps at
    distance >= 64 leave the leaf with all 64 of its NICs at once: a 3:1 uplink runs them 3x
    slower; the ring in rank order leaves each leaf once and does not notice. With 4 NICs for 8
    ranks, two rails share each NIC."""
    base = "hosts=64,accel=8,vendors=cpu:100,leaf_hosts=8,rail_optimized=0"
    g1, g3 = _group(base + ",oversub=1,nics=8"), _group(base + ",oversub=3,nics=8")
    assert g1.plan._uplink_load("rd_steps") == [0, 0, 0, 1, 1, 1, 1, 1, 1]
    assert g3.plan._uplink_load("rd_steps") == [0, 0, 0, 1, 1, 1, 3, 3, 3]
    n = 256 << 20
    assert g3.rows("allreduce", n)["recursive_doubling"] > 1.05 * g1.rows("allreduce", n)["recursive_doubling"]
    assert g3.rows("allreduce", n)["ring"] == pytest.approx(g1.rows("allreduce", n)["ring"])
    g4 = _group(base + ",nics=4")
    assert g1.plan._uplink_load("rails") == 1 and g4.plan._uplink_load("rails") == 2
    m = 1 << 20                     # at 256 MiB the host phases set the pace; at 1 MiB the rails do
    assert g4.rows("allreduce", m)["hierarchical"] > 1.04 * g1.rows("allreduce", m)["hierarchical"]
    assert g4.rows("allreduce", n)["hierarchical"] == pytest.approx(g1.rows("allreduce", n)["hierarchical"])


def test_a_topology_without_fabric_prices_as_before():
    """Legacy files (no 'tiers' on the net node): one link per host, shared by its streams."""
    from hetccl.topology import fabric
    d = synth.generate("hosts=2,accel=2,vendors=cpu:100,nics=1")
    d["nodes"][0]["attrs"] = {}
    topo = topofile.from_dict(d, "f")
    assert fabric.of(topo) is None
    from hetccl.simulate.group import Group
    assert Group(topo).plan._uplink_load("rails") == 2


def test_reused_plain_buffers_on_one_c2c_host_run_symmetric_through_the_runtimes_gate():
    """On one host whose every pair is c2c, the runtime registers a reused plain buffer of 32 MiB
    or more and runs the symmetric schedules where they are priced faster (memory/symmetric.py
    auto_routes, the gate Communicator._auto_takes asks): the simulator decides through the same
    function, prices the path as the gate does, and says why; fresh buffers, other transports,
    a forced algorithm and smaller calls keep the FIFO algorithms."""
    import types
    from hetccl.memory import symmetric
    from hetccl.simulate.group import Group
    from hetccl.simulate.sweep import simulate
    topo = topofile.from_dict({"format": "hetccl-topology", "version": 2,
                               "ranks": [{"rank": r, "host": "a"} for r in range(4)]}, "f")
    g = Group(topo)
    big, small = 64 << 20, symmetric.AUTO_MIN // 2
    sm = symmetric.SymmetricMemory.__new__(symmetric.SymmetricMemory)   # the communicator's side
    sm._ctx, sm._faster, sm.shared = types.SimpleNamespace(tuner=g.tuner), {}, True
    for coll in symmetric.NEEDS:
        runtime = symmetric.auto_routes(coll, big, g.tuner, True, None, sm.faster)
        assert runtime and g.decide(coll, big) == ("symmetric", None), coll
        rows = g.rows(coll, big)
        assert rows["symmetric"] == max(t for k, t in sm.prices(coll, big).items() if k != "fifo")
        assert rows["symmetric"] == min(rows.values())
        assert g.decide(coll, small)[0] != "symmetric" and "symmetric" not in g.rows(coll, small)
    doc = simulate(g, "allreduce", [small, big])
    assert [r["choice"] for r in doc["sizes"]] == ["ring", "symmetric"]
    assert doc["sizes"][1]["why"].startswith("plain buffers reused: registered automatically")
    assert "reused" in doc["buffers"] and "registered automatically" in g.explain("allreduce", big)
    fresh = Group(topo, reused=False)
    assert fresh.decide("allreduce", big)[0] == "ring" and "symmetric" not in fresh.rows("allreduce", big)
    assert "never registered" in simulate(fresh, "allreduce", [big])["buffers"]
    assert Group(topo, transports="^c2c").decide("allreduce", big)[0] != "symmetric"
    assert Group(topo, forced_spec="allreduce:rabenseifner").decide("allreduce", big)[0] == "rabenseifner"
    two_hosts = topofile.from_dict({"format": "hetccl-topology", "version": 2,
                                    "ranks": [{"rank": r, "host": "ab"[r // 2]} for r in range(4)]}, "f")
    assert Group(two_hosts).decide("allreduce", big)[0] != "symmetric"


def test_a_record_says_whether_its_job_registered_reused_buffers():
    """validate.reused: the record's auto_register, else (records made before they kept it)
    whether its runtime was new enough to register automatically (a model with beta_chain)."""
    v = _validate()
    assert v.reused({"auto_register": False, "model": {"beta_chain": 0.0}}) is False
    assert v.reused({"auto_register": True, "model": {}}) is True
    assert v.reused({"model": {"beta_chain": 0.0}}) is True and v.reused({"model": {"beta": 1e-10}}) is False


# ------------------------------------------------------------------ the commands

def _hetccl(*args, cwd, timeout=120):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("HETCCL_TUNING_FILE", None)
    return subprocess.run([sys.executable, "-m", "hetccl", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_the_help_examples_run_from_synth_to_a_plot(tmp_path):
    """The three commands of `hetccl simulate --help`: a 16,384-rank mixed-vendor cluster, a plot,
    a what-if; run exactly as printed."""
    help_text = _hetccl("simulate", "--help", cwd=tmp_path).stdout
    block = help_text[help_text.index("three commands"):].split("\n\n")[0]
    cmds = [ln.strip() for ln in block.splitlines()[1:] if ln.strip().startswith("hetccl ")]
    assert len(cmds) == 3 and "ranks=16384" in cmds[0]
    for cmd in cmds:
        p = _hetccl(*shlex.split(cmd)[1:], cwd=tmp_path, timeout=300)
        assert p.returncode == 0, f"{cmd}\n{p.stdout[-2000:]}{p.stderr[-2000:]}"
    assert (tmp_path / "allreduce.png").stat().st_size > 10_000
    assert (tmp_path / "whatif.png").stat().st_size > 10_000
    assert "what-if: A = cluster.json" in p.stdout and "oversub=1" in p.stdout


def test_simulate_json_what_if_and_errors(tmp_path):
    assert _hetccl("topo", "--synth", "hosts=16,accel=4,vendors=cpu:100,nics=2", "-o", "c.json",
                   cwd=tmp_path).returncode == 0
    p = _hetccl("simulate", "--topo", "c.json", "--sizes", "64K,16M", "--what-if", "nics=1", "--json", "-",
                "--explain", "16M", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert [r["size"] for r in doc["sizes"]] == [65536, 16 << 20] and doc["ranks"] == 64
    assert doc["what_if"]["label"] == "nics=1"
    assert doc["what_if"]["sizes"][1]["time_s"] >= doc["sizes"][1]["time_s"]
    forced = _hetccl("simulate", "--topo", "c.json", "--sizes", "1M", "--algo", "allreduce:ring", cwd=tmp_path)
    assert " ring " in forced.stdout and "forced by HETCCL_ALGO" in forced.stdout
    for args, msg in ((["--topo", "missing.json"], "No such file"), (["--topo", "c.json", "-c", "nope"], "unknown collective"),
                      (["--topo", "c.json", "--what-if", "bogus=1"], "unknown key")):
        p = _hetccl("simulate", *args, cwd=tmp_path)
        assert p.returncode == 2 and msg in p.stderr, p.stderr
    (tmp_path / "plain.json").write_text(json.dumps({"format": "hetccl-topology", "version": 2, "ranks": [
        {"rank": r, "host": f"h{r // 2}"} for r in range(4)]}))
    p = _hetccl("simulate", "--topo", "plain.json", "--sizes", "1M", "--what-if", "oversub=3", cwd=tmp_path)
    assert p.returncode == 2 and "not made by `hetccl topo --synth`" in p.stderr


# ------------------------------------------------------------------ the tuning file

def _write_tuning(path, links="c2c", ranks=2, local=2, best=None, **over):
    from hetccl.collectives.probe import build_id
    from hetccl.topology.host import host_id
    entry = {"links": links, "ranks": ranks, "local": local, "placement": "self,c2c",
             "cost": {"alpha": 2e-6, "beta": 1 / 3e9, "gamma": 1 / 9e9}}
    if best:
        entry["collectives"] = {"allreduce": {"sizes": [n for n, _ in best], "best": [a for _, a in best]}}
    from hetccl.collectives.tuning_file import VERSION
    doc = {"format": "hetccl-tuning", "version": VERSION, "hetccl": hetccl.__version__, "build": build_id(),
           "host": host_id(), "entries": [entry]}
    doc.update(over)
    path.write_text(json.dumps(doc))


def _tuned_case(rank, size, sizes):
    comm = hetccl.init(timeout=60)
    m = comm.context.tuner.model
    ran = []
    for n in sizes:
        x = np.ones(n // 4, np.float32)
        comm.allreduce(x)
        ran.append(comm.last_algorithm)
    assert np.all(x == size)
    comm.close()
    return {"origin": m.origin, "alpha": m.cost.alpha, "ran": ran, "best": list(m.best)}


def test_the_communicator_runs_what_the_tuning_file_measured(tmp_path):
    path = tmp_path / "t.json"
    _write_tuning(path, best=[(4096, "rabenseifner"), (1 << 20, "double_binary_tree")])
    res = run_ranks(_tuned_case, 2, [4096, 1 << 20], timeout=120,
                    env={"HETCCL_TUNING_FILE": str(path), "XDG_CACHE_HOME": str(tmp_path)})
    for r in res:
        assert r["origin"] == "tuning file" and r["alpha"] == 2e-6
        assert r["ran"] == ["rabenseifner", "double_binary_tree"]     # measured sizes: the file's pick
        assert res[0]["best"] == res[1]["best"]


@pytest.mark.parametrize("content,why", [
    ("{not json", "unreadable"), (json.dumps({"format": "other"}), "not a hetccl-tuning file"),
    (None, "written by hetccl 0.0.1"), (None, "measured on host"), (None, "version 1;"), (None, "version 2;")])
def test_a_stale_or_corrupt_tuning_file_warns_once_and_is_ignored(tmp_path, content, why, caplog):
    from hetccl.collectives import tuning_file
    path = tmp_path / "t.json"
    if content is not None:
        path.write_text(content)
    elif "written by" in why:
        _write_tuning(path, hetccl="0.0.1")
    elif "version" in why:                      # [alpha, beta(, beta_out)] bridges, one cold call per size
        _write_tuning(path, version=int(why.split()[1].rstrip(";")))
    else:
        _write_tuning(path, host="another-machine")
    tuning_file._warned.clear()
    from hetccl.topology.host import host_id
    with caplog.at_level(logging.WARNING, logger="hetccl.tuning"):
        assert tuning_file.read(str(path), host=host_id()) is None
        assert tuning_file.read(str(path), host=host_id()) is None
    msgs = [r.getMessage() for r in caplog.records if "ignoring the tuning file" in r.getMessage()]
    assert len(msgs) == 1 and why in msgs[0]


@pytest.mark.parametrize("bridges", [
    {"mpi": {"allreduce": [3e-6, 2.4e-10]}},                  # version 1's two fields
    {"mpi": {"allreduce": [3e-6, 2.4e-10, 6e-10]}},           # version 2's line
    {"mpi": {"allreduce": [[8, 3e-6], [1 << 20, "fast"]]}}, {"mpi": {"allreduce": [[8, 3e-6], [1 << 20, -1.0]]}},
    {"mpi": {"allreduce": [[8, 3e-6], [1 << 20, float("nan")]]}}, {"mpi": {"allreduce": []}},
    {"mpi": {"allreduce": [[1 << 20, 3e-4], [8, 3e-6]]}},      # sizes not ascending
    {"mpi": {"allreduce": [[8, 3e-6, 1.0]]}}, {"mpi": [1, 2, 3]}, "mpi"])
def test_malformed_bridge_prices_leave_their_entry_out_with_one_warning(tmp_path, bridges, caplog):
    from hetccl.collectives import tuning_file
    from hetccl.simulate.costs import bridge_prices
    path = tmp_path / "t.json"
    _write_tuning(path)
    doc = json.loads(path.read_text())
    good = dict(doc["entries"][0], ranks=4, bridges={"mpi": {"allreduce": [[8, 3e-6], [1 << 20, 3e-4]]}})
    doc["entries"] = [dict(doc["entries"][0], bridges=bridges), good]
    path.write_text(json.dumps(doc))
    tuning_file._warned.clear()
    with caplog.at_level(logging.WARNING, logger="hetccl.tuning"):
        got = tuning_file.read(str(path))
        tuning_file.read(str(path))
    assert [e["ranks"] for e in got["entries"]] == [4]
    assert sum("malformed" in r.getMessage() for r in caplog.records) == 1
    assert bridge_prices(got) == {"mpi": {"allreduce": ((8, 3e-6), (1 << 20, 3e-4))}}


def test_a_bridge_call_is_priced_through_its_measured_sizes():
    from hetccl.collectives.islands import PROBE_SIZES, bridge_time, legacy_points, price_points
    times = [4e-6, 30e-6, 60e-6, 300e-6, 1.5e-3, 15e-3]        # per byte: rising past 256K and past 4M
    pts = price_points(times)
    assert [n for n, _ in pts] == list(PROBE_SIZES)
    for n, want in zip(PROBE_SIZES, times):
        assert bridge_time(pts, n) == pytest.approx(want)
    assert bridge_time(pts, 0) == pytest.approx(times[0])
    assert bridge_time(pts, (PROBE_SIZES[1] + PROBE_SIZES[2]) // 2) == pytest.approx((times[1] + times[2]) / 2)
    # beyond the largest size the last stretch's rate holds; 64 MiB costs 4x 16 MiB and more
    slope = (times[-1] - times[-2]) / (PROBE_SIZES[-1] - PROBE_SIZES[-2])
    assert bridge_time(pts, 64 << 20) == pytest.approx(times[-1] + slope * (48 << 20))
    # a falling last stretch (noise) is not extrapolated downwards
    assert bridge_time(((8, 1e-5), (1 << 20, 1e-3), (4 << 20, 9e-4)), 64 << 20) == pytest.approx(9e-4)
    # a record's [alpha, beta, beta_out] is priced on its own line
    alpha, beta, beta_out = 4e-6, 2.4e-10, 6e-10
    old = legacy_points(alpha, beta, beta_out)
    for n in (0, 1000, 1 << 20, 5 << 20, 64 << 20):
        want = alpha + beta * min(n, 1 << 20) + beta_out * max(0, n - (1 << 20))
        assert bridge_time(old, n) == pytest.approx(want)


def _garbage_case(rank, size):
    comm = hetccl.init(timeout=60)
    x = np.ones(1000, np.float32)
    comm.allreduce(x)
    origin = comm.context.tuner.model.origin
    comm.close()
    return origin, float(x[0])


def test_a_corrupt_tuning_file_never_stops_a_job(tmp_path):
    path = tmp_path / "t.json"
    path.write_bytes(b"\x00\xff garbage")
    res = run_ranks(_garbage_case, 2, timeout=120, env={"HETCCL_TUNING_FILE": str(path),
                                                        "XDG_CACHE_HOME": str(tmp_path)})
    assert all(o in ("measured", "cached") and v == 2.0 for o, v in res)


def test_hetccl_tune_writes_a_file_the_communicator_and_simulate_read(tmp_path):
    out = tmp_path / "tuning.json"
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, XDG_CACHE_HOME=str(tmp_path))
    env.pop("HETCCL_TUNING_FILE", None)
    p = subprocess.run([sys.executable, "-m", "hetccl", "tune", "-n", "2", "--budget", "4s", "-c", "allreduce",
                        "--sizes", "4K,1M", "-o", str(out), "--quiet"], env=env, capture_output=True, text=True,
                       timeout=240, cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "model choice" in p.stdout and "measured best" in p.stdout and f"wrote {out}" in p.stdout
    doc = json.loads(out.read_text())
    (e,) = doc["entries"]
    assert e["ranks"] == 2 and e["links"] == "c2c" and e["collectives"]["allreduce"]["sizes"] == [4096, 1 << 20]
    assert all(e["collectives"]["allreduce"]["best"])
    from hetccl.simulate.costs import model_for
    topo = topofile.from_dict({"format": "hetccl-topology", "version": 2,
                               "ranks": [{"rank": 0, "host": "a"}, {"rank": 1, "host": "a"}]}, "f")
    model, note, _ = model_for(topo, 0.0, str(out))
    assert model.origin == "tuning file" and model.cost.alpha == e["cost"]["alpha"] and str(out) in note


# ------------------------------------------------------------------ held to a measurement

def _validate():
    from hetccl.simulate import validate
    return validate


def _disagreements(records) -> list[str]:
    v = _validate()
    bad = []
    for name, rec in records.items():
        before = rec.get("recorded_error", {})
        for row in v.compare(name, rec, rec.get("transports")):
            if row["variant"] == "auto" and not row["same"]:
                bad.append(f"{name} {row['size']}: the job ran {row['ran']}, the simulator chose {row['predicted_choice']}")
            if row["size"] < v.JUDGED_FROM:
                continue
            was = before.get(f"{row['size']}/{row['variant']}")
            bound = max(v.TOLERANCE, abs(was) + v.SLACK) if was is not None else v.TOLERANCE
            if row["error"] is None or abs(row["error"]) > bound:
                bad.append(f"{name} {row['size']} {row['variant']}: measured {row['measured_us']:.1f} us, "
                           f"predicted {row['predicted_us']} us (bound {bound:.0%})")
    return bad


def _records():
    with open(DATA) as f:
        return json.load(f)["records"]


needs_record = pytest.mark.skipif(not os.path.exists(DATA), reason="no recorded measurement "
                                  "(bench/validate_sim.py --record tests/data/simulate_recorded.json)")


@needs_record
def test_the_simulator_agrees_with_the_recorded_measurement():
    """Real jobs measured by bench/validate_sim.py (tests/data/simulate_recorded.json: each job's
    topology, load, cost model and measured times). Re-predicted with today's planners, the
    simulator must choose what each job ran, and predict every size >= 64 KiB within 25%, or, at
    a point already outside 25% when recorded (bench/RESULTS.md lists them), no more than 10 points
    worse than then. A change to the planner or the cost formulas that breaks agreement fails here."""
    records = _records()
    assert records
    bad = _disagreements(records)
    assert not bad, "\n".join(bad)


# the timings of a 2-rank loopback TCP probe (us and bytes, as the cache and a record keep them)
_TCP_RAW = {"allreduce_big_bytes": 4194304, "allreduce_big_us": 953.0, "allreduce_bytes": 262144,
            "allreduce_us": 71.9, "barrier_us": 3.7, "copy_big_us": 40.8, "copy_us": 1.8,
            "kernel_big_bytes": 1048576, "kernel_bytes": 65536, "link_share": 1.0, "reduce_big_us": 92.0,
            "reduce_us": 2.7}


@needs_record
def test_a_record_with_the_probe_timings_is_refitted_by_todays_fit():
    """A record that kept its probe's timings is priced with what today's probe.fit makes of them
    (so a change to the fit is judged offline); one without them, or whose model came from a
    cache, keeps its recorded parameters."""
    import copy
    from hetccl.collectives import probe
    v = _validate()
    rec = copy.deepcopy(_records()["local n=2 tcp"])
    rec.pop("probe_raw", None)                    # as a record made before records kept them
    assert v.refit(rec) is None
    big = [r for r in rec["rows"] if r["size"] >= 4 << 20]
    kept = v.predict(rec, "tcp")
    rec["probe_raw"] = dict(_TCP_RAW)
    params = v.refit(rec)
    assert params["alpha"] == pytest.approx(3.7e-6) and params["beta_out"] > 0
    fast = v.predict(rec, "tcp")
    assert fast != kept
    rec["probe_raw"].update(allreduce_big_us=2 * 953.0, allreduce_us=2 * 71.9)   # rings in a slow loop
    slow = v.predict(rec, "tcp")
    for r in big:
        key = (r["size"], r["variant"])
        assert slow[key][0] > 1.6 * fast[key][0]
    assert v.refit(dict(rec, model=dict(rec["model"], origin="cached"))) is None
    assert probe.fit({k[:-3] + "_s" if k.endswith("_us") else k: (x * 1e-6 if k.endswith("_us") else x)
                      for k, x in _TCP_RAW.items()}, 2, cache_bytes=0.0, network=False).alpha == pytest.approx(3.7e-6)


@needs_record
def test_a_planner_change_that_breaks_agreement_is_caught(monkeypatch):
    """The check above can fail: price the ring allreduce 3x dearer and the record disagrees."""
    from hetccl.collectives import allreduce, registry
    slow = [a if a.name != "ring" or a.collective != "allreduce" else
            registry.Algorithm("ring", "allreduce", a.code, lambda n, p, c: 3 * allreduce.ring(n, p, c))
            for a in registry._BY_COLLECTIVE["allreduce"]]
    monkeypatch.setitem(registry._BY_COLLECTIVE, "allreduce", slow)
    bad = _disagreements(_records())
    assert any("simulator chose" in b for b in bad) or any("predicted" in b for b in bad), bad


# ------------------------------------------------------------------ bench --compare

def test_bench_compare_runs_gloo_in_the_same_job_and_says_why_mpi_is_left_out(tmp_path):
    pytest.importorskip("torch")
    png, js = tmp_path / "peers.png", tmp_path / "peers.json"
    p = run_command([sys.executable, "-m", "hetccl", "run", "-n", "2", "--", sys.executable, "-m", "hetccl", "bench",
                     "--compare", "mpi,gloo", "-c", "allreduce", "--sizes", "4K,64K", "--rounds", "2", "--reps", "2",
                     "--min-time", "0.005", "--plot", str(png), "--json", str(js)], timeout=240,
                    env={"HETCCL_TUNING_FILE": None})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = p.stdout
    assert "Open MPI: left out: not started by mpirun" in out
    assert "| size | hetccl time (us) | hetccl busbw (GB/s) | algo | gloo time (us) |" in out
    assert "round 2/2" in out and out.count("round 1/2") == 1          # rank 0 speaks
    doc = json.loads(js.read_text())
    assert doc["libraries"] == ["hetccl", "gloo"] and {c["size"] for c in doc["cells"]} == {4096, 65536}
    assert all(c["wrong"] == 0 for c in doc["cells"]) and png.stat().st_size > 10_000
    bad = run_command([sys.executable, "-m", "hetccl", "run", "-n", "2", "--", sys.executable, "-m", "hetccl", "bench",
                       "--compare", "nccl", "--sizes", "4K"], timeout=120)
    assert bad.returncode != 0 and "unknown peer 'nccl'" in bad.stdout


def test_an_island_step_on_crowded_cores_is_priced_with_its_own_ranks_at_work():
    """4 ranks on 2 CPUs, an MPI island (0,1) and a hetccl island (2,3): the islands' steps are
    summed, so the hetccl island's 2-rank step is priced as its two ranks alone (beta_free), the
    rails' step, in which every rank works, at the all-ranks beta."""
    from hetccl.bridges.formation import HETCCL, Island
    from hetccl.collectives.cost_model import TUNED, CostModel, LinkCost
    from hetccl.collectives.islands import COLLECTIVES, PRICE_FIELDS, IslandPricer
    from hetccl.collectives.tuner import Tuner
    from hetccl import dtypes
    from hetccl.ops import ReduceOp
    isl = [Island("mpi", (0, 1), 0, "job"), Island(HETCCL, (2, 3), 2)]
    mpi = [1e-3] * (PRICE_FIELDS * len(COLLECTIVES))            # 1 ms per MPI step at every size
    flags = [np.ones(4096, bool), None]

    def priced(beta_free):
        cost = LinkCost(2e-6, 4e-10, 2e-11, fifo=True, beta_free=beta_free, share=2.0)
        tuner = Tuner(4, CostModel(cost, TUNED, "test", ("c2c",)))
        return IslandPricer(isl, [mpi, None], flags, False, True, tuner), tuner
    n = 1 << 20
    crowded, tuner = priced(0.0)              # no beta_free measured: every step pays beta
    free, _ = priced(2e-10)
    f32, SUM = dtypes.FLOAT32, ReduceOp.SUM
    assert free._step(1, "reduce_scatter", n, f32, SUM) < crowded._step(1, "reduce_scatter", n, f32, SUM)
    assert free._step(0, "reduce_scatter", n, f32, SUM) == crowded._step(0, "reduce_scatter", n, f32, SUM)
    assert free._hetccl("allreduce", n / 2, 2, busy=4) == crowded._hetccl("allreduce", n / 2, 2, busy=4)
    rails = free.forms("allreduce", n, f32, SUM)["rails"]
    assert rails == pytest.approx(free._steps("reduce_scatter", n, f32, SUM) + free._hetccl("allreduce", n / 2, 2, busy=4)
                                  + free._steps("allgather", n, f32, SUM) + free._call("allreduce", n))
    assert rails < crowded.forms("allreduce", n, f32, SUM)["rails"]


# ------------------------------------------------------------------ how bench/validate_sim.py measures a point

def test_a_point_is_the_median_of_its_batch_medians_and_reports_their_spread():
    v = _validate()
    b = v.batched([10, 11, 12, 30, 31, 32, 10, 12, 11], 3)     # one slow window of three repetitions
    assert b["batches_us"] == [11, 31, 11] and b["time_us"] == 11
    assert b["spread"] == pytest.approx(20 / 11)
    assert v.batched([5, 7], 3)["batches_us"] == [5, 7]          # fewer repetitions than batches
    one = v.batched([3, 1, 2], 1)
    assert one["time_us"] == 2 and one["spread"] == 0
    with pytest.raises(ValueError):
        v.batched([], 3)


def test_a_job_whose_machine_changed_speed_after_its_first_batch_says_so():
    """validate.drift: the median over the judged points of first batch / point (the first batch is
    timed right after the job's probe); small points do not count; rows without batches give
    None; bench/validate_sim.py prints drift_note, when it is off by more than 15%."""
    v = _validate()
    rows = [{"size": 1 << 10, "time_us": 10.0, "batches_us": [1.0, 10.0, 10.0]},
            {"size": 64 << 10, "time_us": 100.0, "batches_us": [60.0, 100.0, 110.0]},
            {"size": 1 << 20, "time_us": 1000.0, "batches_us": [500.0, 1000.0, 1000.0]},
            {"size": 4 << 20, "time_us": 4000.0, "batches_us": [2800.0, 4000.0, 4100.0]}]
    assert v.drift(rows) == pytest.approx(0.6)
    assert v.drift([{"size": 1 << 20, "time_us": 5.0}]) is None
    assert "x0.60" in v.drift_note(rows)
    assert v.drift_note(rows[:1] + [dict(rows[1], batches_us=[95.0, 100.0])]) == ""


def test_a_judged_point_whose_batches_disagree_is_measured_again_and_priced_on_all_of_them():
    """validate.measure: the sweep's rows priced on their batches; the sizes >= 64 KiB whose
    batches disagree by more than REMEASURE (a slow window of the machine, a shaped link's bad
    moment) swept again, alone, and priced on the batches of both sweeps; steady ones and small
    ones not."""
    v = _validate()
    calls = []
    first = {4 << 10: [9, 9, 30, 30, 9, 9], 64 << 10: [10, 10, 10, 10, 10, 10.5],
             256 << 10: [100, 100, 350, 340, 100, 100]}

    def sweep(at):
        calls.append(list(at))
        src = first if len(calls) == 1 else {256 << 10: [101, 99, 100, 102, 98, 100]}
        return [{"size": n, "variant": "auto", "time_us": 0.0, "times_us": src[n], "algo": "ring", "x": 1} for n in at]
    rows = {r["size"]: r for r in v.measure(sweep, sorted(first), batches=3)}
    assert calls == [sorted(first), [256 << 10]]
    big = rows[256 << 10]
    assert big["remeasured"] and len(big["batches_us"]) == 6 and len(big["times_us"]) == 12
    assert big["time_us"] == pytest.approx(100, abs=1.5) and "x" not in big
    assert not rows[64 << 10]["remeasured"] and rows[64 << 10]["time_us"] == 10
    assert not rows[4 << 10]["remeasured"] and rows[4 << 10]["spread"] > v.REMEASURE    # small: reported only
    calls.clear()
    v.measure(sweep, sorted(first), batches=3, remeasure=None)
    assert len(calls) == 1


# ------------------------------------------------------------------ a flat call on a group with islands

@needs_record
def test_a_flat_call_where_some_dtype_composes_carries_the_routers_price():
    """The recorded islands job (MPI island 0,1, hetccl island 2,3; 4 ranks on 2 CPUs, its cost
    model) with MPI steps priced near zero, at 4 MiB: MPI reduces float32 itself (its bridge's own
    table) but not float16, so the composed form is cheaper than the flat ring for one and not for
    the other, the latency path takes no allreduce size
    (IslandPricer.routes_flat), and every flat algorithm the simulator prices carries the router's
    path (flat_call), as the runtime's flat call pays it; with MPI's steps priced dear nothing
    composes and the flat algorithms cost what the tuner says."""
    from hetccl import dtypes
    from hetccl.collectives import registry
    from hetccl.collectives.cost_model import PARAMS, TUNED, CostModel, LinkCost
    from hetccl.collectives.islands import COLLECTIVES, FLAT_ROUTER_CALL, _flag
    from hetccl.ops import ReduceOp
    from hetccl.simulate.group import Group
    with open(DATA) as f:
        rec = next(r for name, r in json.load(f)["records"].items() if name.startswith("islands"))
    topo = topofile.from_dict(rec["topology"], "recorded job")
    cost = LinkCost.from_params({k: rec["model"][k] for k in PARAMS if k in rec["model"]}, fifo=True,
                                share=float(rec["load"]))
    model, n = CostModel(cost, TUNED, "recorded", ("c2c",)), 4 << 20

    def group(seconds):
        prices = {"mpi": {c: ((8, seconds), (16 << 20, seconds)) for c in COLLECTIVES}}
        return Group(topo, model, load=rec["load"], bridge_prices=prices, reused=False)
    cheap, dear = group(1e-9), group(1.0)
    flags = cheap.islands.flags[0]
    ci = COLLECTIVES.index("reduce")
    assert flags[_flag(ci, dtypes.FLOAT32, ReduceOp.SUM)] and not flags[_flag(ci, dtypes.FLOAT16, ReduceOp.SUM)]
    assert flags[_flag(COLLECTIVES.index("allgather"), dtypes.FLOAT16, ReduceOp.SUM)]   # bytes: every dtype
    assert cheap.islands.flags[1] is None                                                 # hetccl's own island
    assert not cheap.islands.routes_flat("allreduce", n)
    share = max(1.0, float(cheap.tuner.cost.share))
    assert cheap.islands.flat_call("allreduce", n) == pytest.approx(FLAT_ROUTER_CALL * share)
    ring = next(a for a in registry.for_collective("allreduce") if a.name == "ring")
    assert cheap.rows("allreduce", n)["ring"] == pytest.approx(cheap.tuner.price(ring, n) + FLAT_ROUTER_CALL * share)
    assert dear.islands.routes_flat("allreduce", n) and dear.islands.flat_call("allreduce", n) == 0.0
    assert dear.rows("allreduce", n)["ring"] == pytest.approx(dear.tuner.price(ring, n))
    assert dear.choice_key("allreduce", n) == dear.tuner.select("allreduce", n).name
