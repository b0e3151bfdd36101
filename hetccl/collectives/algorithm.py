"""What an algorithm is to the tuner: a name, the native schedule that runs it, and its cost.

``cost(n, p, c)`` predicts the seconds of one call from the alpha-beta-gamma model (``c`` a
``model.LinkCost``: alpha per message, beta per byte moved, gamma per byte reduced) for ``n`` bytes
on ``p`` ranks; what ``n`` counts is the collective's own convention (see each family module).
``supports(n, p)`` rules out shapes an algorithm cannot run.

How bytes are counted. The probe's beta is the time per byte *crossing a link* in a ring allgather
(probe.py), where every rank both sends and receives each such byte. Over a shared-memory FIFO that
is two copy passes per rank and byte (into the next rank's FIFO, out of the previous rank's), so:

- a *one-way* transfer (a tree level: the sender only sends, the receiver only receives) costs each
  side one pass, ``ONE_WAY`` = 0.5 beta per byte (over a full-duplex wire it costs a whole beta:
  the wire, not the copies, is the limit; ``LinkCost.fifo`` says which);
- an *exchange* step (send a piece while receiving another) costs a beta per byte, like a ring step;
- a *fused ring relay* (engine.forward_piece: receive, reduce and write into the next FIFO in one
  pass) saves the pass that would land the partial sum in memory: a ring reduce-scatter over FIFOs
  costs one pass per byte of its input (see ``ring_rs_bytes``);
- above ``LinkCost.stream_min`` (the engine's ``nt_threshold``), the ring and chain schedules write
  their output with streaming stores; exchange steps stage whole steps through memory; and an
  exchange step larger than a FIFO (``LinkCost.fifo_bytes``) cannot be written ahead of the peer:
  both cost ``EXCHANGE``.

Every constant below assumes the current FIFO engine (see each comment for what was measured).
"""
import math
from dataclasses import dataclass
from typing import Callable

from .._native.codes import (   # the native schedules' codes, from their one source (_native/codes.pxd)
    ALGO_RING, ALGO_RD, ALGO_BINOMIAL, ALGO_CHAIN, ALGO_SCATTER_ALLGATHER, ALGO_PAIRWISE, ALGO_LINEAR,
    ALGO_RS_GATHER, ALGO_RABENSEIFNER, ALGO_DBTREE, ALGO_BRUCK, ALGO_RECURSIVE_HALVING,
    ALGO_DISSEMINATION)

# One side's copy pass of a one-way FIFO transfer, in units of beta (two passes, see above).
# Measured (bench/results/crossover-2026-12-01.txt, 2 ranks): broadcast 32-128 MiB 0.55 beta per
# byte, binomial reduce 128 MiB 0.74 beta (a pass plus the reduction).
ONE_WAY = 0.5

# A pipelined chain relay over FIFOs: the fused FIFO-to-FIFO pass plus the copy of the slot it just
# wrote (cache-hot) into its output, ~1.5 passes = 0.75 beta per byte. Measured: chain broadcast at
# 3-4 ranks, 0.59 beta (slope 32 KiB-512 KiB) to 0.62-0.88 beta (8-128 MiB), against a binomial
# tree's 0.9-1.1 beta (two levels of one-way transfers).
RELAY = 0.75

# Exchange steps of calls at or above LinkCost.stream_min bytes: the ring's receives stream their
# output (non-temporal stores) and relay FIFO to FIFO, while recursive doubling/halving, Bruck and
# Rabenseifner land every step in memory and re-read it. Measured at 32-128 MiB: ring allgather
# 1.4-1.8x faster than recursive doubling, 1.1-1.5x than Bruck; ring allreduce 1.1-1.6x faster
# than Rabenseifner (2-4 ranks). The same factor for a step larger than a FIFO (the sender stalls
# until the peer drains it; the ring's slices are a quarter of a FIFO): ring allreduce 1.3x faster
# than Rabenseifner (4 MiB halving steps) at 8 MiB on 4 ranks, ring allgather 1.0-1.2x faster than
# recursive doubling at 8 MiB. Smaller steps of smaller calls are within noise of the ring's.
EXCHANGE = 1.5

# The ring allgather at 2 ranks, below stream_min, once its one step fills a whole slice (a
# quarter FIFO): it copies its own block into the output inside the send, slice by slice, and
# measured slower per byte than the whole-block exchange of recursive doubling / Bruck (copy the
# own half, then swap): ring/Bruck 1.0 at 512 KiB, 0.98-1.27 at 2 MiB, 1.2-1.53 at 8 MiB in four
# interleaved 2-rank sweeps (bench/results/crossover-2026-12-01b.txt and the re-measurements of
# 2026-12-02 in bench/RESULTS.md). From stream_min on the ring streams its output and wins (1.5x).
RING_PAIR = 1.2


def _always(n, p):
    return True


# Codes below the engine's: composed in Python by the topology planner (hierarchical.py) and across
# vendor islands (islands.py), never handed to the engine.
ALGO_HIERARCHICAL, ALGO_TOPO_RING, ALGO_ISLANDS = -1, -2, -3

# The code of an algorithm whose schedule is Python (Algorithm.run): never handed to the engine.
PYTHON_SCHEDULE = 1000


@dataclass(frozen=True)
class Algorithm:
    """One row of the registry: ``code`` names the native schedule that runs it (one dispatch
    keyed by code, collectives/schedules.py), unless ``run`` is given: a schedule written in Python
    over the communicator's Context, ``run(ctx, call)`` (comm.Call: buffers, dtype, op, root,
    counts, timeout), composed of native schedules; its code is then PYTHON_SCHEDULE.
    ``distances``: its steps pair ranks at distances 2^k (recursive doubling/halving, Bruck), which
    the topology planner prices as that many streams per host uplink (hierarchical.py)."""
    name: str
    collective: str
    code: int
    cost: Callable          # (nbytes, p, LinkCost) -> seconds
    supports: Callable = _always
    run: Callable | None = None
    distances: bool = False


def log2_ceil(p: int) -> int:
    """Steps of a log-step algorithm on p ranks."""
    return math.ceil(math.log2(p)) if p > 1 else 0


def pof2_below(p: int) -> int:
    """The largest power of two <= p (the ranks that remain after folding the rest in)."""
    return 1 << (p.bit_length() - 1) if p > 0 else 0


def is_pof2(p: int) -> bool:
    return p > 0 and p & (p - 1) == 0


def binomial_levels(p: int) -> list[tuple[int, int]]:
    """[(ranks working, blocks)] per level of a binomial tree on p ranks (binomial.pyx), the
    root's first send first: at the level of distance m every rank whose relative rank is a
    multiple of 2m with a partner m further on sends to (or receives from) it, a subtree of
    min(m, p - m) of the p blocks at the root. The levels of a reduce or gather are the same,
    in the other order. On more ranks than CPUs the working ranks count (LinkCost.crowded): the
    first levels of a tree on 4 ranks keep half of them idle."""
    out, m = [], (1 << (p - 1).bit_length()) >> 1 if p > 1 else 0
    while m > 0:
        out.append((2 * -(-(p - m) // (2 * m)), min(m, p - m)))
        m >>= 1
    return out


def tree_levels(n, p, c, per_byte, share=False) -> float:
    """Seconds of a binomial tree's levels moving n bytes at every level (share: only the
    subtree's min(m, p - m) / p of them, a scatter's or gather's), each level priced on its own
    working ranks: alpha + bytes x per_byte(c.crowded(working, p))."""
    return sum(c.alpha + (n * blocks / p if share else n) * per_byte(c.crowded(busy, p))
               for busy, blocks in binomial_levels(p))


def folding(c, p):
    """The parameters of the fold of a recursive doubling or Rabenseifner on p ranks, which folds the ranks above q, the power of two below p, in and out by one-way
    transfers: those keep only 2 (p - q) ranks at work, the others waiting inside the call, so on
    more ranks than CPUs the fold pays what its working ranks do (LinkCost.crowded), as a binomial
    tree's levels do (tree_levels). The rounds keep the all-ranks beta. Measured on 3 ranks
    sharing 2 CPUs: recursive doubling's allreduce 0.29-0.33 ns per byte from 2 KiB to 128 KiB,
    where its fold at the all-ranks beta priced 0.62 and the ring was chosen at 8 KiB, 1.10-1.16x
    slower, in four of the five recorded runs (bench/results/crossover-2026-12-07h-raw and
    earlier). Pricing the rounds on their q working ranks too was tried and moved 128-512 KiB to
    the exchanges, 1.15-1.20x slower than the ring, in three of them: the probe's in-cache ring
    still prices the ring's own bytes above its loops there."""
    q = pof2_below(p)
    return c if q == p else c.crowded(2 * (p - q), p)


def one_way(c) -> float:
    """Seconds per byte of a one-way transfer (a tree edge): one pass per side over a FIFO, the
    whole wire time over a full-duplex network link."""
    return ONE_WAY * c.beta if c.fifo else c.beta


def exchange(n, step, c) -> float:
    """Seconds per byte of the exchange steps of a call of n bytes whose largest step moves *step*
    bytes each way (see EXCHANGE; over a wire, the exchange steps' own rate where the probe timed
    them: LinkCost.beta_x)."""
    if not c.fifo:
        return c.beta_x or c.beta
    return EXCHANGE * c.beta if n >= c.stream_min or step >= c.fifo_bytes else c.beta


def overlaps(c) -> bool:
    """Whether an exchange round hides its latency behind its bytes: over a loopback wire whose
    exchange rounds the probe timed (LinkCost.beta_x > 0). alpha there is a barrier round's wake-up
    of a rank asleep on its socket; in an exchange round with data both sides first copy their
    piece into the socket, and the peer's piece has arrived by then, so a round costs the larger
    of the two, not their sum. Measured (bench/results/validate-sim-2026-12-07g.json, 4 ranks on
    2 cores): Rabenseifner at 64 KiB 66 us and 256 KiB 281 us, a line through the origin, where
    the sum priced 108 and 339; at 8 ranks 186 us at 64 KiB against 289. Over FIFOs the rounds pay
    both (8 ranks on 2 cores: 16-64 KiB Rabenseifners intercept at its 6 alphas)."""
    return not c.fifo and c.beta_x > 0 and c.share > 1


def exchange_rounds(c, pieces, per_byte) -> float:
    """Seconds of exchange rounds moving *pieces* bytes each way, one round each, at *per_byte*:
    alpha plus the bytes per round, or the larger of the two where rounds overlap (overlaps)."""
    if overlaps(c):
        return sum(max(c.alpha, s * per_byte) for s in pieces)
    return len(pieces) * c.alpha + sum(pieces) * per_byte


def pair_exchange(n, c) -> float:
    """Seconds per byte of the one exchange of a 2-rank call of n bytes whose schedule copies its
    own half into the output, then swaps the other half with the peer in one step (recursive
    doubling and Bruck allgather, pairwise and Bruck alltoall: at 2 ranks all four are this
    schedule). From stream_min on it lands in memory like any exchange step (EXCHANGE); a step
    larger than a FIFO costs nothing extra here, unlike at 3-4 ranks on 2 cores: the only peer
    drains the FIFO while it fills ours (measured at 8 MiB: Bruck and recursive doubling 1.2-1.5x
    faster than the ring in four interleaved 2-rank sweeps, see RING_PAIR)."""
    if not c.fifo:
        return c.beta_x or c.beta
    return EXCHANGE * c.beta if n >= c.stream_min else c.beta


def ring_rs_bytes(n, p, c) -> float:
    """Seconds of a ring reduce-scatter's bytes (without gamma) for an input of n bytes: over FIFOs
    every rank makes one pass per input byte (it sends its own block, fuses each relay, reduces
    the last step into the output: p passes of n/p); elsewhere (p-1)/p n bytes cross its links."""
    return ONE_WAY * n * c.beta if c.fifo else (p - 1) / p * n * c.beta
