"""The routes of calls on a communicator with islands. Which calls the latency path may take
(IslandPricer.routes_flat, comm.py ``_learn``): a call shape the islands run flat for every dtype
and op, and no other (the pricer alone, with made-up island prices, no processes). The cached
composed route (comm.py ``_island_allreduce``, collectives/island_route.py) under mpirun: a peer
dying in it here; taken, exact and invalidated (a forced flat algorithm, a new cost model, a
revoke) in tests/test_islands.py's mixed job (tests/islands_worker.py ``cached_route``: one
islands job fewer)."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from hetccl import dtypes
from hetccl.bridges.formation import Island
from hetccl.collectives.cost_model import TUNED, CostModel, LinkCost
from hetccl.collectives.decide import decide
from hetccl.collectives.islands import COLLECTIVES, PRICE_FIELDS, IslandPricer, _flag
from hetccl.collectives.tuner import Tuner
from hetccl.ops import ReduceOp
from tests.launcher import run_command
from tests.mpirun_util import WORKER, clean_env, mpirun_or_skip

N = 1 << 20


def pricer(step_s, native=None, islands=None, beta_free=0.0, alpha=2e-6):
    """4 ranks, two bridged islands (0,1) and (2,3) (two MPI jobs); every bridge step costs
    ``step_s``; ``native``: the (dtype, op) pairs the bridges reduce (default all; data movement
    always)."""
    isl = islands or [Island("mpi", (0, 1), 0, "a"), Island("mpi", (2, 3), 2, "b")]
    prices = [[step_s] * (PRICE_FIELDS * len(COLLECTIVES))] * 2
    flags = np.ones(len(COLLECTIVES) * len(dtypes.NAMES) * len(ReduceOp), bool)
    if native is not None:
        flags[:] = False
        for ci, coll in enumerate(COLLECTIVES):
            for dt in range(len(dtypes.NAMES)):
                for op in ReduceOp:
                    if coll in ("allgather", "broadcast") or (dt, op) in native:
                        flags[_flag(ci, dt, op)] = True
    tuner = Tuner(4, CostModel(LinkCost(alpha, 4e-10, 2e-11, fifo=True, share=2.0, beta_free=beta_free), TUNED,
                               "test", ("c2c",)))
    return IslandPricer(isl, prices[:len(isl)], [flags] * len(isl), False, False, tuner)


def test_slow_islands_run_flat_for_every_dtype_and_op():
    p = pricer(1.0)                                   # an MPI step of 1 s: never composed
    assert p.routes_flat("allreduce", N)
    assert p.routes_flat("allreduce", N, "ring")
    assert p.routes_flat("allgather", N) and p.routes_flat("broadcast", N)
    assert not p.routes_flat("allreduce", N, "islands")   # forced through the islands


def test_fast_islands_compose_so_the_router_keeps_the_call():
    p = pricer(1e-9)
    assert decide(p.tuner, None, p, "allreduce", N, None, dtypes.FLOAT32, ReduceOp.SUM)[1] is not None
    assert not p.routes_flat("allreduce", N)
    assert p.routes_flat("allreduce", N, "ring")      # forced flat: the islands never compose it
    assert p.routes_flat("reduce_scatter", N)         # a collective the islands do not compose


def moving(p, seconds):
    """The pricer's bridges' allgather and broadcast cost ``seconds`` a step (their reductions keep
    what ``pricer`` gave them)."""
    row = list(p.prices[0])
    for coll in ("allgather", "broadcast"):
        ci = COLLECTIVES.index(coll)
        row[PRICE_FIELDS * ci:PRICE_FIELDS * (ci + 1)] = [seconds] * PRICE_FIELDS
    p.prices = [row] * len(p.prices)
    return p


def test_one_dtype_that_composes_keeps_every_dtype_of_that_size_on_the_router():
    """The bridges reduce int8 BXOR only (cheaply) and move bytes in 30 us a step: float32 SUM runs
    flat, int8 BXOR composes (1 KiB on links of 40 us a step: float32's composed form pays two
    steps of hetccl's and a bridge step where the flat recursive doubling pays two rounds, more
    than the router's price on the flat call). The latency path keys a shape by its size, not its
    dtype, so the size must stay on the router."""
    p, n = moving(pricer(1e-9, native={(dtypes.INT8, ReduceOp.BXOR)}, alpha=40e-6), 30e-6), 1 << 10
    f32 = decide(p.tuner, None, p, "allreduce", n, None, dtypes.FLOAT32, ReduceOp.SUM)
    i8 = decide(p.tuner, None, p, "allreduce", n, None, dtypes.INT8, ReduceOp.BXOR)
    assert f32[1] is None and i8[1] is not None       # the premise: the choice differs by dtype
    assert not p.routes_flat("allreduce", n)


def test_a_flat_call_the_router_keeps_pays_the_routers_path():
    """Where some dtype composes at a size (routes_flat: no), every flat call of that size pays the
    router's path (flat_call, FLAT_ROUTER_CALL per rank, in turn on crowded CPUs), and the choice for
    the other dtypes weighs it: float32 SUM, whose composed form costs a little more than the flat
    recursive doubling alone, composes once the router's price is on the flat call; where no dtype
    composes (the bridges reduce nothing cheaply), the flat call pays nothing and stays flat."""
    from hetccl.collectives.islands import FLAT_ROUTER_CALL
    f32, SUM, n = dtypes.FLOAT32, ReduceOp.SUM, 1 << 10
    p = moving(pricer(1e-9, native={(dtypes.INT8, ReduceOp.BXOR)}, alpha=40e-6), 2e-6)
    flat = p.tuner.select("allreduce", n)
    composed = min(p.forms("allreduce", n, f32, SUM).values())
    assert p._flat_cost(flat, n) < composed < p._flat_cost(flat, n) + FLAT_ROUTER_CALL   # the premise
    assert not p.routes_flat("allreduce", n)
    assert p.flat_call("allreduce", n) == FLAT_ROUTER_CALL
    assert decide(p.tuner, None, p, "allreduce", n, None, f32, SUM)[1] is not None
    assert decide(p.tuner, None, p, "allreduce", n, "recursive_doubling", f32, SUM)[1] is None   # forced flat
    p._over = True                                        # 2 ranks per CPU (share 2): each pays in turn
    assert p.flat_call("allreduce", n) == 2 * FLAT_ROUTER_CALL
    alone = moving(pricer(1e-9, native=set(), alpha=40e-6), 2e-6)
    assert alone.routes_flat("allreduce", n) and alone.flat_call("allreduce", n) == 0.0
    assert decide(alone.tuner, None, alone, "allreduce", n, None, f32, SUM)[1] is None


def test_a_forced_flat_algorithm_is_not_served_what_the_unforced_call_chose():
    """The tuner picks the ring at 1 MiB and the islands compose it; ``algorithm="ring"`` afterwards
    must run the ring (the choice was cached by shape without whether it was forced)."""
    p = pricer(1e-9)
    f32, SUM = dtypes.FLOAT32, ReduceOp.SUM
    assert p.tuner.select("allreduce", N).name == "ring"
    assert decide(p.tuner, None, p, "allreduce", N, None, f32, SUM)[1] == "rails"
    a, form = decide(p.tuner, None, p, "allreduce", N, "ring", f32, SUM)
    assert (a.name, form) == ("ring", None)


def test_a_whole_island_is_never_taken_by_the_latency_path():
    p = pricer(1.0, islands=[Island("mpi", (0, 1, 2, 3), 0, "job")])
    assert not p.routes_flat("allreduce", N) and not p.routes_flat("reduce_scatter", N)


def test_the_leaders_step_counts_the_bridged_islands_waiting_ranks_as_working():
    """On crowded CPUs (2 ranks per CPU, a step of fewer ranks moves bytes faster) the leaders'
    allreduce across an MPI island and a hetccl island is priced with 3 of the 4 ranks working:
    the MPI island's other rank tests and yields in its broadcast, the hetccl one sleeps."""
    f32, SUM = dtypes.FLOAT32, ReduceOp.SUM
    mixed = pricer(1e-4, islands=[Island("mpi", (0, 1), 0, "a"), Island("hetccl", (2, 3), 2, "b")],
                   beta_free=1e-10)
    both = pricer(1e-4, beta_free=1e-10)                                # two MPI islands
    assert (mixed._leaders_busy(), both._leaders_busy()) == (3, 4)
    for p in (mixed, both):
        steps = p._steps("reduce", N, f32, SUM) + p._steps("broadcast", N, f32, SUM)
        lead = p.forms("allreduce", N, f32, SUM)["leaders"] - steps - p._call("allreduce", N)
        assert abs(lead - p._hetccl("allreduce", N, 2, p._leaders_busy())) < 1e-12
        assert lead > p._hetccl("allreduce", N, 2) * 1.2                 # dearer than with the others idle


def test_an_oversubscribed_composed_call_pays_its_hand_overs_bytes_up_to_the_cache_share(monkeypatch):
    """On crowded CPUs each of a composed call's two hand-overs costs HANDOVER plus HANDOVER_PASS x
    the call's beta per byte, the bytes counted up to a rank's share of its CPU's private cache
    (the next step fetches again what the step looped alone finds in that cache); beyond it the
    price stops growing. Not crowded: the call's own path only. The same price makes the flat
    ring win where the composed form was within it (decide, as the runtime and the simulator)."""
    from hetccl.collectives import islands
    from hetccl.collectives.islands import FLAT_ROUTER_CALL, HANDOVER, HANDOVER_PASS, HANDOVERS, ROUTE_CALL
    f32, SUM = dtypes.FLOAT32, ReduceOp.SUM
    p = pricer(1e-9)
    p._over = True
    private = islands.private_cache()
    share = private / 2.0                                     # two ranks per CPU (pricer's share)
    beta = p.tuner.cost.at(N, "allreduce").beta

    def hand(n):
        return p._call("allreduce", n) - ROUTE_CALL * 2.0
    assert hand(64 << 10) == pytest.approx(HANDOVERS * (HANDOVER + HANDOVER_PASS * (64 << 10)
                                                        * p.tuner.cost.at(64 << 10, "allreduce").beta))
    big = 8 * int(private)
    assert hand(big) == pytest.approx(HANDOVERS * (HANDOVER + HANDOVER_PASS * share
                                                   * p.tuner.cost.at(big, "allreduce").beta))
    assert hand(64 << 10) < hand(int(share))
    p._over = False
    assert p._call("allreduce", N) == ROUTE_CALL
    # bridge steps dear enough that the composed form costs the flat ring plus half the hand-overs'
    # bytes (more than the router's price on the flat call): composed without HANDOVER_PASS, flat
    # with it (each form has four bridge steps: two per island step, summed on crowded CPUs)
    p._over = True
    flat = p._flat_cost(p.tuner.select("allreduce", N), N)
    bytes_part = HANDOVERS * HANDOVER_PASS * min(N, share) * beta
    assert 0.5 * bytes_part > 2 * FLAT_ROUTER_CALL
    d = (flat - min(p.forms("allreduce", N, f32, SUM).values()) + 0.5 * bytes_part) / 4
    p.prices = [[x + d for x in row] for row in p.prices]
    assert min(p.forms("allreduce", N, f32, SUM).values()) == pytest.approx(flat + 0.5 * bytes_part)
    monkeypatch.setattr(islands, "HANDOVER_PASS", 0.0)
    p._cache.clear()
    assert decide(p.tuner, None, p, "allreduce", N, None, f32, SUM)[1] is not None
    monkeypatch.setattr(islands, "HANDOVER_PASS", HANDOVER_PASS)
    p._cache.clear()
    assert decide(p.tuner, None, p, "allreduce", N, None, f32, SUM)[1] is None


# ------------------------------------------------------------------ the cached composed route (mpirun)

def test_peer_dying_during_a_cached_route_call_raises_everywhere():
    """Rank 3 is SIGKILLed (``mpirun --with-ft ulfm`` keeps the others running) while the others
    loop on a cached composed route: each survivor's call raises a hetccl error in seconds
    (communicator timeout 30 s), none hangs or completes."""
    mpirun = mpirun_or_skip()
    p = run_command([mpirun, "-np", "4", "--oversubscribe", "--with-ft", "ulfm", sys.executable, WORKER,
                     "route_dead"], timeout=90, env=clean_env(HETCCL_PEER_TIMEOUT="5"))
    text = p.stdout + p.stderr
    rows = {int(r["rank"]): r for r in (dict(kv.split("=", 1) for kv in ln.split()[1:])
                                         for ln in p.stdout.splitlines() if ln.startswith("RESULT "))}
    assert sorted(rows) == [0, 1, 2], text[-6000:]
    for r in rows.values():
        assert r["outcome"] in ("PeerLostError", "CommAborted", "BridgeError"), (r, text[-6000:])
        assert float(r["took"]) < 20, (r, text[-6000:])
