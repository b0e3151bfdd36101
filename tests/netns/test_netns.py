"""Real multi-host runs on one machine: 2 network namespaces as 2 hosts of 2 ranks each, joined by
veths through a bridge shaped with tbf, hetccl's TCP transport between them and shared memory inside
each. Root only (skipped with the reason otherwise). Each test's namespaces, veths and bridge are
removed even when it fails (cluster.NetnsCluster)."""
import pytest

from tests.netns.cluster import NetnsCluster, unavailable_reason

REASON = unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")


@pytest.fixture
def cluster():
    c = NetnsCluster(hosts=2, rate="2gbit")
    with c:
        yield c
    assert not c.leftovers(), f"namespaces left behind: {c.leftovers()}"


@pytest.mark.parametrize("host_id", ["uts", "env"])
def test_discovery_finds_two_hosts_without_a_topology_file(cluster, host_id):
    res = cluster.run("tests.netns.cases:discovery_case", [0, 1, 0, 1], timeout=120, host_id=host_id)
    for r, out in enumerate(res):
        assert out["hosts"] == 2 and out["model_hosts"] == 2 and out["local_size"] == 2
        assert out["source"] == "discovered"
        want = ["self" if p == r else "c2c" if p % 2 == r % 2 else "tcp" for p in range(4)]   # c2c: same host
        assert out["transports"] == want, (r, out)
        assert out["ring"] == [0, 2, 1, 3]
        # each host's eth0 is shaped by tbf 2gbit, burst 128kb (tc stores 131000 bytes): discovery
        # reads the bucket, the model keeps the veth's line rate for it, the planner prices with it
        for rate, burst, peak in out["uplinks"]:
            assert rate == 2e9 / 8 and 120_000 <= burst <= 140_000 and peak > rate, out["uplinks"]
        assert out["priced_burst"] == out["uplinks"][0][1]
    assert res[0]["card_host"].startswith(cluster.hostnames[0] if host_id == "uts" else cluster.hostnames[0])
    assert res[0]["card_host"] != res[1]["card_host"]


def test_collectives_across_namespaces_round_robin(cluster):
    res = cluster.run("tests.netns.cases:collectives_case", [0, 1, 0, 1], args=[[1, 4097, 1 << 20]], timeout=240)
    assert res[0] == res[1] == res[2] == res[3]          # every rank chose the same algorithms
    assert res[0]["allreduce/1048576"] in ("hierarchical", "topo_ring")


def test_collectives_across_namespaces_block_placement(cluster):
    res = cluster.run("tests.netns.cases:collectives_case", [0, 0, 1, 1], args=[[3, 300_001]], timeout=240)
    assert res[0] == res[3]


def test_namespaces_are_removed_when_the_body_fails():
    c = NetnsCluster(hosts=2, rate="1gbit")
    with pytest.raises(RuntimeError, match="body failed"):
        with c:
            assert len(c.leftovers()) == 3
            raise RuntimeError("body failed")
    assert c.leftovers() == []


def test_a_failing_rank_is_reported_and_nothing_is_left(cluster):
    with pytest.raises(AssertionError, match="failed on"):
        cluster.run("tests.netns.cases:no_such_case", [0, 1], timeout=60)
