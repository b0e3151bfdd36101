"""A link taken down in the middle of a transfer (``ip link set eth0 down`` in one simulated host's
namespace): nothing tells anyone, yet every rank raises within HETCCL_PEER_TIMEOUT of it (the
kernel's keepalive on the data and control connections), and the ranks of the host still connected
shrink onto themselves and compute correctly. Root only (skipped otherwise)."""
import os
import time

import pytest

from tests.netns.cluster import NetnsCluster, unavailable_reason

REASON = unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

PEER_TIMEOUT = 3


def test_link_down_mid_transfer_is_noticed_within_the_peer_timeout(tmp_path):
    marker = str(tmp_path / "running")
    down = {}

    def cut():
        end = time.monotonic() + 60
        while not os.path.exists(marker) and time.monotonic() < end:
            time.sleep(0.05)
        time.sleep(0.3)                                     # well inside the allreduce loop
        down["at"] = time.time()
        c.link(1, up=False)

    c = NetnsCluster(hosts=2, rate="1gbit")
    with c:
        placement = [0, 1, 0, 1]
        res = c.run("tests.netns.cases:link_down_case", placement, args=[marker, placement],
                    timeout=150, during=cut, env={"HETCCL_PEER_TIMEOUT": str(PEER_TIMEOUT)})
    assert not c.leftovers()
    for r, out in enumerate(res):
        assert out["exc"], (r, out)
        took = out["at"] - down["at"]
        assert took < PEER_TIMEOUT + 4, f"rank {r} raised {took:.1f} s after the link went down: {out}"
    for r in (0, 2):                                        # host 0: shrink onto itself
        assert res[r]["shrunk"] == 2 and res[r]["parent_ranks"] == [0, 2], res[r]
        assert res[r]["y"] == 3.0 and res[r]["failed"] == [1, 3], res[r]
