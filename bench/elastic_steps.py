"""Steps of work examples/elastic_ddp.py loses per failure (target: at most one), over many
failures: ranks killed from inside mid-backward (``--kill R@S``, rank 0 included) and from the
outside at whatever moment of whatever step they are in.

    PYTHONPATH=$PWD python bench/elastic_steps.py --runs 4 --steps 600 --seed 1

Each run is one 4-rank job under ``hetccl run --keep-going`` that loses three ranks, so it ends on
one: the first run's victims die inside (launch ranks 2, 0, 3 at steps 5, 15, 25: rank 0 served
torch's store), every other run's die from the outside (SIGKILL from this script once it has read
a random step's line, plus a random delay, victims drawn from the live ranks, rank 0 included;
the launcher's output lags the ranks by a few steps, so kill steps are drawn from the first quarter). Per failure,
the example prints ``steps lost``: the most steps a survivor had started but did not keep (1: the
step in flight; a survivor one step ahead gives its state to the others, so nothing it finished is
redone). Independently of that figure, the run must end with ``--steps`` steps and parameters
equal to one process's run without failures (``--reference``): no step skipped or done twice.
"""
from __future__ import annotations

import argparse
import os
import random
import re
import signal
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from tests.launcher import start_command, stop_command  # noqa: E402

EXAMPLE = os.path.join(ROOT, "examples", "elastic_ddp.py")
_PREFIX = r"^(?:\[\d+\]: )?"
STEP = re.compile(_PREFIX + r"step +(\d+) loss ([\d.]+) ranks (\d+)$")
PID = re.compile(_PREFIX + r"launch rank (\d+) of 4: pid (\d+)$")
RECOVERY = re.compile(_PREFIX + r"recovery (\d+): lost launch ranks \[([\d, ]*)\]; (\d+) ranks left .*"
                      r"shrink ([\d.]+) s, recovery ([\d.]+) s; resumed at step (\d+); steps lost (\d+)$", re.M)
FINAL = re.compile(_PREFIX + r"final: (\d+) ranks \[[^\]]*\], (\d+) steps, (\d+) recoveries; parameters identical "
                   r"on every survivor: (\w+)$", re.M)
REFERENCE = re.compile(_PREFIX + r"reference \(one process, no failure\): max \|difference\| (\S+)$", re.M)


def one_run(steps, kills, outside, rng, timeout):
    """One job; ``outside``: [(step, delay)] at which this script kills a random live rank."""
    cmd = [sys.executable, "-m", "hetccl", "run", "-n", "4", "--keep-going", "--", sys.executable,
           EXAMPLE, "--reference", "--steps", str(steps)] + [a for k in kills for a in ("--kill", k)]
    p = start_command(cmd, env={"HETCCL_PEER_TIMEOUT": "5", "OMP_NUM_THREADS": "1"})
    errors = []
    drain = threading.Thread(target=lambda: errors.append(p.stderr.read()), daemon=True)
    drain.start()
    lines, pids, killed, todo = [], {}, [], sorted(outside)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = p.stdout.readline()
            if not line:
                break
            lines.append(line)
            text = line.rstrip("\n")
            m = PID.match(text)
            if m:
                pids[int(m.group(1))] = int(m.group(2))
            m = STEP.match(text)
            if m and todo and int(m.group(1)) >= todo[0][0]:
                _, delay = todo.pop(0)
                time.sleep(delay)
                live = [r for r in sorted(pids) if r not in killed]
                victim = rng.choice(live)
                os.kill(pids[victim], signal.SIGKILL)
                killed.append(victim)
                lines.append(f"# bench: killed launch rank {victim} from the outside after step "
                             f"{m.group(1)} + {delay:.3f} s\n")
        lines.append(p.stdout.read())
        p.wait(max(1.0, deadline - time.monotonic()))
        drain.join(10)
    finally:
        stop_command(p)
    return "".join(lines), "".join(errors), p.returncode, killed, cmd


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=300)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    print(f"# bench/elastic_steps.py: seed {a.seed}, load {os.getloadavg()[0]:.1f} at the start, "
          f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}", flush=True)
    per_failure, bad = [], 0
    for run in range(a.runs):
        if run == 0:
            kills, outside = ["2@5", "0@15", "3@25"], []
        else:
            at = sorted(rng.sample(range(3, a.steps // 4), 3))
            kills, outside = [], [(s, round(rng.uniform(0.0, 0.05), 3)) for s in at]
        out, err, code, killed, cmd = one_run(a.steps, kills, outside, rng, a.timeout)
        shown = ["python" if c == sys.executable else os.path.relpath(c, ROOT) if c.startswith(ROOT) else c
                 for c in cmd]
        print(f"\n## run {run + 1}: {' '.join(shown)}"
              + (f"; outside kills after steps {[s for s, _ in outside]}" if outside else ""), flush=True)
        for line in out.splitlines():
            if line.startswith("# bench") or RECOVERY.match(line) or FINAL.match(line) or \
                    REFERENCE.match(line) or "killing myself" in line:
                print("  " + line)
        recs = [(m.group(2), int(m.group(7)), float(m.group(4)), float(m.group(5)))
                for m in RECOVERY.finditer(out)]
        final, ref = FINAL.search(out), REFERENCE.search(out)
        ok = (code == 0 and final is not None and int(final.group(2)) == a.steps and final.group(4) == "yes"
              and ref is not None and float(ref.group(1)) < 1e-5
              and sorted(int(x) for r in recs for x in r[0].split(",")) == sorted(killed or [0, 2, 3]))
        if not ok:
            bad += 1
            print(f"  NOT OK: exit {code}, {len(recs)} recoveries\n{out[-3000:]}\n{err[-3000:]}")
        print(f"  launcher: {err.strip().splitlines()[-1] if err.strip() else '(nothing)'}")
        per_failure += [r[1] for r in recs]
    print(f"\n# {len(per_failure)} recoveries in {a.runs} runs: steps lost per recovery "
          f"{per_failure}; max {max(per_failure) if per_failure else 'n/a'} (target <= 1); "
          f"runs not ok: {bad}")
    print(f"# load {os.getloadavg()[0]:.1f} at the end, {time.strftime('%H:%M:%S UTC', time.gmtime())}")
    sys.exit(1 if bad or any(x > 1 for x in per_failure) else 0)


if __name__ == "__main__":
    main()
