"""The single copy as a priced entry of the tuner (collectives/single_copy_probe.py ``prices``,
tuner.py ``_measured_prices``): the probe's per-call times of the FIFO algorithms it ran and of the
single copy are put on the model's scale, the single copy is judged against the fastest FIFO path,
the prices survive the cache and the agreement broadcast, and a peer that dies or stalls in the
probe's timed chain broadcast fails every rank's init."""
import os
import time

import pytest

from hetccl.collectives import registry
from hetccl.collectives import single_copy_probe as p
from hetccl.collectives.cost_model import CostModel, LinkCost
from hetccl.collectives.tuner import Tuner
from tests.launcher import run_ranks_expect_failure

K = 1 << 10


def _tuner(p_ranks, verdicts, prices):
    cost = LinkCost(alpha=2e-6, beta=4e-10, gamma=1e-11)
    sc = tuple(verdicts.items()) + tuple((p.PRICES + c, rows) for c, rows in prices.items())
    return Tuner(p_ranks, CostModel(cost, "measured", single_copy=sc), forced_spec="")


def _rows(single, chain, binomial=10e-6):
    """Broadcast prices at every SIZES: the tuner's choice (binomial) first, as the probe stores them."""
    return tuple((s, (("binomial", binomial), ("chain", chain), ("single", single))) for s in p.SIZES)


def test_measured_algorithms_priced_on_the_models_scale():
    t = _tuner(4, {"broadcast": tuple((s, False) for s in p.SIZES)}, {"broadcast": _rows(30e-6, 5e-6)})
    model = Tuner(4, CostModel(t.cost, "measured"), forced_spec="")
    for n in (2 * K, 32 * K, 512 * K, 256 << 20):
        priced, plain = dict(t.table("broadcast", n)), dict(model.table("broadcast", n))
        by = {a.name: a for a in priced}
        b, c, s = by["binomial"], by["chain"], by["scatter_allgather"]
        assert priced[b] == pytest.approx(plain[b])                 # the anchor keeps the model's price
        assert priced[c] == pytest.approx(plain[b] / 2)             # measured: half the anchor's time
        assert priced[s] == pytest.approx(plain[s])                 # not measured: the model's
        assert t.select("broadcast", n).name == "chain" and t.price(c, n) == pytest.approx(priced[c])
        assert t.single_copy_price("broadcast", n) == pytest.approx(3 * plain[b])
    assert dict(t.table("broadcast", 1 * K)) == dict(model.table("broadcast", 1 * K))   # below: model
    assert t.single_copy_price("broadcast", 1 * K) is None


def test_single_copy_taken_only_where_priced_below_every_fifo_algorithm():
    won = {"broadcast": tuple((s, True) for s in p.SIZES)}
    cheap = _tuner(4, won, {"broadcast": _rows(single=4e-6, chain=5e-6)})
    dear = _tuner(4, won, {"broadcast": _rows(single=6e-6, chain=5e-6)})     # the chain beats it
    unpriced = _tuner(4, {"broadcast": ((8 * K, True),)}, {})               # HETCCL_C2C_DIRECT=size
    for n in (8 * K, 1 << 20):
        assert cheap.single_copy("broadcast", n) and not dear.single_copy("broadcast", n)
        assert unpriced.single_copy("broadcast", n) and unpriced.single_copy_price("broadcast", n) is None
    assert not cheap.single_copy("broadcast", 1 * K)                        # below the smallest size
    assert "single_copy" in cheap.explain("broadcast", 8 * K)


def test_model_set_later_forgets_choices():
    t = _tuner(4, {}, {})
    first = t.select("broadcast", 32 * K).name
    other = "chain" if first != "chain" else "binomial"
    t.model = _tuner(4, {}, {"broadcast": tuple(
        (s, ((first, 10e-6), (other, 1e-6), ("single", 50e-6))) for s in p.SIZES)}).model
    assert t.select("broadcast", 32 * K).name == other


def test_single_copy_judged_against_the_fastest_fifo_path():
    tree, chain = [10.0] * 7, [5.0] * 7
    times = {"fifo": tree, "fifo:chain": chain, "single": [6.0] * 7}
    assert p.fifo_best(times) == "fifo:chain"
    assert p.choose(times) == (False, None)                     # beats the tree, not the chain
    assert p.choose({"fifo": tree, "fifo:chain": chain, "single": [3.0] * 7}) == (True, None)
    assert not p.undecided(times)
    noisy = {"fifo": [10.0] * 7, "fifo:chain": [9.6, 10.4] * 3 + [9.6], "single": [20.0] * 7}
    assert p.fifo_best(noisy) == "fifo"                         # a near tie: the model's choice stands
    assert p.prices([(8 << 10, noisy)], {}, "broadcast", {8 << 10: "binomial"})[0][1] == (
        ("binomial", 10.0), ("single", 20.0))
    rows = [(s, times) for s in p.SIZES]
    found = p.verdicts(rows, None, "broadcast")
    assert found == {"broadcast": tuple((s, False) for s in p.SIZES)}      # no order keys from fifo:*
    pr = p.prices(rows, found, "broadcast", {s: "binomial" for s in p.SIZES})
    assert pr[0] == (p.SIZES[0], (("binomial", 10.0), ("chain", 5.0), ("single", 6.0)))


def test_prices_survive_the_agreement_vector_and_the_cache(tmp_path):
    found = {c: tuple((s, False) for s in p.SIZES) for c in p.KEYS}
    found[p.PRICES + "broadcast"] = tuple((s, (("chain", 2e-6), ("binomial", 3e-6), ("single", 4e-6)))
                                          for s in p.SIZES)
    vec = p._encode_prices(found)
    assert len(vec) == p._prices_len()
    assert p._decode_prices(vec) == {p.PRICES + "broadcast": found[p.PRICES + "broadcast"]}
    f = str(tmp_path / "sc.json")
    rows = {c: [(s, {"fifo": (2.0,), "single": (1.0,)}) for s in p.SIZES] for c in p.COLLECTIVES}
    p.store("k", found, rows, f)
    got = p.previous("k", f)                 # (lookup: None while this busy host's entry is re-measured)
    assert got[p.PRICES + "broadcast"] == found[p.PRICES + "broadcast"]      # us to 3 decimals: exact here
    assert {k: v for k, v in got.items() if not k.startswith(p.PRICES)} == {c: found[c] for c in p.KEYS}
    assert p._prices_of({"broadcast": [[8 * K, [["chain", -1]]]]}) == {}        # garbage: unpriced
    assert p._prices_of({"broadcast": "x"}) == {}


def _probe_peer_fails(rank, size, how, root):
    """Rank 2 dies or stalls in the single-copy probe's first timed FIFO alternative (the chain or
    binomial broadcast it runs beside the tuner's choice); every rank's init must fail, soon."""
    os.environ["XDG_CACHE_HOME"] = root
    import hetccl
    from hetccl.collectives import single_copy_probe as probe
    real = probe._path_fns

    def path_fns(hot, engine, tuner, coll, nbytes):
        fns = real(hot, engine, tuner, coll, nbytes)
        if rank == 2:
            for k in [k for k in fns if k.startswith("fifo:")]:
                call = fns[k]

                def failing(call=call):
                    if how == "dies":
                        os._exit(0)
                    time.sleep(4)
                    return call()
                fns[k] = failing
        return fns
    probe._path_fns = path_fns
    t0 = time.monotonic()
    try:
        hetccl.init(timeout=2)
    except hetccl.HetcclError as e:
        return f"{type(e).__name__} in {time.monotonic() - t0:.0f}s"
    return "no error"


@pytest.mark.parametrize("how", ["dies", "stalls"])
def test_a_peer_failing_in_the_probes_chain_broadcast_fails_init(tmp_path, how):
    res = run_ranks_expect_failure(_probe_peer_fails, 3, how, str(tmp_path), timeout=90,
                                   env={"HETCCL_TRANSPORTS": "c2c"})
    for rank in (0, 1):
        ok, r = res[rank]
        assert ok and r != "no error", res
        assert float(r.split(" in ")[1][:-1]) < 30, res
    assert not (tmp_path / "hetccl" / "single-copy.json").exists()          # nothing half-measured kept


def test_every_collective_alternative_is_a_registry_algorithm():
    for c, names in p.FIFO_ALTERNATIVES.items():
        assert c in p.COLLECTIVES and set(names) <= {a.name for a in registry.for_collective(c)}
