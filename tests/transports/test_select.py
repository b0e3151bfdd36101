"""Per-pair transport choice: the link-class order and HETCCL_TRANSPORTS forcing/excluding."""
import numpy as np
import pytest

from hetccl import transports
from hetccl.errors import InvalidUsage
from hetccl.transports.matrix import format_matrix, transport_matrix
from hetccl.transports.rdma import rdma_devices
from tests.launcher import run_ranks

CARDS = [{"rank": 0, "host": "a", "c2c_mode": "cma"}, {"rank": 1, "host": "a", "c2c_mode": "cma"},
         {"rank": 2, "host": "b", "c2c_mode": "window"}, {"rank": 3, "host": "b", "c2c_mode": "window"}]


@pytest.mark.parametrize("spec,same_host,cross_host", [
    (None, "c2c", "tcp"), ("^c2c", "shm", "tcp"), ("tcp,shm", "shm", "tcp"), ("tcp", "tcp", "tcp"),
    ("^shm", "c2c", "tcp"), ("c2c,tcp", "c2c", "tcp")])
def test_order_and_filters(spec, same_host, cross_host):
    m = transport_matrix(CARDS, transports.ALL, spec)
    assert [m[i][i] for i in range(4)] == ["self"] * 4
    assert m[0][1] == m[2][3] == same_host
    assert {m[0][2], m[1][3], m[3][0]} == {cross_host}
    assert m == [list(r) for r in zip(*m)]               # symmetric


def test_c2c_needs_an_agreed_mode_and_one_host():
    cards = [dict(c) for c in CARDS]
    del cards[1]["c2c_mode"]                             # no cma/window verdict: not c2c
    m = transport_matrix(cards, transports.ALL, None)
    assert m[0][1] == "shm" and m[2][3] == "c2c"
    with pytest.raises(InvalidUsage, match="no allowed transport can link rank 0"):
        transport_matrix(CARDS, transports.ALL, "c2c")   # across hosts c2c cannot link


def test_unknown_transport_is_refused_and_matrix_prints():
    with pytest.raises(InvalidUsage, match="unknown transport"):
        transport_matrix(CARDS, transports.ALL, "nvlink")
    text = format_matrix(transport_matrix(CARDS, transports.ALL, None))
    assert text.splitlines()[0].split() == ["rank", "0", "1", "2", "3"] and "c2c" in text


def test_doctor_reports_c2c_mode_and_matrix(capsys, monkeypatch):
    from hetccl.cli import doctor_main
    for var in ("HETCCL_SIZE", "HETCCL_STORE", "HETCCL_TRANSPORTS", "HETCCL_C2C_MODE", "HETCCL_LOCAL_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert doctor_main([]) == 0
    out = capsys.readouterr().out
    assert "c2c mode: cma (" in out or "c2c mode: window (" in out, out
    assert "transport per pair for 2 ranks" in out and " c2c" in out
    monkeypatch.setenv("HETCCL_C2C_MODE", "window")
    monkeypatch.setenv("HETCCL_TRANSPORTS", "^c2c")
    monkeypatch.setenv("HETCCL_LOCAL_SIZE", "3")
    assert doctor_main([]) == 0
    out = capsys.readouterr().out
    assert "c2c mode: window (HETCCL_C2C_MODE=window)" in out
    assert "transport per pair for 3 ranks" in out and " c2c" not in out.split("per pair")[1].split("interfaces")[0]


# ---------------------------------------------------------------- per-rank availability on the cards

def _card(rank, host, available, spec=""):
    from hetccl.transports.matrix import parse_filter
    allowed = parse_filter(spec, [t.name for t in transports.ALL])
    return {"rank": rank, "host": host, "c2c_mode": "cma" if "c2c" in available else None,
            "transports": {"filter": spec, "allowed": sorted(allowed),
                           "available": {k: dict(v) for k, v in available.items() if k in allowed}}}


HW = {"hw": ["rc_mlx5/mlx5_0:1"]}
FULL = {"c2c": {}, "shm": {}, "rdma": HW, "tcp": {}}
NO_UCX = {"c2c": {}, "shm": {}, "tcp": {}}


@pytest.mark.parametrize("local_ucx", [True, False])
def test_pairs_are_chosen_from_what_both_ends_have(monkeypatch, local_ucx):
    """A rank without UCX: pairs with it fall back to tcp, pairs of ranks that have RDMA hardware
    use rdma, and the matrix does not depend on what the computing process has."""
    from hetccl.transports import rdma
    monkeypatch.setattr(rdma.RdmaTransport, "available", classmethod(lambda cls: local_ucx))
    monkeypatch.setattr(rdma, "_wires", ["rc_mlx5/mlx5_0:1"] if local_ucx else [])
    cards = [_card(0, "a", FULL), _card(1, "b", FULL), _card(2, "c", NO_UCX), _card(3, "a", FULL)]
    m = transport_matrix(cards, transports.ALL, None)
    assert m[0] == ["self", "rdma", "tcp", "c2c"]
    assert m[1] == ["rdma", "self", "tcp", "rdma"]
    assert m[2] == ["tcp", "tcp", "self", "tcp"]
    assert m == [list(r) for r in zip(*m)]


def test_rdma_hardware_counts_only_when_both_ends_have_it():
    no_hw = dict(FULL, rdma={"hw": []})
    m = transport_matrix([_card(0, "a", FULL), _card(1, "b", no_hw)], transports.ALL, None)
    assert m[0][1] == "tcp"                          # 5 < 10: UCX's tcp is not preferred to ours
    m = transport_matrix([_card(0, "a", FULL, "rdma"), _card(1, "b", no_hw, "rdma")], transports.ALL, "rdma")
    assert m[0][1] == "rdma"                         # forced: still usable without hardware


def test_forcing_a_transport_one_rank_lacks_names_that_rank():
    cards = [_card(0, "a", FULL, "rdma"), _card(1, "a", NO_UCX, "rdma")]
    with pytest.raises(InvalidUsage, match="rank 1 has no rdma"):
        transport_matrix(cards, transports.ALL, "rdma")


def test_a_filter_that_differs_between_ranks_is_an_error_naming_them():
    cards = [_card(0, "a", FULL, "tcp"), _card(1, "a", FULL, "^c2c"), _card(2, "a", FULL, "tcp")]
    with pytest.raises(InvalidUsage, match=r"differs between ranks \(rank\(s\) 0, 2: 'tcp'; rank\(s\) 1: '\^c2c'\)"):
        transport_matrix(cards, transports.ALL, "tcp")
    same = [_card(0, "a", FULL, "tcp,shm"), _card(1, "a", FULL, "shm,tcp")]   # the same set: fine
    assert transport_matrix(same, transports.ALL, "tcp,shm")[0][1] == "shm"


def test_card_entry_lists_what_this_process_may_and_can_use(monkeypatch):
    from hetccl.transports.matrix import transports_entry
    from hetccl.transports import rdma
    monkeypatch.setattr(rdma.RdmaTransport, "available", classmethod(lambda cls: False))
    e = transports_entry(transports.ALL, "^c2c")
    assert e["filter"] == "^c2c" and e["allowed"] == ["rdma", "shm", "tcp"]
    assert "rdma" not in e["available"] and "c2c" not in e["available"] and "tcp" in e["available"]
    monkeypatch.setattr(rdma.RdmaTransport, "available", classmethod(lambda cls: True))
    monkeypatch.setattr(rdma, "rdma_devices", lambda root="/": [])
    assert transports_entry(transports.ALL, "rdma")["available"]["rdma"] == {"hw": []}   # no UCX context asked
    monkeypatch.setattr(rdma, "rdma_devices", lambda root="/": ["mlx5_0"])
    monkeypatch.setattr(rdma, "_wires", ["rc_mlx5/mlx5_0:1"])
    assert transports_entry(transports.ALL, "rdma")["available"]["rdma"] == HW         # forced: asked
    assert transports_entry(transports.ALL, None)["available"]["rdma"] == {"hw": None}  # after the cards


def test_rdma_is_not_offered_nor_ucx_loaded_where_no_pair_could_choose_it(monkeypatch):
    """No RDMA device and tcp allowed: rdma could win no pair (5 < tcp's 10), so the card leaves it
    off without asking UCX (loading it costs every rank ~0.35 s of CPU); forced, UCX is asked."""
    from hetccl.transports import rdma
    from hetccl.transports.matrix import transports_entry
    asked = []
    monkeypatch.setattr(rdma.RdmaTransport, "available", classmethod(lambda cls: asked.append(1) or True))
    monkeypatch.setattr(rdma, "rdma_devices", lambda root="/": [])
    for spec in (None, "^c2c", "rdma,tcp", "tcp"):
        assert "rdma" not in transports_entry(transports.ALL, spec)["available"] and not asked, spec
    for spec in ("rdma", "rdma,shm", "^tcp"):
        assert "rdma" in transports_entry(transports.ALL, spec)["available"], spec
    assert len(asked) == 3
    m = transport_matrix([_card(0, "a", FULL), _card(1, "b", NO_UCX)], transports.ALL, None)
    assert m[0][1] == "tcp"                          # a peer that left rdma off changes no choice


class _Store:
    """The store calls rdma's resolve makes, in one process: set, and multi_get of keys set before."""

    def __init__(self, **preset):
        self.kv = {k: v.encode() for k, v in preset.items()}

    def set(self, key, value):
        self.kv[key] = value

    def multi_get(self, keys, timeout):
        return [self.kv[k] for k in keys]


DEFERRED = dict(FULL, rdma={"hw": None})


def test_deferred_rdma_loads_no_ucx_when_its_ranks_share_a_host(monkeypatch):
    """Ranks with RDMA devices defer rdma to after the cards (no UCX loaded); on one host no pair
    could take it, so nobody loads UCX and every pair keeps its shared-memory or tcp link."""
    from hetccl.transports import rdma
    asked = []
    monkeypatch.setattr(rdma.RdmaTransport, "available", classmethod(lambda cls: asked.append(1) or True))
    cards = [_card(0, "a", DEFERRED), _card(1, "a", DEFERRED), _card(2, "b", NO_UCX)]
    store = _Store()
    transports.by_name("rdma").resolve(store, "c", 0, cards, 5.0)
    assert not asked and not store.kv
    assert [c["transports"]["available"].get("rdma") for c in cards] == [{"hw": []}, {"hw": []}, None]
    m = transport_matrix(cards, transports.ALL, None)
    assert m[0][1] == "c2c" and m[0][2] == m[1][2] == "tcp"


def test_deferred_rdma_across_hosts_asks_ucx_and_shares_the_verdicts(monkeypatch):
    """Ranks with devices on two hosts: each loads UCX and publishes its RDMA wires; a rank whose
    UCX does not load loses rdma on every rank's copy of its card; a malformed verdict is an error
    naming its rank."""
    from hetccl.errors import TransportError
    from hetccl.transports import rdma
    monkeypatch.setattr(rdma.RdmaTransport, "available", classmethod(lambda cls: True))
    monkeypatch.setattr(rdma, "_wires", ["rc_mlx5/mlx5_0:1"])
    t = transports.by_name("rdma")

    def cards():
        return [_card(0, "a", DEFERRED), _card(1, "b", DEFERRED), _card(2, "c", DEFERRED), _card(3, "a", NO_UCX)]
    theirs = {"c/rdma/1": '{"hw": ["rc_mlx5/mlx5_0:1"]}', "c/rdma/2": '{"missing": "no libucp"}'}
    store, cs = _Store(**theirs), cards()
    t.resolve(store, "c", 0, cs, 5.0)
    assert store.kv["c/rdma/0"] == b'{"hw": ["rc_mlx5/mlx5_0:1"]}'
    assert cs[0]["transports"]["available"]["rdma"] == HW == cs[1]["transports"]["available"]["rdma"]
    assert "rdma" not in cs[2]["transports"]["available"]
    m = transport_matrix(cs, transports.ALL, None)
    assert m[0][1] == "rdma" and m[0][2] == m[1][2] == "tcp" and m[0][3] == "c2c"
    for garbage in ('{"hw": "rc"}', "not json", "[1]", '{"hw": [1]}', '{}'):
        with pytest.raises(TransportError, match="rank 2 published a malformed rdma verdict"):
            t.resolve(_Store(**dict(theirs, **{"c/rdma/2": garbage})), "c", 0, cards(), 5.0)


def _rdma_devices_faked(rank, size, host_ids):
    import os
    from hetccl.transports import rdma
    rdma.rdma_devices = lambda root="/": ["mlx5_0"]          # this rank's host lists an RDMA device
    if host_ids:
        os.environ["HETCCL_HOST_ID"] = host_ids[rank]
    return _init_with(rank, size, {})


@pytest.mark.parametrize("host_ids", [None, ("h0", "h1")], ids=["one-host", "two-hosts"])
def test_ranks_with_rdma_devices_load_ucx_only_when_a_peer_is_on_another_host(host_ids):
    """One host (faked RDMA devices on every rank): no rank loads UCX, pairs stay on shared memory.
    Two hosts: the ranks ask UCX; without RDMA hardware in it (the PyPI wheel has no verbs) the
    pair stays on tcp."""
    from hetccl.transports.rdma import ucx_missing
    if host_ids and ucx_missing():
        pytest.skip(ucx_missing())
    res = run_ranks(_rdma_devices_faked, 2, host_ids, timeout=90)
    for r, (what, matrix, total, ucx) in enumerate(res):
        assert what == "ok" and total == 2, (r, what)
        assert ucx == bool(host_ids), f"rank {r}: UCX loaded {ucx}, host ids {host_ids}"
        assert matrix[1 - r] == ("tcp" if host_ids else "c2c") or (not host_ids and matrix[1 - r] == "shm"), matrix


# ---------------------------------------------------------------- the same over real ranks

def _init_with(rank, size, env_by_rank):
    import os
    os.environ.update(env_by_rank.get(rank, {}))       # before hetccl loads UCX in this process
    import hetccl
    try:
        comm = hetccl.init(timeout=60)
    except InvalidUsage as e:
        return "InvalidUsage", str(e)
    try:
        with open("/proc/self/maps") as f:
            ucx = "libucp" in f.read()
        return "ok", [comm.transport(p) for p in range(size)], comm.allreduce(np.ones(4, np.float32))[0], ucx
    finally:
        comm.close()


NO_UCX_ENV = {"HETCCL_UCX_LIB": "/nonexistent/libucp.so.0"}


def test_a_rank_without_ucx_forced_to_rdma_fails_on_every_rank_naming_it():
    from hetccl.transports.rdma import ucx_missing
    if ucx_missing():
        pytest.skip(ucx_missing())
    res = run_ranks(_init_with, 2, {1: NO_UCX_ENV}, timeout=90, transports="rdma")
    for r, (what, msg) in enumerate(res):
        assert what == "InvalidUsage" and "rank 1 has no rdma" in msg, (r, msg)


def test_a_rank_without_ucx_joins_over_tcp_when_rdma_is_only_allowed():
    res = run_ranks(_init_with, 3, {2: NO_UCX_ENV}, timeout=90, transports="rdma,tcp")
    for r, (what, matrix, total, ucx) in enumerate(res):
        assert what == "ok" and matrix == ["self" if p == r else "tcp" for p in range(3)], (r, matrix)
        assert total == 3
        assert not ucx or rdma_devices(), f"rank {r} loaded UCX though no pair could use rdma"


def test_ranks_with_different_hetccl_transports_all_fail_naming_them():
    res = run_ranks(_init_with, 3, {1: {"HETCCL_TRANSPORTS": "^c2c"}}, timeout=90, transports="tcp")
    for r, (what, msg) in enumerate(res):
        assert what == "InvalidUsage" and "rank(s) 0, 2: 'tcp'; rank(s) 1: '^c2c'" in msg, (r, msg)
