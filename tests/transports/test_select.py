"""Per-pair transport choice: the link-class order and HETCCL_TRANSPORTS forcing/excluding."""
import pytest

from hetccl import transports
from hetccl.errors import InvalidUsage
from hetccl.topology.select import format_matrix, transport_matrix

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
