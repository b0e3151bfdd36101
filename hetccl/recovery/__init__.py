"""Recovery after a failure: the control plane, failure detection, revoke, agree and shrink.

The pieces, one concept per module:

* ``wire``        the control plane's frames (length-prefixed JSON, bounded, checked);
* ``agreement``   the uniform agreement protocol (Paxos with a rotating coordinator, fenced
                  suspicions), pure logic;
* ``membership``  one communicator's view at one rank: failed ranks, revocation, exclusion, and its
                  agreement instances, pure logic;
* ``plane``       the control plane of a process: one authenticated listener, one connection per
                  peer process shared by every communicator, liveness pings, and the thread that
                  runs the above (it outlives any communicator's abort);
* ``shrink``      ``comm.shrink()``: revoke, agree on the failed set, build the survivors'
                  communicator around a store served by the lowest survivor, confirm, retry.

The user-facing calls are Communicator methods (``revoke``, ``agree``, ``shrink``,
``failed_ranks``) and ``hetccl.torch.shrink_group``; docs/reliability.md describes them.
"""


def card_fields(secret, route=None) -> dict:
    """What a rank card carries about this process's control plane (started on first use; see
    plane.plane for ``route``), for a communicator whose job secret is ``secret``."""
    from .plane import plane
    return plane(route).card_fields(secret)


def attach(ctx, cards, info, job_id: str, comm_id: str):
    """Register a new communicator (its Context, hetccl/context.py) with this process's control
    plane; its ControlHandle."""
    from .plane import communicator_key, plane
    return plane().attach(ctx, communicator_key(job_id, comm_id, cards), info.rank, info.size,
                          cards, info.secret)
