import sys, statistics as st
rows = {}
for f in sys.argv[1:]:
    for l in open(f):
        p = l.split()
        if p[3] != "scatter" and p[3] != "broadcast":
            continue
        key = (f[-9:-8], p[0].split("/")[-1], p[1], p[2])
        rows.setdefault(key, {})[(p[3], p[4])] = list(map(float, p[5:]))
def p10(v): v = sorted(v); return v[len(v) // 10]
out = {}
for (f, tree, n, run), d in rows.items():
    for a, b in ((("scatter", "alloc"), ("scatter", "out")), (("scatter", "np.empty"), ("scatter", "out")),
                 (("broadcast", "fresh"), ("broadcast", "copy;in"))):
        if a in d and b in d:
            # per round: the cases of one round ran back to back, so pair them round by round
            diffs = [x - y for x, y in zip(d[a], d[b])]
            out.setdefault((tree, n, a[0] + " " + a[1] + " - " + b[1]), []).append((min(d[a]) - min(d[b]), st.median(diffs)))
for k in sorted(out):
    v = out[k]
    print(f"{k[0]:<6} {k[1]} {k[2]:<28} runs {len(v):2}  per-run (min-min): median {st.median(x for x, _ in v):+.2f}  "
          f"per-run median of round-paired diffs: median {st.median(y for _, y in v):+.2f}")
