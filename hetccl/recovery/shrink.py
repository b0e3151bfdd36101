"""``comm.shrink()``: a communicator of the survivors, built without relying on any single rank.

    1. revoke the old communicator (every rank's operations on it stop);
    2. agree (agreement.py) on the failed set; the coordinator that proposes a fresh value starts a
       store server and puts its address in the value, so the decision carries it: the coordinator
       is the lowest rank it does not suspect, i.e. the lowest survivor of its value, whoever died
       (rank 0, the old store's host, included);
    3. build: the survivors, in their old order as ranks 0..k-1, connect their links around that
       store (the usual rendezvous, comm._connect), watched by the control plane: a survivor that
       dies or falls silent cancels the build at once (the store client's and the mesh's waits);
    4. confirm: agree on "every survivor built it"; a false answer, or more failures than step 2
       decided, throws the new communicator away and starts again from step 2 (a second death
       during the shrink), all within the timeout. A build that fails again although nobody else
       failed (a bridge that cannot open its island, say) ends the shrink with that error instead.
Every survivor that returns returns the same communicator (both decisions are uniform), so they
all go on together or all try again.
"""
from __future__ import annotations

import logging
import threading
import time

from ..errors import CommAborted, HetcclError, HetcclTimeout, InvalidUsage
from .membership import FAILED

log = logging.getLogger("hetccl.recovery")

SAME_SET_TRIES = 2   # builds that fail without a new failure before shrink gives up (not a retry storm)


def shrink(ctx, timeout: float):
    """The survivors' new communicator; ``ctx``: the old one's Context (hetccl/context.py)."""
    ft = ctx.ft
    deadline = time.monotonic() + timeout
    ft.revoke()
    offers = {}                       # (host, port) -> StoreServer this rank started as coordinator
    attempt = stuck = 0
    try:
        while True:
            value = ft.agree(True, _left(deadline, timeout), offer=lambda: _offer(ctx, offers))
            failed = set(value["failed"])
            if value["x"] is None:
                raise InvalidUsage("shrink() met an agree() of another rank: every rank must make the "
                                   "same agree/shrink calls in the same order")
            survivors = [r for r in range(ctx.size) if r not in failed]
            if ctx.rank not in survivors:
                raise CommAborted(f"rank {ctx.rank} was counted failed by the other ranks' shrink; "
                                  f"it cannot join their communicator")
            addr = tuple(value["x"])
            server = offers.pop(addr, None)
            _close_all(offers)
            t0 = time.monotonic()
            new, err = None, None
            try:
                new = _build(ctx, survivors, addr, server, ft.m.entered, deadline, timeout)
            except HetcclError as e:
                err = e
                if server is not None:
                    server.close()
            confirm = ft.agree(new is not None, _left(deadline, timeout))
            if confirm["flag"] and set(confirm["failed"]) == failed:
                new.parent_ranks = survivors
                log.info("rank %d: shrink to %d rank(s) (failed: %s) in %.2f s (build %.2f s, "
                         "attempt %d)", ctx.rank, len(survivors), sorted(failed),
                         timeout - (deadline - time.monotonic()), time.monotonic() - t0, attempt + 1)
                return new
            log.info("rank %d: shrink attempt %d did not hold (%s; failed now %s)", ctx.rank,
                     attempt + 1, err or "a survivor failed", sorted(confirm["failed"]))
            if new is not None:
                new.abort()
                new.close(timeout=1.0)
            attempt += 1
            if set(confirm["failed"]) == failed:
                stuck += 1                # nobody else failed: the build itself cannot work
                if stuck >= SAME_SET_TRIES:
                    raise _stuck(ctx, attempt, err)
    finally:
        _close_all(offers)


def _stuck(ctx, attempts, err):
    """The error of a shrink whose survivors could not build their communicator although nobody
    else failed (every survivor raises: the confirmation is uniform)."""
    why = f"{type(err).__name__}: {err}" if err is not None else \
        "another survivor could not build it (its error says why)"
    e = HetcclError(f"shrink: the survivors of rank(s) {sorted(ctx.ft.failed())} could not build their "
                    f"communicator in {attempts} attempts although no other rank failed: {why}")
    e.__cause__ = err
    return e


def _left(deadline, timeout):
    left = deadline - time.monotonic()
    if left <= 0:
        raise HetcclTimeout(f"shrink did not complete within {timeout:g} s (ranks kept failing, or a "
                            f"live rank did not call shrink); raise timeout=")
    return left


def _offer(ctx, offers):
    """As coordinator of a fresh decision: serve the new communicator's store, return its address.
    Runs on the control plane's lock (its thread or the caller's)."""
    from ..bootstrap.store import StoreServer
    host = ctx.cards[ctx.rank]["addr"]            # where this rank's data links listen
    server = StoreServer(host, 0, ctx.info.secret)
    addr = (host, server.port)
    offers[addr] = server
    return list(addr)


def _close_all(offers):
    for s in offers.values():
        s.close()
    offers.clear()


def _build(ctx, survivors, addr, server, instance, deadline, timeout):
    """Connect the survivors (this rank's part, with the Context's ``connect``: how a
    communicator is built); cancelled as soon as one of them fails."""
    from ..bootstrap.store import StoreClient

    ft = ctx.ft
    cancel = threading.Event()
    cancel.reason = None

    def on_event(event, rank, why):
        if event == FAILED and rank in survivors and not cancel.is_set():
            cancel.reason = f"rank {rank} failed while the survivors connected: {why}"
            cancel.set()

    ft.listeners.append(on_event)
    ft.watch(survivors)
    dead = set(ft.failed()) & set(survivors)
    if dead:
        on_event(FAILED, min(dead), "it failed before")
    client = None
    try:
        rank = survivors.index(ctx.rank)
        left = _left(deadline, timeout)
        info = ctx.info.replace(rank=rank, size=len(survivors), store_addr=addr)
        client = StoreClient(addr, info.secret, rank, left, cancel=cancel)
        return ctx.connect(info, client, server, ctx.job_id, f"{ctx.comm_id}.s{instance}", left,
                           ctx.transports, bridges=ctx.bridges, cancel=cancel,
                           shrunk_from=(ctx, survivors))
    except BaseException:
        if client is not None:
            client.close()
        raise
    finally:
        ft.unwatch()
        ft.listeners.remove(on_event)
