"""``shrink_group``: after a rank dies, the survivors get a new process group and train on.

torchrun's answer to a failure is an elastic restart: it stops every worker, rendezvouses the
nodes left, starts the script again, and the script reloads its last checkpoint; the steps since
then are lost. With the hetccl backend the surviving processes keep running instead:

    try:
        loss.backward()                       # DDP's allreduce raises: a rank died
    except RuntimeError:                      # (DDP wraps hetccl's PeerLostError in a RuntimeError)
        pg = hetccl.torch.shrink_group(pg)    # the survivors' group, ranks 0..k-1 in the old order
        model = DDP(model.module, process_group=pg)
        ...                                   # redo this step's backward: nothing was lost

The new group is a ProcessGroupHetccl over ``communicator.shrink()`` (hetccl/recovery/shrink.py):
it does not need torch's store (which rank 0, or torchrun's agent, served and may have died) and
is registered with torch like a ``new_group``, so ``dist.*(group=pg)``, DDP, FSDP and DeviceMesh
take it. The old group is revoked: its calls raise CommRevoked (``destroy_process_group(old)``
closes it without waiting for the dead).
"""
from __future__ import annotations

import torch.distributed as dist
from torch.distributed import distributed_c10d as c10d

from ..errors import InvalidUsage
from .process_group import BACKEND_NAME, ProcessGroupHetccl


def shrink_group(group=None, *, timeout=None) -> ProcessGroupHetccl:
    """A process group of the live ranks of ``group`` (default: the default group), after a
    failure. Collective over the survivors; see ``Communicator.shrink`` for what it guarantees.
    ``timeout``: seconds (or a timedelta; default: the group's timeout)."""
    pg = group if group is not None else c10d._get_default_group()
    if not isinstance(pg, ProcessGroupHetccl):
        raise InvalidUsage(f"shrink_group needs a group of the {BACKEND_NAME!r} backend, got "
                           f"{type(pg).__name__}; create it with init_process_group({BACKEND_NAME!r}) "
                           f"or new_group(backend={BACKEND_NAME!r})")
    old = pg.communicator
    new = old.shrink(timeout=pg._timeout if timeout is None else timeout)
    name = f"{pg.getGroupName() or 'default'}.shrink{old.context.ft.m.entered}"
    npg = ProcessGroupHetccl(new, new.rank, new.size, pg._timeout, name)
    npg.setGroupName(name)
    by_group = {g: w for w, g in c10d._world.pg_group_ranks.get(pg, {}).items()}
    world = [by_group.get(r, r) for r in new.parent_ranks]       # survivors' default-group ranks
    mapping = {w: i for i, w in enumerate(world)}
    register = getattr(c10d, "_register_pg_in_world", None)
    if register is not None:
        register(npg, BACKEND_NAME, dist.HashStore(), name, BACKEND_NAME, rank_mapping=mapping)
    else:                                                        # torch before _register_pg_in_world
        c10d._world.pg_map[npg] = (BACKEND_NAME, dist.HashStore())
        c10d._world.pg_names[npg] = name
        c10d._world.pg_backend_config[npg] = BACKEND_NAME
        c10d._world.pg_group_ranks[npg] = mapping
        c10d._register_process_group(name, npg)
    return npg
