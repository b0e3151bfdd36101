#!/usr/bin/env python3
"""DDP step time with the "hetccl" torch backend against gloo, and the backend's own overhead.

    python bench/ddp_bench.py                     # 2 ranks, ~25M-parameter MLP, 64 MiB allreduce
    python bench/ddp_bench.py --quick             # smoke run (fewer steps and repetitions)
    python bench/ddp_bench.py --json out.json     # also write every figure as JSON

The script spawns its ranks itself (one process per rank, each limited to one compute thread) and
measures, in the same run and interleaved round by round so both backends see the same machine:

1. **DDP step time against its floor**: the same MLP (default 1024-4096-4096-1024, 25.2M
   parameters, so 101 MB of float32 gradients in DDP's default 25 MB buckets), the same synthetic
   batch and SGD, in these variants (``--variants`` picks some):
   - *compute only*: the bare model in every rank at once, no DDP, no communication (the floor);
   - *hetccl*: DDP over the hetccl group, DDP's default allreduce;
   - *hetccl + symmetric hook*: ``hetccl.torch.hooks.symmetric_hook`` (buckets moved into
     symmetric memory), also with ``gradient_as_bucket_view=True`` (no grad<->bucket copies);
   - *hetccl + bf16 hook*: ``hooks.bf16_hook`` (bfloat16 compression on symmetric buffers);
   - *gloo*: DDP over a gloo group of the same ranks.
   Step = zero_grad + forward + backward (gradient allreduce overlapped by DDP) + optimizer step.
   Per step the max over ranks; reported: the median over all timed steps, and its ratio to the
   compute-only step. Targets: the best hetccl variant <= 1.15x compute only; hetccl <= 0.8x
   gloo. For the hook variants, the hook's timeline gives the share of the bucket reductions'
   time spent before the backward pass ended (its last bucket handed over): the overlap.
   The hook variants also report the CPU time of each bucket's reduction on the process group's
   lane thread (rank 0; with the backward pass filling the cores, it adds to the step whatever
   the overlap). ``--profile DIR`` checks the overlap in a profile: a few more steps of each hook variant under
   torch.profiler, every thread recorded; the trace (DIR/ddp-VARIANT-rankR.json) shows each
   bucket's reduction on the lane thread against the backward functions, and the report gives
   the share of reduction time before the last backward function ended.
2. **Backend overhead**: ``torch.distributed.all_reduce`` of a 64 MiB float32 tensor through the
   hetccl backend against ``Communicator.allreduce`` on the same buffer (the communicator under
   the process group). Method as nccl-tests: per repetition barrier, then ``--iters`` calls; time
   per call = max over ranks; median over repetitions; busbw = 2(n-1)/n x bytes / time.
   Target: the backend's busbw within 10% of hetccl's own. gloo's busbw is shown for context.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import statistics
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from checkout import IMPORT_ROOT  # noqa: E402,F401  (which hetccl: the installed one, or this checkout; bench/checkout.py)

DDP_TARGET = 0.8          # hetccl step time / gloo step time must be <= this
FLOOR_TARGET = 1.15       # DDP step time / compute-only step time must be <= this
OVERHEAD_TARGET = 0.9     # backend busbw / hetccl busbw must be >= this


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().rstrip("B")
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


# ------------------------------------------------------------------------------------------------
# inside a rank
# ------------------------------------------------------------------------------------------------
def _max_over_ranks(values, group):
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return t.tolist()


def _model(width: int, hidden: int):
    import torch.nn as nn

    return nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, width))


def _steps(model, opt, x, y, steps, state=None, cpu=None):
    """Timed training steps; with a hook ``state`` that records a timeline, also the share of each
    step's communication that ran before its backward pass ended (overlap fractions), and, into
    the dict ``cpu``, the lane's CPU time per bucket (index, bytes) -> [seconds per step]."""
    import torch.nn as nn

    times, overlaps = [], []
    for _ in range(steps):
        if state is not None:
            state.timeline.clear()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        if state is not None:
            overlaps.append(_overlap(state.timeline))
            if cpu is not None:
                for b in state.timeline:
                    cpu.setdefault((b.index, b.nbytes), []).append(b.cpu)
    return times, overlaps


def _overlap(timeline):
    """Share of the bucket reductions' time that lay before the backward pass ended. The backward
    pass ends when its last gradient is ready, which is when the last bucket is handed to the
    hook; what runs after that is exposed communication."""
    if not timeline:
        return 0.0
    end = max(b.ready for b in timeline)
    busy = sum(b.end - b.start for b in timeline)
    hidden = sum(max(0.0, min(b.end, end) - b.start) for b in timeline)
    return hidden / busy if busy > 0 else 0.0


STEP_MARK = "ddp_bench: step "                       # record_function range of one profiled step
BACKWARD_MARK = "autograd::engine::evaluate_function"  # torch's name of each backward function


def _profiled_steps(model, opt, x, y, steps, path):
    """Run *steps* training steps under torch.profiler recording every thread (the hooks reduce on
    the process group's lane thread, started before the profiler session), write the Chrome trace
    to *path* (open it in chrome://tracing or Perfetto), and return the overlap of each step as
    the trace shows it (_trace_overlap)."""
    import torch.nn as nn
    from torch._C._profiler import _ExperimentalConfig
    from torch.profiler import ProfilerActivity, profile, record_function

    config = _ExperimentalConfig(profile_all_threads=True)
    with profile(activities=[ProfilerActivity.CPU], experimental_config=config) as prof:
        for i in range(steps):
            with record_function(f"{STEP_MARK}{i}"):
                opt.zero_grad(set_to_none=False)
                nn.functional.mse_loss(model(x), y).backward()
                opt.step()
    prof.export_chrome_trace(path)
    return _trace_overlap([(e.name, e.time_range.start, e.time_range.end) for e in prof.events()])


def _trace_overlap(events):
    """Per profiled step, the share of the hooks' bucket-reduction ranges (hooks.PROFILE_PREFIX)
    that lay before the step's last backward function ended: the profiler's view of what
    _overlap() derives from the hook's own timeline. events: (name, start, end), any unit."""
    from hetccl.torch.hooks import PROFILE_PREFIX

    out = []
    for _, s0, s1 in sorted((e for e in events if e[0].startswith(STEP_MARK)), key=lambda e: e[1]):
        inside = [e for e in events if s0 <= e[1] <= s1]
        ends = [end for name, _, end in inside if name.startswith(BACKWARD_MARK)]
        buckets = [(start, end) for name, start, end in inside if name.startswith(PROFILE_PREFIX)]
        busy = sum(end - start for start, end in buckets)
        if not ends or busy <= 0:
            continue
        last = max(ends)
        out.append(sum(max(0.0, min(end, last) - start) for start, end in buckets) / busy)
    return out


# variant -> (label, process group key, hook name or None, gradient_as_bucket_view)
VARIANTS = {
    "compute": ("compute only (no DDP)", None, None, False),
    "hetccl": ("hetccl (DDP's default allreduce)", "hetccl", None, False),
    "symmetric": ("hetccl + symmetric hook", "hetccl", "symmetric_hook", False),
    "symmetric-views": ("hetccl + symmetric hook, gradient_as_bucket_view", "hetccl",
                        "symmetric_hook", True),
    "bf16": ("hetccl + bf16 hook", "hetccl", "bf16_hook", False),
    "gloo": ("gloo", "gloo", None, False),
}
COMPUTE = "compute"


def _build(args, name, groups):
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP

    from hetccl.torch import hooks

    _, key, hook, as_view = VARIANTS[name]
    torch.manual_seed(0)
    model, state = _model(args.width, args.hidden), None
    if key is not None:
        model = DDP(model, process_group=groups[key], gradient_as_bucket_view=as_view)
        if hook is not None:
            state = hooks.BucketState(groups[key], timeline=True)
            model.register_comm_hook(state, getattr(hooks, hook))
    return model, torch.optim.SGD(model.parameters(), lr=1e-4), state


def _bench_ddp(args, rank, groups, gloo):
    import torch
    import torch.distributed as dist

    g = torch.Generator().manual_seed(rank)
    x = torch.randn(args.batch, args.width, generator=g)
    y = torch.randn(args.batch, args.width, generator=g)
    runs = {}
    for name in args.variants:
        runs[name] = _build(args, name, groups)
        _steps(*runs[name][:2], x, y, args.warmup, runs[name][2])
    params = sum(p.numel() for p in runs[args.variants[0]][0].parameters())
    times = {name: [] for name in runs}
    overlaps = {name: [] for name, r in runs.items() if r[2] is not None}
    cpu = {name: {} for name in overlaps}
    order = list(runs)
    for rnd in range(args.rounds):
        k = rnd % len(order)
        for name in order[k:] + order[:k]:                  # rotate who goes first
            model, opt, state = runs[name]
            dist.barrier(group=gloo)                        # both ranks start the block together
            t, o = _steps(model, opt, x, y, args.steps, state, cpu.get(name))
            times[name] += _max_over_ranks(t, gloo)
            if state is not None:
                overlaps[name] += o
    profiled = {}
    if args.profile:                    # after the timed steps: the profiler slows what it records
        os.makedirs(args.profile, exist_ok=True)
        for name in overlaps:
            path = os.path.join(args.profile, f"ddp-{name}-rank{rank}.json")
            o = _profiled_steps(*runs[name][:2], x, y, args.profile_steps, path)
            profiled[name] = statistics.median(o) if o else None
    buckets = {name: [[i, n, statistics.median(c)] for (i, n), c in sorted(per.items())]
               for name, per in cpu.items()}
    return params, ({name: statistics.median(t) for name, t in times.items()},
                    {name: statistics.median(o) for name, o in overlaps.items()}, profiled,
                    buckets)


def _timed(call, barrier, iters, reps, gloo):
    for _ in range(2):
        call()
    per_rep = []
    for _ in range(reps):
        barrier()
        t0 = time.perf_counter()
        for _ in range(iters):
            call()
        per_rep.append((time.perf_counter() - t0) / iters)
    return _max_over_ranks(per_rep, gloo)


def _bench_allreduce(args, rank, size, hetccl_pg, gloo):
    import torch
    import torch.distributed as dist

    comm = hetccl_pg.communicator
    t = torch.ones(args.size // 4, dtype=torch.float32)
    arr = t.numpy()
    calls = {
        "torch.distributed.all_reduce (hetccl backend)": (
            lambda: dist.all_reduce(t, group=hetccl_pg), lambda: dist.barrier(group=hetccl_pg)),
        "hetccl Communicator.allreduce": (lambda: comm.allreduce(arr), comm.barrier),
        "torch.distributed.all_reduce (gloo)": (
            lambda: dist.all_reduce(t, group=gloo), lambda: dist.barrier(group=gloo)),
    }
    reps = {name: [] for name in calls}
    for rnd in range(args.rounds):
        names = list(calls)
        for name in names[rnd % len(names):] + names[:rnd % len(names)]:
            call, barrier = calls[name]
            reps[name] += _timed(call, barrier, args.iters, args.reps, gloo)
    factor = 2 * (size - 1) / size
    return {name: {"time_us": statistics.median(r) * 1e6,
                   "busbw_GBps": factor * args.size / statistics.median(r) / 1e9}
            for name, r in reps.items()}


def _rank_main(rank, size, port, args, queue):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        import torch
        import torch.distributed as dist
        from datetime import timedelta

        import hetccl.torch  # noqa: F401  (registers "hetccl" if the entry point is not installed)

        torch.set_num_threads(1)
        dist.init_process_group("hetccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=size, timeout=timedelta(seconds=args.timeout))
        hetccl_pg = dist.group.WORLD
        gloo = dist.new_group(backend="gloo")
        result = {}
        if not args.skip_ddp:
            params, (step, overlap, profiled, buckets) = _bench_ddp(
                args, rank, {"hetccl": hetccl_pg, "gloo": gloo}, gloo)
            result["ddp"] = {"params": params, "step_s": step, "overlap": overlap,
                             "overlap_profile": profiled, "bucket_cpu_s": buckets}
        if not args.skip_allreduce:
            result["allreduce"] = _bench_allreduce(args, rank, size, hetccl_pg, gloo)
        dist.destroy_process_group()
        if rank == 0:
            queue.put(("ok", result))
    except BaseException:
        queue.put(("err", f"rank {rank}:\n{traceback.format_exc()}"))
        raise


# ------------------------------------------------------------------------------------------------
# the driver
# ------------------------------------------------------------------------------------------------
def _run(args):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, args.nranks, port, args, queue), daemon=True)
             for r in range(args.nranks)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + args.timeout
    try:
        while True:
            try:
                state, value = queue.get(timeout=1.0)
                break
            except Exception:                       # queue.Empty
                if time.monotonic() > deadline:
                    raise SystemExit(f"ddp_bench: no result within {args.timeout:g} s")
                if all(not p.is_alive() for p in procs):
                    raise SystemExit("ddp_bench: every rank exited without a result")
        if state != "ok":
            raise SystemExit(f"ddp_bench: a rank failed:\n{value}")
        return value
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join(5)


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _report(args, res) -> tuple[str, dict]:
    lines = [f"## DDP and backend overhead, {args.nranks} ranks (bench/ddp_bench.py)", ""]
    summary = {"nranks": args.nranks, "config": vars(args).copy(), **res}
    summary["config"].pop("json", None)
    if "ddp" in res:
        d = res["ddp"]
        step, overlap = d["step_s"], d["overlap"]
        floor = step.get(COMPUTE)
        lines += [f"DDP: MLP {args.width}-{args.hidden}-{args.hidden}-{args.width} "
                  f"({d['params'] / 1e6:.1f}M parameters), batch {args.batch}, default buckets; "
                  f"median of {args.rounds * args.steps} steps per variant (max over ranks), "
                  f"variants interleaved round by round. Compute only: the same model and batch "
                  f"in the {args.nranks} processes at once, no DDP.", "",
                  "| variant | step time (ms) | / compute only | comm. overlapped with backward "
                  "(hook timeline) | (torch.profiler trace) |",
                  "|---|---|---|---|---|"]
        ratios, profiled = {}, d.get("overlap_profile") or {}
        for name, t in step.items():
            ratios[name] = t / floor if floor else None
            r = f"{ratios[name]:.2f}x" if floor else "-"
            o = f"{overlap[name]:.0%}" if name in overlap else "-"
            p = f"{profiled[name]:.0%}" if profiled.get(name) is not None else "-"
            lines.append(f"| {VARIANTS[name][0]} | {t * 1e3:.1f} | {r} | {o} | {p} |")
        summary["ddp"]["ratio_to_compute"] = ratios
        lines.append("")
        for name, per in (d.get("bucket_cpu_s") or {}).items():
            if per:
                total = sum(c for _, _, c in per)
                each = ", ".join(f"#{i} {n / 2**20:.1f} MiB {c * 1e3:.2f} ms" for i, n, c in per)
                lines.append(f"- {VARIANTS[name][0]}: the lane's CPU time per step (rank 0, median per "
                             f"bucket) {total * 1e3:.1f} ms = {each}")
        lines.append("")
        if floor:
            best = min((n for n in step if VARIANTS[n][1] == "hetccl"), key=step.get, default=None)
            if best:
                ok = ratios[best] <= FLOOR_TARGET
                summary["ddp"]["floor_pass"] = ok
                lines += [f"best hetccl variant ({VARIANTS[best][0]}) / compute only = **{ratios[best]:.2f}x** "
                          f"(target <= {FLOOR_TARGET}x): **{_verdict(ok)}**", ""]
        if "hetccl" in step and "gloo" in step:
            ratio = step["hetccl"] / step["gloo"]
            summary["ddp"]["ratio"] = ratio
            summary["ddp"]["pass"] = ratio <= DDP_TARGET
            lines += [f"hetccl / gloo step time = **{ratio:.2f}x** (target <= {DDP_TARGET}x): "
                      f"**{_verdict(ratio <= DDP_TARGET)}**", ""]
    if "allreduce" in res:
        a = res["allreduce"]
        be = a["torch.distributed.all_reduce (hetccl backend)"]["busbw_GBps"]
        own = a["hetccl Communicator.allreduce"]["busbw_GBps"]
        ratio = be / own
        summary["allreduce_ratio"] = ratio
        summary["allreduce_pass"] = ratio >= OVERHEAD_TARGET
        lines += [f"allreduce of {args.size >> 20} MiB float32 (median of {args.rounds * args.reps} "
                  f"repetitions of {args.iters} calls, max over ranks):", "",
                  "| call | time (us) | busbw (GB/s) |", "|---|---|---|"]
        lines += [f"| {name} | {v['time_us']:.0f} | {v['busbw_GBps']:.2f} |" for name, v in a.items()]
        lines += ["", f"backend busbw / hetccl busbw = **{ratio:.2f}** (target >= "
                      f"{OVERHEAD_TARGET}): **{_verdict(ratio >= OVERHEAD_TARGET)}**", ""]
    return "\n".join(lines), summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--nranks", type=int, default=2)
    ap.add_argument("--width", type=int, default=1024, help="MLP input/output width")
    ap.add_argument("--hidden", type=int, default=4096, help="MLP hidden width")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=3, help="untimed DDP steps per backend")
    ap.add_argument("--steps", type=int, default=10, help="timed DDP steps per backend per round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--size", type=_parse_size, default=64 << 20, help="allreduce bytes (64M)")
    ap.add_argument("--iters", type=int, default=5, help="allreduce calls per repetition")
    ap.add_argument("--reps", type=int, default=5, help="allreduce repetitions per round")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help="comma-separated DDP variants to time (default: all): "
                         + ", ".join(VARIANTS))
    ap.add_argument("--skip-ddp", action="store_true")
    ap.add_argument("--skip-allreduce", action="store_true")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds for the whole run")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 1 round, 3 steps, 2 repetitions")
    ap.add_argument("--json", default="", help="also write the figures to this JSON file")
    ap.add_argument("--profile", default="", metavar="DIR",
                    help="after the timed steps, run --profile-steps steps of each hook variant "
                         "under torch.profiler (every thread), write each rank's Chrome trace to "
                         "DIR and report the overlap the trace shows")
    ap.add_argument("--profile-steps", type=int, default=3)
    args = ap.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    if args.quick:
        args.rounds, args.steps, args.warmup, args.reps, args.iters = 1, 3, 1, 2, 3
    text, summary = _report(args, _run(args))
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
