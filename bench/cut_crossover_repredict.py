"""Re-decide the quiet crossover run 2026-12-07m (3 and 4 ranks, c2c; bench/crossover_repredict.py)
with the cache cut replaced: as recorded (16 MiB), the private level (1 MiB), and the measured cut
(probe.fit_cut) emulated from the sweep's own forced ring allreduce at the middle ring's size
(512 KiB at 3 and 4 ranks), which the recorded probe did not time. No job runs.

    PYTHONPATH=. python bench/cut_crossover_repredict.py
"""
import json, os, shutil, subprocess, sys, tempfile
HERE = os.path.dirname(os.path.abspath(__file__))
from hetccl.collectives import probe
from hetccl.collectives.cost_model import LinkCost
from hetccl.simulate.costs import STREAM_MIN, _fifo
src = os.path.join(HERE, 'results', 'crossover-2026-12-07m-raw')
MIB = 1 << 20
def ring_at(n, size):
    d = json.load(open(f'{src}/algos-n{n}.json'))
    for r in d['rows']:
        if r['collective'] == 'allreduce' and r['size'] == size and r.get('variant') == 'ring':
            return r['time_us'] * 1e-6
    return None
def cuts_for(n):
    e = json.load(open(f'{src}/cache-n{n}/hetccl/cost-model.json'))['entries']
    (k, v), = [(k, v) for k, v in e.items() if v.get('local') == n]
    share = n / 2
    mid = probe.mid_ring_bytes(share, MIB, 16 * MIB)
    t = ring_at(n, mid)
    raw = {(x[:-3] + '_s' if x.endswith('_us') else x): (y * 1e-6 if x.endswith('_us') else y) for x, y in v['raw'].items()}
    raw.update(allreduce_mid_s=t, allreduce_mid_bytes=mid)
    facts = LinkCost(0.0, 0.0, 0.0, fifo=True, stream_min=STREAM_MIN, fifo_bytes=_fifo(n), share=share)
    cut = probe.fit(raw, n, facts, cache_bytes=16 * MIB, network=False, private_bytes=MIB).cache_bytes
    return mid, t, cut
fitted = {n: cuts_for(n) for n in (3, 4)}
for n, (mid, t, cut) in fitted.items():
    print(f"# {n} ranks: the sweep's ring allreduce at {mid >> 10} KiB {t * 1e6:.0f} us -> measured cut {cut / MIB:.2f} MiB")
for label, pick in (("as recorded, 16 MiB", lambda n: None), ("the private level, 1 MiB", lambda n: MIB),
                    ("the measured cut (emulated)", lambda n: fitted[n][2])):
    tmp = tempfile.mkdtemp(prefix='xo-cut-')
    dst = os.path.join(tmp, 'raw'); shutil.copytree(src, dst)
    for n in (3, 4):
        p = f'{dst}/cache-n{n}/hetccl/cost-model.json'
        doc = json.load(open(p))
        for v in doc['entries'].values():
            if pick(n) is not None:
                v['cache_bytes'] = float(pick(n))
        json.dump(doc, open(p, 'w'))
    out = subprocess.run([sys.executable, os.path.join(HERE, 'crossover_repredict.py'), dst, '--nranks', '3,4'],
                         capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=os.path.dirname(HERE)))
    print(f"== {label}")
    print("\n".join(l for l in out.stdout.splitlines() if l.startswith('#') or 'total' in l.lower() or '->' in l))
    if out.returncode not in (0, 1): print(out.stderr[-2000:])
    shutil.rmtree(tmp)
