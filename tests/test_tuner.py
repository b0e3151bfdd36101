"""The tuner and its measured cost model: HETCCL_ALGO parsing and errors, forced choices, the probe's
fit, the per-host cache (missing, corrupt, foreign-build, unwritable), and that every rank of a
communicator ends with rank 0's parameters whatever the caches of the other ranks say.

Multi-rank cases run through tests/launcher.py with XDG_CACHE_HOME in a temporary directory, so the
user's real cache is never read or written.
"""
from __future__ import annotations

import json
import math
import os
import secrets

import numpy as np
import pytest

import hetccl
from hetccl import InvalidUsage
from hetccl.collectives import probe
from hetccl.collectives.cost_model import CACHED, DEFAULT, MEASURED, CostModel, LinkCost
from hetccl.collectives.tuner import Tuner, parse_forced
from tests.launcher import run_ranks


# ------------------------------------------------------------------------------------------------
# HETCCL_ALGO and forced choices (no processes)
# ------------------------------------------------------------------------------------------------
def test_parse_forced_accepts_aliases_and_spaces():
    assert parse_forced(" allreduce : ring ;allgather:rd;; ") == {
        "allreduce": "ring", "allgather": "recursive_doubling"}
    assert parse_forced("") == {} and parse_forced(None) == {}


@pytest.mark.parametrize("spec, message", [
    ("ring", r"entry 'ring' is not 'collective:algorithm' \(e\.g\. 'allreduce:ring;"),
    ("allreduce:", r"entry 'allreduce:' is not 'collective:algorithm'"),
    ("allreduse:ring", r"unknown collective 'allreduse'; known: .*allgather.*allreduce"),
    ("allreduce:bogus", r"allreduce has no algorithm 'bogus'; choose from ring, recursive_doubling"),
    ("allreduce:ring;allreduce:rd", r"forces allreduce twice \(ring and recursive_doubling\)"),
])
def test_parse_forced_errors_say_what_is_wrong(spec, message):
    with pytest.raises(InvalidUsage, match=message):
        parse_forced(spec)


def test_forced_choices_beat_the_model():
    free = Tuner.with_defaults(4, forced_spec="")
    assert free.select("allreduce", 8).name == "recursive_doubling"        # latency-bound
    assert free.select("allreduce", 256 << 20).name == "ring"              # bandwidth-bound
    forced = Tuner.with_defaults(4, forced_spec="allreduce:ring")
    assert forced.select("allreduce", 8).name == "ring"
    assert forced.select("allreduce", 8, algorithm="rd").name == "recursive_doubling"   # call wins
    assert "(forced by HETCCL_ALGO: ring)" in forced.explain("allreduce", 8)
    with pytest.raises(InvalidUsage, match="allreduce has no algorithm 'tree'; choose from ring"):
        forced.select("allreduce", 8, algorithm="tree")


def test_forced_algorithm_that_cannot_run_names_its_source():
    t = Tuner.with_defaults(3, forced_spec="allgather:recursive_doubling")
    with pytest.raises(InvalidUsage, match=r"'recursive_doubling' \(forced by HETCCL_ALGO\) does not "
                                           r"support 3 ranks; choose from ring"):
        t.select("allgather", 1024)
    with pytest.raises(InvalidUsage, match=r"'recursive_doubling' does not support 3 ranks"):
        Tuner.with_defaults(3, forced_spec="").select("allgather", 1024, algorithm="rd")


def test_explain_shows_the_model_and_its_origin():
    text = Tuner.with_defaults(2, forced_spec="").explain("allreduce", 1 << 20)
    assert "cost model: alpha=" in text and "GB/s over shm; default (built-in values)" in text
    assert sum(line.lstrip().startswith("->") for line in text.splitlines()) == 1


def test_choices_lists_the_crossovers():
    t = Tuner.with_defaults(2, forced_spec="")
    steps = t.choices("allreduce", [8 << (2 * i) for i in range(13)])
    assert [name for _, name in steps] == ["recursive_doubling", "ring"]
    assert steps[0][0] == 8 and 8 < steps[1][0] <= 1 << 20


# ------------------------------------------------------------------------------------------------
# The fit (no processes)
# ------------------------------------------------------------------------------------------------
def test_fit_recovers_alpha_beta_gamma():
    p, n = 4, 1 << 20
    alpha, beta, gamma = 2e-6, 1 / 5e9, 1 / 20e9
    raw = {"barrier_s": 2 * alpha,                                  # ceil(log2 4) = 2 rounds
           "allgather_s": (p - 1) * alpha + (p - 1) / p * n * beta,
           "copy_s": n / 10e9, "reduce_s": n / 10e9 + n * gamma,
           "allgather_bytes": n, "kernel_bytes": n}
    c = probe.fit(raw, p)
    assert math.isclose(c.alpha, alpha) and math.isclose(c.beta, beta) and math.isclose(c.gamma, gamma)


def test_fit_never_returns_free_bytes():
    """Noise can make the differences negative; the floors keep every cost positive."""
    raw = {"barrier_s": 1e-3, "allgather_s": 1e-4, "copy_s": 1e-4, "reduce_s": 0.5e-4,
           "allgather_bytes": 1 << 20, "kernel_bytes": 1 << 20}
    c = probe.fit(raw, 2)
    assert c.alpha == 1e-3 and c.beta > 0 and c.gamma > 0
    assert math.isclose(c.beta, 0.1 * 1e-4 / (1 << 19)) and math.isclose(c.gamma, 0.05 * 1e-4 / (1 << 20))


# ------------------------------------------------------------------------------------------------
# The cache file (no processes)
# ------------------------------------------------------------------------------------------------
def _shape(**kw):
    s = {"host": "h1", "links": "shm", "local": 2, "cpus": 2, "version": "9.9+abc"}
    s.update(kw)
    return s


def _entry(alpha=1e-6):
    return {"alpha": alpha, "beta": 1e-10, "gamma": 2e-11, "measured_at": 1.0, "probe_s": 0.05}


def test_cache_round_trip_and_location(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert probe.cache_path() == str(tmp_path / "hetccl" / "cost-model.json")
    assert probe.lookup(_shape()) is None                                   # missing file
    assert probe.store(_shape(), _entry())
    got = probe.lookup(_shape())
    assert got["alpha"] == 1e-6 and got["links"] == "shm" and got["version"] == "9.9+abc"
    assert probe.lookup(_shape(local=4)) is None and probe.lookup(_shape(links="tcp")) is None
    doc = json.loads((tmp_path / "hetccl" / "cost-model.json").read_text())
    assert doc["format"] == probe.FORMAT and list(doc["entries"]) == [probe.cache_key(_shape())]
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert probe.cache_path() == os.path.join(os.path.expanduser("~"), ".cache", "hetccl",
                                              "cost-model.json")


@pytest.mark.parametrize("content", ["{not json", "[]", '{"format": 99, "entries": {}}',
                                     '{"format": 1, "entries": []}', "\x00\x01binary"])
def test_corrupt_cache_is_a_miss_and_is_rewritten(tmp_path, content):
    path = tmp_path / "c.json"
    path.write_text(content)
    assert probe.read_entries(str(path)) == {}
    assert probe.lookup(_shape(), str(path)) is None
    assert probe.store(_shape(), _entry(), str(path))
    assert probe.lookup(_shape(), str(path))["alpha"] == 1e-6


def test_invalid_entries_are_ignored(tmp_path):
    path = tmp_path / "c.json"
    bad = {"a": {"alpha": -1, "beta": 1, "gamma": 1}, "b": {"alpha": "x", "beta": 1, "gamma": 1},
           "c": {"alpha": float("nan"), "beta": 1, "gamma": 1}, "d": {"beta": 1}, "e": 5}
    path.write_text(json.dumps({"format": probe.FORMAT, "entries": bad}))
    assert probe.read_entries(str(path)) == {}


def test_entries_of_other_builds_miss_and_are_kept(tmp_path):
    path = str(tmp_path / "c.json")
    old = _shape(version="0.0.1+old")
    probe.store(old, _entry(5e-6), path)
    assert probe.lookup(_shape(), path) is None                    # same host/links/local, other build
    # a hand-edited entry under the current key but claiming another build is not trusted either
    entries = probe.read_entries(path)
    entries[probe.cache_key(_shape())] = dict(_entry(7e-6), **old)
    with open(path, "w") as f:
        json.dump({"format": probe.FORMAT, "entries": entries}, f)
    assert probe.lookup(_shape(), path) is None
    probe.store(_shape(), _entry(), path)
    left = probe.read_entries(path)
    assert left[probe.cache_key(_shape())]["alpha"] == 1e-6          # the forged entry replaced
    # the other build's own entry stays, and is still found by that build
    assert sorted(left) == sorted([probe.cache_key(_shape()), probe.cache_key(old)])
    assert probe.lookup(old, path)["alpha"] == 5e-6


def test_cache_keeps_the_most_recent_entries(tmp_path, monkeypatch):
    monkeypatch.setattr(probe, "MAX_ENTRIES", 3)
    path = str(tmp_path / "c.json")
    for i in range(5):
        probe.store(_shape(host=f"h{i}"), dict(_entry(), measured_at=float(i)), path)
    assert sorted(e["host"] for e in probe.read_entries(path).values()) == ["h2", "h3", "h4"]


def test_unwritable_cache_is_skipped(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")                                       # a file where the directory should be
    path = str(blocker / "hetccl" / "cost-model.json")
    with caplog.at_level("WARNING", logger="hetccl.tuning"):
        assert probe.store(_shape(), _entry(), path) is False
    assert "could not write the cost-model cache" in caplog.text and "XDG_CACHE_HOME" in caplog.text
    assert probe.lookup(_shape(), path) is None


def test_clear_all_or_by_host_and_rank_count(tmp_path):
    path = str(tmp_path / "c.json")
    for s in (_shape(), _shape(local=4), _shape(host="h2")):
        probe.store(s, _entry(), path)
    assert probe.clear(path, host="h1", local=4) == 1
    assert sorted(e["local"] for e in probe.read_entries(path).values()) == [2, 2]
    assert probe.clear(path) == 2
    assert not os.path.exists(path) and probe.clear(path) == 0


def test_build_id_names_version_and_native_build():
    bid = probe.build_id()
    assert bid.startswith(hetccl.__version__ + "+") and len(bid.split("+")[1]) == 12
    assert probe.build_id() == bid


# ------------------------------------------------------------------------------------------------
# A single rank: nothing to measure
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def one_rank_env(monkeypatch, tmp_path):
    for var in ("HETCCL_RANK", "HETCCL_SIZE", "HETCCL_LOCAL_RANK", "HETCCL_LOCAL_SIZE", "HETCCL_STORE",
                "HETCCL_SECRET", "HETCCL_TRANSPORTS", "HETCCL_ALGO", "HETCCL_DEBUG", "RANK",
                "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HETCCL_JOB_ID", "t" + secrets.token_hex(4))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return monkeypatch


def test_single_rank_uses_the_defaults_and_writes_no_cache(one_rank_env, tmp_path):
    comm = hetccl.init(0, 1, timeout=10)
    try:
        m = comm.context.tuner.model
        assert m.origin == DEFAULT and "single rank" in m.detail
        assert "default (a single rank: no link to measure)" in comm.explain("allreduce", 64)
    finally:
        comm.close()
    assert not (tmp_path / "hetccl").exists()


def test_bad_hetccl_algo_fails_init_with_the_reason(one_rank_env):
    one_rank_env.setenv("HETCCL_ALGO", "allreduce:bogus")
    with pytest.raises(InvalidUsage, match="HETCCL_ALGO: allreduce has no algorithm 'bogus'"):
        hetccl.init(0, 1, timeout=10)


# ------------------------------------------------------------------------------------------------
# Several ranks: probe, cache, agreement
# ------------------------------------------------------------------------------------------------
def _model(comm):
    m = comm.context.tuner.model
    c = m.cost
    return {"origin": m.origin, "cost": (c.alpha, c.beta, c.gamma), "detail": m.detail,
            "links": m.link_classes, "raw": dict(m.raw), "explain": comm.explain("allreduce", 4096)}


def _probe_then_cache_case(rank, size, root):
    import time
    os.environ["XDG_CACHE_HOME"] = root
    t0 = time.monotonic()
    comm = hetccl.init(timeout=60)
    out = {"init_s": time.monotonic() - t0, "first": _model(comm)}
    out["entries"] = probe.read_entries() if rank == 0 else None
    child = comm.dup()                                # same shape: rank 0 finds the new entry
    out["dup"] = _model(child)
    x = np.full(1000, rank + 1.0, dtype=np.float32)
    child.allreduce(x)                                # the tuner works on the cached model
    out["sum"] = float(x[0])
    child.close()
    comm.close()
    return out


def test_probe_measures_once_then_the_cache_serves(tmp_path):
    res = run_ranks(_probe_then_cache_case, 2, str(tmp_path), timeout=120)
    (first,) = res[0]["entries"].values()
    # on a busy machine (other processes took > 25% of the CPUs during the probe) the dup probes
    # again and keeps the lower value of each parameter; on a quiet one it is served from the cache
    again = first["noisy"]
    for r in res:
        assert r["first"]["origin"] == MEASURED, r["first"]
        assert r["dup"]["origin"] == (MEASURED if again else CACHED), (first, r["dup"])
        assert r["sum"] == 3.0
        assert "; measured (probe of" in r["first"]["explain"]
        assert ("; measured (probe of" if again else "; cached (probe of") in r["dup"]["explain"]
    assert res[0]["first"]["cost"] == res[1]["first"]["cost"]
    assert res[0]["dup"]["cost"] == res[1]["dup"]["cost"]
    if again:
        assert all(d <= f for d, f in zip(res[0]["dup"]["cost"], res[0]["first"]["cost"]))
    else:
        assert res[0]["dup"]["cost"] == res[0]["first"]["cost"]
    assert res[0]["first"]["links"] == ("c2c",)   # one host: every pair c2c
    assert 0.0 <= first["other_load"] and first["probes"] == 1
    alpha, beta, gamma = res[0]["first"]["cost"]
    assert 1e-8 < alpha < 1e-2 and 1 / 1e12 < beta < 1 / 1e7 and 1 / 1e13 < gamma < 1 / 1e7
    raw = res[0]["first"]["raw"]
    assert {"barrier_us", "allreduce_us", "allreduce_big_us", "copy_us", "reduce_us", "copy_big_us",
                "reduce_big_us"} <= set(raw)
    entries = probe.read_entries(str(tmp_path / "hetccl" / "cost-model.json"))
    assert len(entries) == 1
    (e,) = entries.values()
    assert (e["links"], e["local"], e["nranks"]) == ("c2c", 2, 2)
    # generous: the probe is built to take ~0.1 s at every first init; 5 s catches a probe that
    # measures far more than it should, not a loaded 2-core machine (its speed is not tested here)
    assert e["probe_s"] < 5.0, f"the probe took {e['probe_s']:.2f} s"
    assert (e["alpha"], e["beta"], e["gamma"]) == res[0]["dup"]["cost"]
    assert e["probes"] == (2 if again else 1)


def _plant(root, alpha, **extra):
    from hetccl.topology.host import host_id
    s = probe.shape(host_id(), ["c2c"], 2)
    assert probe.store(s, {"alpha": alpha, "beta": 2e-10, "gamma": 3e-11, "measured_at": 0.0,
                           "probe_s": 0.01, **extra}, os.path.join(root, "hetccl", "cost-model.json"))


def _agreement_case(rank, size, root):
    phases = {}
    mine = os.path.join(root, f"rank{rank}")
    _plant(mine, (rank + 1) * 1e-6)                  # every rank's own cache disagrees
    os.environ["XDG_CACHE_HOME"] = mine
    comm = hetccl.init(timeout=60)
    phases["planted"] = _model(comm)
    forced = probe.remeasure(comm)                   # hetccl tune's path: probe whatever is cached
    phases["forced"] = (forced.origin, (forced.cost.alpha, forced.cost.beta, forced.cost.gamma),
                        [e["alpha"] for e in probe.read_entries().values()])
    for name, content in (("corrupt", "{not json"),
                          ("foreign", json.dumps({"format": probe.FORMAT, "entries": {
                              "x": {"alpha": 1e-3, "beta": 1, "gamma": 1, "host": "h",
                                    "version": "0.0.0+old"}}}))):
        d = os.path.join(root, f"{name}{rank}")
        os.makedirs(os.path.join(d, "hetccl"))
        with open(os.path.join(d, "hetccl", "cost-model.json"), "w") as f:
            f.write(content)
        os.environ["XDG_CACHE_HOME"] = d
        child = comm.dup()
        phases[name] = _model(child)
        phases[name + "_entries"] = probe.read_entries()
        with open(os.path.join(d, "hetccl", "cost-model.json")) as f:
            phases[name + "_unchanged"] = f.read() == content
        child.close()
    # a noisy entry is probed again (keeping the lowest value of each parameter) until MAX_PROBES
    for name, probes in (("noisy_retry", 1), ("noisy_final", probe.MAX_PROBES)):
        d = os.path.join(root, f"{name}{rank}")
        _plant(d, 1.0, noisy=True, probes=probes, other_load=0.9)     # alpha of one second
        os.environ["XDG_CACHE_HOME"] = d
        child = comm.dup()
        phases[name] = _model(child)
        phases[name + "_entries"] = probe.read_entries()
        child.close()
    blocked = os.path.join(root, f"blocked{rank}")
    with open(blocked, "w"):
        pass
    os.environ["XDG_CACHE_HOME"] = blocked            # $XDG_CACHE_HOME/hetccl cannot be created
    child = comm.dup()
    phases["unwritable"] = _model(child)
    child.close()
    comm.close()
    return phases


def test_every_rank_uses_rank_0s_parameters(tmp_path):
    res = run_ranks(_agreement_case, 2, str(tmp_path), timeout=120)
    r0, r1 = res
    # rank 1's cache said alpha=2 us; rank 0's (1 us) wins everywhere
    assert r0["planted"]["origin"] == r1["planted"]["origin"] == CACHED
    assert r0["planted"]["cost"] == r1["planted"]["cost"] == (1e-6, 2e-10, 3e-11)
    assert r0["forced"][0] == r1["forced"][0] == MEASURED and r0["forced"][1] == r1["forced"][1]
    assert r0["forced"][2] == [r0["forced"][1][0]]          # rank 0's entry replaced, not merged
    assert r1["forced"][2] == [2e-6]                         # rank 1's cache untouched
    for phase in ("corrupt", "foreign", "unwritable"):
        assert r0[phase]["origin"] == r1[phase]["origin"] == MEASURED, phase
        assert r0[phase]["cost"] == r1[phase]["cost"], phase
    # rank 0 rewrote its corrupt file and its foreign one (adding its entry); rank 1 never wrote
    # noisy: re-probed, alpha the new (far lower) measurement, beta/gamma no worse than planted
    retry = r0["noisy_retry"]
    assert retry["origin"] == MEASURED and retry["cost"] == r1["noisy_retry"]["cost"]
    assert retry["cost"][0] < 1.0 and retry["cost"][1] <= 2e-10 and retry["cost"][2] <= 3e-11
    (e,) = r0["noisy_retry_entries"].values()
    assert e["probes"] == 2 and e["alpha"] == retry["cost"][0] and "other_load" in e
    assert "probe of" in retry["detail"]
    final = r0["noisy_final"]
    assert final["origin"] == CACHED and final["cost"] == (1.0, 2e-10, 3e-11)
    assert "other load 90%" in final["detail"] and r1["noisy_final"]["cost"] == final["cost"]
    for phase in ("corrupt", "foreign"):
        mine = [e for e in r0[phase + "_entries"].values() if e["version"] == probe.build_id()]
        assert len(mine) == 1 and mine[0]["alpha"] == r0[phase]["cost"][0]
        assert not r0[phase + "_unchanged"] and r1[phase + "_unchanged"]
    assert set(r0["corrupt_entries"]) < set(r0["foreign_entries"])
    assert r0["foreign_entries"]["x"]["version"] == "0.0.0+old"       # the other build's entry kept


def test_cost_model_describe_names_origin():
    m = CostModel(LinkCost(1e-6, 1e-10, 1e-11), CACHED, "probe of X", ("shm", "tcp"))
    assert m.describe() == ("alpha=1 us, beta=10 GB/s, gamma=100 GB/s over shm+tcp; cached "
                            "(probe of X)")


# ------------------------------------------------------------------------------------------------
# hetccl tune
# ------------------------------------------------------------------------------------------------
def test_tune_show_and_clear(tmp_path, monkeypatch, capsys):
    from hetccl.cli import main
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    probe.store(_shape(version=probe.build_id()), _entry())
    assert main(["tune", "--show"]) == 0
    out = capsys.readouterr().out
    assert f"cost-model cache: {probe.cache_path()} (1 entry; this build is {probe.build_id()})" in out
    assert "shm local=2 cpus=2 host=h1" in out and "alpha=1 us, beta=10 GB/s, gamma=50 GB/s" in out
    assert main(["tune", "--clear"]) == 0
    assert "removed" in capsys.readouterr().out and not os.path.exists(probe.cache_path())
    assert main(["tune", "-n", "1"]) == 2


@pytest.mark.timeout(120)
def test_tune_replaces_this_hosts_entry_with_a_measurement(tmp_path):
    """`hetccl tune --cache-only -n 2` replaces the entry (here a planted, implausible one) with a
    measurement (tests/test_simulate.py covers the tuning file that plain `hetccl tune` writes)."""
    import subprocess
    import sys
    from hetccl.topology.host import host_id
    from tests.launcher import IMPORT_ROOT
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path), PYTHONPATH=IMPORT_ROOT)
    for var in ("HETCCL_TRANSPORTS", "HETCCL_ALGO", "HETCCL_HOST_ID"):
        env.pop(var, None)
    s = probe.shape(host_id(), ["c2c"], 2)
    path = str(tmp_path / "hetccl" / "cost-model.json")
    probe.store(s, _entry(alpha=1.0), path)
    done = subprocess.run([sys.executable, "-m", "hetccl", "tune", "--cache-only", "-n", "2"], env=env,
                          capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 ranks: alpha=" in done.stdout and "measured (probe of" in done.stdout
    assert "allreduce" in done.stdout and " from 8B" in done.stdout
    (e,) = probe.read_entries(path).values()
    assert e["alpha"] < 1.0 and e["probes"] == 1


# ------------------------------------------------------------------------------------------------
# Formula tests: the cost formulas' ordering at the shapes where the tuner once missed. They check
# the formulas, not the machine: no processes, no timing. RUN_MODELS are the cost models the probe
# measured in bench/results/crossover-2026-12-01.txt; the timings quoted in the docstrings are the
# measurements that motivated each formula, recorded in bench/results/, and are not re-made here.
# Whether the choices hold on a machine is bench/crossover.py's check (bench/RESULTS.md).
# ------------------------------------------------------------------------------------------------
RUN_MODELS = {2: LinkCost(0.338e-6, 1 / 7.5e9, 1 / 51.4e9),      # 2 ranks over c2c FIFOs
              3: LinkCost(2.72e-6, 1 / 2.54e9, 1 / 51.9e9),      # 3 ranks on 2 cores
              4: LinkCost(3.1e-6, 1 / 2.03e9, 1 / 33.7e9)}       # 4 ranks on 2 cores


def _prices(collective, n, p, c=None):
    from hetccl.collectives import registry
    c = c or RUN_MODELS[p]
    return {a.name: a.cost(n, p, c) for a in registry.for_collective(collective)
            if a.code >= 0 and a.supports(n, p)}


def _pick(collective, n, p, c=None):
    return Tuner(p, CostModel(c or RUN_MODELS[p], CACHED), forced_spec="").select(collective, n).name


@pytest.mark.parametrize("p", [3, 4])
@pytest.mark.parametrize("n", [32 << 10, 128 << 10, 512 << 10, 2 << 20, 32 << 20])
def test_broadcast_picks_the_pipelined_chain_from_3_ranks(p, n):
    """Formula test: the formulas price the chain below scatter_allgather and binomial at 3-4 ranks
    from 32 KiB (its relays forward chunks as they arrive, ~0.75 beta per byte; a binomial level is
    a one-way transfer: 0.5 beta per byte, log2 p of them). Motivating measurement, not made here:
    the chain was the fastest broadcast there (bench/results/crossover-2026-12-01.txt)."""
    assert _pick("broadcast", n, p) == "chain"


def test_one_way_transfers_cost_one_pass_per_side_over_fifos_and_the_wire_time_over_tcp():
    c, n = RUN_MODELS[2], 64 << 20
    assert _prices("broadcast", n, 2)["binomial"] == pytest.approx(c.alpha + n * c.beta / 2)
    wire = LinkCost(20e-6, 1 / 1.2e8, 1 / 8e9, fifo=False)
    assert _prices("broadcast", n, 2, wire)["binomial"] == pytest.approx(wire.alpha + n * wire.beta)
    # reduce: the parent's pass plus the reduction
    assert _prices("reduce", n, 2)["binomial"] == pytest.approx(c.alpha + n * (c.beta / 2 + c.gamma))


@pytest.mark.parametrize("n", [512 << 10, 2 << 20])
def test_two_rank_ring_allreduce_is_rabenseifners_schedule_for_steps_that_fit_a_fifo(n):
    """Formula test: with 2 ranks both are two exchanges of n/2, so they are priced alike.
    Motivating measurement, not made here: the old formulas charged Rabenseifner 1.5x per byte and
    chose the ring where Rabenseifner measured 1.23x faster (bench/results/crossover-2026-12-01.txt)."""
    t = _prices("allreduce", n, 2)
    assert t["rabenseifner"] == pytest.approx(t["ring"])
    big = _prices("allreduce", 64 << 20, 2)          # from stream_min the ring streams its output
    assert big["ring"] < big["rabenseifner"] / 1.2


def test_exchange_penalty_starts_at_the_engines_streaming_threshold_or_a_full_fifo():
    """Formula test: with steps that fit a FIFO, below stream_min, recursive doubling is priced below
    the ring (fewer steps for the same bytes); from stream_min on, the ring (it streams); the
    thresholds are the engine's, carried by the LinkCost. Motivating measurements, not made here:
    recursive doubling faster at 2 MiB on 4 ranks, the ring 1.4-1.8x faster at 32-128 MiB."""
    assert _pick("allgather", 2 << 20, 4) in ("recursive_doubling", "bruck")
    assert _pick("allgather", 32 << 20, 4) == "ring"
    assert _pick("allgather", 8 << 20, 4) == "ring"                  # a 4 MiB step fills the FIFO
    later = LinkCost(3.1e-6, 1 / 2.03e9, 1 / 33.7e9, stream_min=64 << 20, fifo_bytes=32 << 20)
    assert _pick("allgather", 32 << 20, 4, later) in ("recursive_doubling", "bruck")
    assert _pick("allgather", 8 << 20, 4, later) in ("recursive_doubling", "bruck")


def test_fused_ring_reduce_scatter_counts_one_pass_per_input_byte():
    n = 64 << 20
    c = RUN_MODELS[4]
    t = _prices("reduce_scatter", n, 4)
    assert t["ring"] == pytest.approx(3 * c.alpha + n * c.beta / 2 + 0.75 * n * c.gamma)
    assert _pick("reduce_scatter", n, 4) == "ring"
    wire = LinkCost(20e-6, 1 / 1.2e8, 1 / 8e9, fifo=False)         # no fusion over a socket
    assert _prices("reduce_scatter", n, 4, wire)["ring"] == pytest.approx(
        3 * wire.alpha + 0.75 * n * (wire.beta + wire.gamma))


def test_allreduce_crossovers_at_4_ranks_follow_the_passes():
    """Formula test: over FIFOs the ring's fused reduce-scatter (1 pass per byte) is priced below
    Rabenseifner's halving (1.5 passes at 4 ranks): ring for large messages, recursive doubling
    for small ones. Motivating measurement, not made here: the ring 1.3x faster at 8-32 MiB."""
    assert _pick("allreduce", 8, 4) == "recursive_doubling"
    assert _pick("allreduce", 2 << 20, 4) == "ring"
    assert _pick("allreduce", 8 << 20, 4) == "ring"
    t = _prices("allreduce", 2 << 20, 4)                # 1.5 against 1.25 beta per byte
    assert t["rabenseifner"] / t["ring"] == pytest.approx(1.2, rel=0.05)


def test_probe_prices_the_network_link_not_one_stream_of_its_ring():
    """The probe's ring in rank order put k of its streams on one host link (round-robin placement:
    2); the cached beta is the link's, whatever the placement of the job that measured it."""
    p, n = 4, 1 << 20
    alpha, link_beta = 40e-6, 1 / 1.2e8
    raw = {"barrier_s": 2 * alpha, "allgather_s": (p - 1) * alpha + (p - 1) / p * n * 2 * link_beta,
           "copy_s": n / 10e9, "reduce_s": 2 * n / 10e9, "allgather_bytes": n, "kernel_bytes": n,
           "link_share": 2.0}
    assert probe.fit(raw, p).beta == pytest.approx(link_beta)
    assert probe.fit(dict(raw, link_share=1.0), p).beta == pytest.approx(2 * link_beta)


class _PlannerComm:
    """What Planner reads of a communicator's Context: its rank and the flat tuner with the
    measured model."""
    rank = 0

    def __init__(self, cost):
        self.tuner = Tuner(4, CostModel(cost, MEASURED, "", ("c2c", "tcp")), forced_spec="")


def _netns_planner(round_robin):
    from hetccl.collectives.hierarchical import Planner
    from hetccl.topology import topofile
    ranks = [{"rank": r, "host": f"h{r % 2 if round_robin else r // 2}"} for r in range(4)]
    topo = topofile.from_dict({"format": "hetccl-topology", "version": 1, "ranks": ranks,
                               "links": [{"a": f"host:h{h}", "b": "net", "class": "tcp"} for h in (0, 1)]})
    # bench/netns_bench.py's model (2 hosts x 2 ranks, 1 Gbit/s tbf links), beta per link
    comm = _PlannerComm(LinkCost(43.3e-6, 1 / 0.131e9, 1 / 49.2e9, fifo=False))
    return Planner(comm, topo, 2.0), comm


@pytest.mark.parametrize("round_robin", [True, False])
def test_planner_weighs_every_flat_algorithm_against_the_composed_ones(round_robin):
    """At 32 KiB the flat tuner's own pick (priced without the topology) is not the best flat
    algorithm once the shared host links are counted; the planner re-prices all of them."""
    from hetccl.collectives import registry
    pl, comm = _netns_planner(round_robin)
    n = 32 << 10
    flat = comm.tuner.select("allreduce", n)
    got = pl.choose("allreduce", n, flat, False)
    flats = {a.name: pl._flat_cost(a, n) for a in registry.for_collective("allreduce") if a.code >= 0}
    composed = pl.composed_cost("allreduce", -1, n)
    best = min(list(flats.values()) + [composed])
    assert (pl._flat_cost(got, n) if got.code >= 0 else composed) == best
    assert pl.choose("allreduce", 16 << 20, flat, False).name == "hierarchical"


def test_two_rank_allgather_takes_the_whole_block_exchange_below_the_streaming_threshold():
    """Formula test: at 2 ranks recursive doubling and Bruck copy their own half and swap the other
    in one exchange; the ring copies its own block inside a sliced send; the formulas price them
    so. Motivating measurements (four interleaved 2-rank sweeps), not made here: equal at 512 KiB,
    the exchange 1.2-1.5x faster at 8 MiB (where the old formulas charged it for a step of a whole
    FIFO and chose the ring), the ring 1.5x faster from the engine's streaming threshold on."""
    c = RUN_MODELS[2]
    assert _pick("allgather", 512 << 10, 2) == "ring"                  # one slice: a tie, the ring
    for n in (2 << 20, 8 << 20):
        assert _pick("allgather", n, 2) == "recursive_doubling"
        t = _prices("allgather", n, 2)
        assert t["bruck"] == pytest.approx(t["recursive_doubling"])
        assert t["ring"] == pytest.approx(c.alpha + n / 2 * 1.2 * c.beta)
    assert _pick("allgather", 32 << 20, 2) == "ring"
    assert _pick("allgather", 8 << 20, 4) == "ring"                    # 4 ranks: unchanged


def test_two_rank_alltoall_schedules_are_one_and_priced_as_recursive_doublings_allgather():
    """Formula test: at 2 ranks Bruck's alltoall is pairwise (the one block lands in the output),
    and both are recursive doubling's allgather schedule: one price for all three; from
    stream_min on the exchange lands in memory."""
    c = RUN_MODELS[2]
    for n in (64, 8 << 20, 128 << 20):
        t = _prices("alltoall", n, 2)
        assert t["bruck"] == t["pairwise"] == pytest.approx(_prices("allgather", n, 2)["recursive_doubling"])
        assert _pick("alltoall", n, 2) == "pairwise"
    assert _prices("alltoall", 128 << 20, 2)["pairwise"] == pytest.approx(c.alpha + (64 << 20) * 1.5 * c.beta)
    # from 3 ranks the pairwise window overlaps up to four exchanges' latencies: Bruck's
    # log2(p) rounds pay off only where p-1 exchanges take more windows than that
    assert _pick("alltoall", 64, 4) == "pairwise" and _pick("alltoall", 1 << 20, 4) == "pairwise"
    assert _pick("alltoall", 64, 64, RUN_MODELS[4]) == "bruck"


# ------------------------------------------------------------------------------------------------
# The probe's statistic, stale entries and a stalled peer
# ------------------------------------------------------------------------------------------------

def test_probe_keeps_the_median_repetition_of_the_slowest_rank(monkeypatch):
    """A loop of calls pays the typical call: one lucky repetition (the 2-rank loopback TCP job's
    fastest ran at 1/0.6 of its others) must not set the price, nor one busy repetition."""
    script = iter([1.0, 0.6, 1.0, 1.1, 1.0, 5.0, 0.9, 1.0, 1.0] * 2)   # seconds per rep, per fn
    monkeypatch.setattr(probe, "_calls_per_rep", lambda engine, fn, timeout, rep_s: 1)
    monkeypatch.setattr(probe, "_batch", lambda fn, iters: next(script))
    monkeypatch.setattr(probe.schedules, "barrier", lambda *a: None)
    # the other rank was slower in the third repetition only: the slowest rank's time counts
    monkeypatch.setattr(probe, "_max_over_ranks",
                        lambda engine, v, timeout: np.where(np.arange(v.size) // 2 == 2, 3.0, v))
    got = probe.time_per_call(None, {"a": None, "b": None}, 1.0, reps=9)
    assert got == {"a": pytest.approx(1.0), "b": pytest.approx(1.0)}


def test_a_loopback_wire_times_its_rings_in_long_loops(monkeypatch):
    """Over loopback TCP a ring allreduce runs about half as fast in a loop of calls lasting tens of
    milliseconds as in the one call after a barrier that a short repetition holds: there each
    repetition of the rings lasts LOOPBACK_REP_S; FIFO rings and network links keep REP_S, and
    the kernels keep REP_S everywhere."""
    assert probe.ring_rep_s(("tcp",), network=False) == probe.LOOPBACK_REP_S
    assert probe.ring_rep_s(("c2c", "tcp"), network=False) == probe.LOOPBACK_REP_S
    assert probe.ring_rep_s(("c2c", "tcp"), network=True) == probe.REP_S
    assert probe.ring_rep_s(("c2c",), network=False) == probe.RING_LOOP_S     # FIFOs: loops too
    assert probe.ring_rep_s(("shm",), network=False) == probe.RING_LOOP_S
    asked = {}

    def calls(engine, fn, timeout, rep_s):
        asked[fn] = rep_s
        return 1
    monkeypatch.setattr(probe, "_calls_per_rep", calls)
    monkeypatch.setattr(probe, "_batch", lambda fn, iters: 1.0)
    monkeypatch.setattr(probe.schedules, "barrier", lambda *a: None)
    monkeypatch.setattr(probe, "_max_over_ranks", lambda engine, v, timeout: v)
    ring, kernel = object(), object()
    probe.time_per_call(None, {"ring": ring, "kernel": kernel}, 1.0, reps=3, rep_s={"ring": 0.02})
    assert asked == {ring: 0.02, kernel: probe.REP_S}


def test_the_probe_times_what_each_link_kind_runs(monkeypatch):
    """negotiate's measure: a loopback wire times Rabenseifner's exchange rounds beside its rings,
    in the rings' long loops; over a network link the barrier (alpha) runs in loops of
    NETWORK_BARRIER_REP_S: in a repetition of REP_S it ran once, right after the synchronising
    barrier, and read 838 us where the job's steps cost 30-95 us (4 hosts x 2 ranks, netns)."""
    asked = {}

    def fake(engine, fns, timeout, reps=probe.REPS, rep_s=None, min_calls=None):
        asked.update(names=set(fns), rep_s=dict(rep_s), min_calls=dict(min_calls or {}))
        asked.setdefault("reps", {}).update(dict.fromkeys(fns, reps))
        return {k: 1e-3 for k in fns}
    monkeypatch.setattr(probe, "time_per_call", fake)
    monkeypatch.setattr(probe, "_ring_link_share", lambda engine, size, timeout: 1.0)
    raw = probe.measure(None, 4, 1.0, 1 << 20, probe.LOOPBACK_REP_S, exchange=True)
    assert {"exchange_s", "exchange_big_s"} <= asked["names"] and {"exchange_s", "exchange_big_s"} <= set(raw)
    assert asked["rep_s"]["exchange_big_s"] == asked["rep_s"]["allreduce_big_s"] == probe.LOOPBACK_REP_S
    assert asked["rep_s"]["barrier_s"] == probe.REP_S
    probe.measure(None, 4, 1.0, 1 << 20, probe.RING_LOOP_S, out_of_place=True, ring_reps=probe.LOOP_REPS)
    assert asked["reps"]["allreduce_big_s"] == asked["reps"]["allreduce_s"] == probe.LOOP_REPS
    assert asked["reps"]["copy_s"] == probe.REPS
    probe.measure(None, 4, 1.0, 1 << 20, probe.REP_S, barrier_rep_s=probe.NETWORK_BARRIER_REP_S)
    assert "exchange_s" not in asked["names"] and asked["rep_s"]["barrier_s"] == probe.NETWORK_BARRIER_REP_S
    # FIFOs on crowded CPUs: the rings and broadcasts hold MIN_CALLS per repetition, nothing else
    probe.measure(None, 4, 1.0, 1 << 20, probe.REP_S, crowded=True, min_calls=probe.MIN_CALLS)
    assert asked["min_calls"] == dict.fromkeys(("allreduce_s", "allreduce_big_s", "bcast_s", "bcast_big_s",
                                                "chain_s", "chain_big_s"), probe.MIN_CALLS)


def test_crowded_fifos_probe_their_in_cache_ring_in_the_cache_per_cpu(monkeypatch):
    """With k ranks per CPU the ring that prices beta in cache shrinks with them (their working
    sets share the CPU's cache: cost_model.LinkCost.ranks_per_cache); the broadcast that prices
    beta_free stays at FREE_SIZES[0]; a wire keeps PROBE_BYTES (its knee is its own)."""
    from hetccl.collectives.cost_model import FREE_SIZES
    assert [probe.in_cache_ring_bytes(s) >> 10 for s in (1, 1.5, 2, 3, 4)] == [256, 256, 128, 128, 64]
    assert probe.measure_options(("c2c",), False, 4.0)["small_bytes"] == 64 << 10
    assert probe.measure_options(("tcp",), False, 4.0)["small_bytes"] == probe.PROBE_BYTES
    monkeypatch.setattr(probe, "time_per_call", lambda engine, fns, timeout, **kw: {k: 1e-3 for k in fns})
    monkeypatch.setattr(probe, "_ring_link_share", lambda engine, size, timeout: 1.0)
    raw = probe.measure(None, 8, 1.0, 2 << 20, probe.REP_S, crowded=True, small_bytes=64 << 10)
    assert raw["allreduce_bytes"] == 64 << 10 and raw["bcast_bytes"] == FREE_SIZES[0]


def test_on_one_host_each_ring_is_timed_by_itself(monkeypatch):
    """Among the other quantities' repetitions the in-cache ring read 1.07-1.44x a job's loop of
    the same call, by itself 0.83-1.08x (bench/probe_groups_ab.py), and the 2-rank c2c probe's
    4 MiB ring 2.2x: on one host (rings out of place) each ring's repetitions run apart, the
    in-cache one first, before the others', which still interleave; over a network link both
    rings make one slope and stay together."""
    groups = []

    def fake(engine, fns, timeout, **kw):
        groups.append((list(fns), sorted(kw.get("warm", ()))))
        return {k: 1e-3 for k in fns}
    monkeypatch.setattr(probe, "time_per_call", fake)
    monkeypatch.setattr(probe, "_ring_link_share", lambda engine, size, timeout: 1.0)
    raw = probe.measure(None, 4, 1.0, 2 << 20, probe.REP_S, crowded=True, out_of_place=True, warm=True,
                        min_calls=probe.MIN_CALLS)
    assert groups[0] == (["allreduce_s"], ["allreduce_s"]) and len(groups) == 3
    assert groups[1] == (["allreduce_big_s"], [])
    assert not {"allreduce_s", "allreduce_big_s"} & set(groups[2][0]) and {"bcast_s", "barrier_s"} <= set(groups[2][0])
    assert groups[2][1] == ["bcast_s", "chain_s"] and {"allreduce_s", "allreduce_big_s", "bcast_s", "chain_s"} <= set(raw)
    groups.clear()
    probe.measure(None, 4, 1.0, 1 << 20, probe.REP_S, out_of_place=False)      # a network probe
    assert len(groups) == 1 and {"allreduce_s", "allreduce_big_s"} <= set(groups[0][0])


def test_the_probes_buffers_are_written_not_the_zero_page():
    """np.zeros maps the kernel's shared zero page until written: a ring reading such an input read
    one cached page (8 ranks over loopback TCP, 4 MiB: 1.30x faster than on written memory). The
    probe's buffers take their pages when made."""
    def resident():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    n = 64 << 20
    before = resident()
    lazy = np.zeros(n // 4, np.float32)
    assert resident() - before < n // 2 and not lazy.any()
    before = resident()
    buf = probe._written_zeros(n // 4)
    assert resident() - before > 0.9 * n and buf.dtype == np.float32 and not buf.any()


def test_a_repetition_holds_its_minimum_of_calls(monkeypatch):
    """A ring lasting longer than a repetition of REP_S ran once per repetition, right after the
    barrier, 1.1-1.4x what a loop of it pays over FIFOs: min_calls raises the count, never lowers it."""
    asked = {}

    def batch(fn, iters):
        asked[fn] = iters
        return 1.0
    monkeypatch.setattr(probe, "_calls_per_rep", lambda engine, fn, timeout, rep_s: 1 if fn == "ring" else 50)
    monkeypatch.setattr(probe, "_batch", batch)
    monkeypatch.setattr(probe.schedules, "barrier", lambda *a: None)
    monkeypatch.setattr(probe, "_max_over_ranks", lambda engine, v, timeout: v)
    probe.time_per_call(None, {"ring": "ring", "kernel": "kernel", "bcast": "bcast"}, 1.0, reps=3,
                        min_calls={"ring": 4, "bcast": 4})
    assert asked == {"ring": 4, "kernel": 50, "bcast": 50}


def test_the_in_cache_ring_and_broadcast_are_warmed_before_each_repetition(monkeypatch):
    """Over FIFOs the probe's in-cache ring and broadcast make one untimed call before each
    repetition's barrier (their repetitions follow the big ring, broadcast and kernels, and hold
    only MIN_CALLS calls: cold, the 256 KiB ring ran 1.25-1.3x the sweep's loops at 3 and 4
    ranks and priced the ring at 32 KiB on 4 ranks where Rabenseifner was 1.22x faster); the
    out-of-cache quantities and the kernels are not warmed, and without *warm* nothing is."""
    calls = []
    monkeypatch.setattr(probe, "_calls_per_rep", lambda engine, fn, timeout, rep_s: 2)
    monkeypatch.setattr(probe, "_batch", lambda fn, iters: (calls.append(("timed", fn)), 1.0)[1])
    monkeypatch.setattr(probe.schedules, "barrier", lambda *a: calls.append(("barrier", None)))
    monkeypatch.setattr(probe, "_max_over_ranks", lambda engine, v, timeout: v)
    fns = {k: (lambda k=k: calls.append(("warm", k))) for k in ("allreduce_s", "allreduce_big_s", "copy_s")}
    probe.time_per_call(None, fns, 1.0, reps=3, **probe.warm_first(fns, True))
    warm = [k for what, k in calls if what == "warm"]
    assert warm == ["allreduce_s"] * 3
    assert calls[calls.index(("warm", "allreduce_s")) + 1] == ("barrier", None)     # then the barrier
    calls.clear()
    probe.time_per_call(None, fns, 1.0, reps=3, **probe.warm_first(fns, False))
    assert not [c for c in calls if c[0] == "warm"]
    asked = {}

    def fake(engine, fns, timeout, reps=probe.REPS, rep_s=None, min_calls=None, warm=frozenset()):
        asked.update(warm=warm)
        return {k: 1e-3 for k in fns}
    monkeypatch.setattr(probe, "time_per_call", fake)
    monkeypatch.setattr(probe, "_ring_link_share", lambda engine, size, timeout: 1.0)
    probe.measure(None, 4, 1.0, 1 << 20, probe.REP_S, crowded=True, warm=True)
    assert asked["warm"] == {"allreduce_s", "bcast_s", "chain_s"}
    probe.measure(None, 4, 1.0, 1 << 20, probe.REP_S, warm=True)
    assert asked["warm"] == {"allreduce_s"}


def test_one_host_rings_write_a_separate_output(monkeypatch):
    """Out of place on one host (the working set the model prices: input, output, FIFO): the
    rings' and exchanges' output is not their input; over a network link (the slope between two
    rings) they stay in place."""
    seen = {}

    def allreduce(engine, send, recv, dtype, op, algo, timeout):
        seen.setdefault((algo, send.nbytes), set()).add(send is recv)

    def fake(engine, fns, timeout, reps=probe.REPS, rep_s=None, min_calls=None):
        for k, fn in fns.items():
            if k.startswith(("allreduce", "exchange")):
                fn()
        return {k: 1e-3 for k in fns}
    monkeypatch.setattr(probe.schedules, "allreduce", allreduce)
    monkeypatch.setattr(probe, "time_per_call", fake)
    monkeypatch.setattr(probe, "_ring_link_share", lambda engine, size, timeout: 1.0)
    probe.measure(None, 4, 1.0, 1 << 20, probe.LOOPBACK_REP_S, exchange=True, out_of_place=True)
    assert len(seen) == 4 and all(v == {False} for v in seen.values()), seen
    seen.clear()
    probe.measure(None, 4, 1.0, 1 << 20, probe.REP_S)
    assert len(seen) == 2 and all(v == {True} for v in seen.values()), seen


@pytest.mark.parametrize("content", [json.dumps({"format": probe.FORMAT - 1, "entries": {"k": {}}}),
                                     "{not json", "\x00\x01binary"])
def test_an_old_format_or_corrupt_cache_is_measured_again_with_one_warning(tmp_path, caplog, content):
    """A cache of the previous format (its cut read from sysfs, not measured: format 14) or a
    corrupt one: the lookup misses with one warning, and the store after the probe rewrites the
    file in this format without another."""
    path = tmp_path / "c.json"
    if content.startswith('{"format"'):
        content = json.dumps({"format": probe.FORMAT - 1, "entries": {probe.cache_key(_shape()): _entry()}})
    path.write_text(content)
    with caplog.at_level("INFO", logger="hetccl.tuning"):
        assert probe.lookup(_shape(), str(path)) is None
        assert probe.store(_shape(), _entry(2e-6), str(path))
    said = [r for r in caplog.records if "ignoring the cost-model cache" in r.getMessage()]
    assert len(said) == 1 and said[0].levelname == "WARNING"
    assert json.loads(path.read_text())["format"] == probe.FORMAT
    assert probe.lookup(_shape(), str(path))["alpha"] == 2e-6


def _stalled_probe_case(rank, size, root):
    import time as _time
    os.environ["XDG_CACHE_HOME"] = root
    real, began = probe.measure, []

    def timed(*a, **k):                              # rank 1 stalls inside the probe
        began.append(_time.monotonic())
        if rank == 1:
            _time.sleep(14.0)
        return real(*a, **k)
    probe.measure = timed
    try:
        hetccl.init(timeout=2)
    except hetccl.HetcclError as e:
        return {"error": type(e).__name__, "message": str(e), "secs": _time.monotonic() - began[0]}
    return {"error": None, "secs": _time.monotonic() - began[0]}


def test_a_peer_stalling_in_the_probe_fails_init_within_the_timeout_and_caches_nothing(tmp_path):
    res = run_ranks(_stalled_probe_case, 2, str(tmp_path), timeout=60)
    # rank 0's probe gives up on its 2 s deadline and names the silent rank; serving the store
    # for the silent rank's client then takes at most one more timeout (it took 10 s, whatever
    # the timeout, while the silent rank kept its connection open)
    assert res[0]["error"] == "HetcclTimeout" and "after 2 s waiting for rank 1" in res[0]["message"], res[0]
    assert res[0]["secs"] < 9.0, res[0]
    assert res[1]["error"] is not None, res[1]               # the waker finds its peer gone
    assert probe.read_entries(str(tmp_path / "hetccl" / "cost-model.json")) == {}


def test_each_link_kind_is_timed_as_its_jobs_run():
    """negotiate's options for measure: FIFOs out of place with MIN_CALLS per repetition (and the
    broadcasts only on crowded CPUs); a loopback wire out of place, in its long loops, with its
    exchange rounds; a network link in place (the slope between two rings), its barrier in loops."""
    fifo = probe.measure_options(("c2c",), network=False, share=4.0)
    assert fifo == {"ring_rep_s": probe.RING_LOOP_S, "ring_reps": probe.LOOP_REPS, "crowded": True, "exchange": False,
                    "barrier_rep_s": probe.REP_S, "out_of_place": True, "min_calls": probe.MIN_CALLS, "warm": True,
                    "small_bytes": 64 << 10}
    assert not probe.measure_options(("shm",), network=False, share=1.0)["crowded"]
    loop = probe.measure_options(("tcp",), network=False, share=2.0)
    assert (loop["ring_rep_s"], loop["exchange"], loop["out_of_place"], loop["min_calls"], loop["warm"]) == (
        probe.LOOPBACK_REP_S, True, True, 1, False)
    net = probe.measure_options(("c2c", "tcp"), network=True, share=1.0)
    assert (net["barrier_rep_s"], net["exchange"], net["out_of_place"], net["min_calls"], net["warm"]) == (
        probe.NETWORK_BARRIER_REP_S, False, False, 1, False)
    assert (net["ring_rep_s"], net["ring_reps"]) == (probe.REP_S, probe.REPS)
