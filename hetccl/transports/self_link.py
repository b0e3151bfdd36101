"""``self``: a rank's link to itself, the diagonal of the transport matrix.

Not a transport that can link two ranks (it is never a candidate for a pair, and HETCCL_TRANSPORTS
cannot name it), but a link class the cost model, the topology and the simulator price like the
others: the engine copies a rank's own block in memory.
"""
from .base import DefaultCost, Transport


class SelfLink(Transport):
    name = "self"
    preference = 0
    link_class = "self"
    same_host = True
    wire = False
    # fallback only (collectives/cost_model.py): a memory copy on a 2-vCPU VM
    cost = DefaultCost(0.2e-6, 1 / 10e9, 1 / 8e9)
    link_kind = "self"

    def score(self, a: dict, b: dict) -> int:
        return 0

    def endpoints(self) -> dict:
        return {}
