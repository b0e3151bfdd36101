# Where the hand-over's bytes (HANDOVER_PASS) change the islands job's route choice, on recorded
# validation runs (no job runs): each pricing's choice (simulate.validate.predict: the runtime's
# decide on the job's model and bridge prices) beside the measured times of the flat algorithm
# (the auto row, when the job ran it) and of the composed form (the islands row).
#   PYTHONPATH=$PWD python bench/results/isl-choice-recorded.py FILES... > bench/results/isl-choice-recorded-2026-12-08.txt
import json
import sys
import hetccl.collectives.islands as I
from hetccl.simulate.validate import predict
name = "islands mpi(0,1)+hetccl(2,3)"
after = I.HANDOVER_PASS
changed = better = worse = 0
for f in sys.argv[1:]:
    rec = json.load(open(f))["records"][name]
    I.HANDOVER_PASS = 0.0
    before_p = predict(rec)
    I.HANDOVER_PASS = after
    after_p = predict(rec)
    meas = {(r["size"], r["variant"]): (r["time_us"], r["algo"]) for r in rec["rows"]}
    for (n, v), (_, cb) in sorted(before_p.items()):
        if v != "auto":
            continue
        ca = after_p[(n, v)][1]
        t_auto, ran = meas[(n, "auto")]
        t_isl = meas[(n, "islands")][0]
        t_flat = t_auto if ran != "islands" else None
        if cb.split(":")[0] == ca.split(":")[0]:
            continue
        changed += 1
        tb = t_isl if cb.startswith("islands") else t_flat
        ta = t_isl if ca.startswith("islands") else t_flat
        verdict = "?" if tb is None or ta is None else ("better" if ta < tb else "worse")
        better += verdict == "better"
        worse += verdict == "worse"
        print(f"{f.split('/')[-1]:<36} {n >> 10:>6}K before {cb:<16} after {ca:<16} ran {ran:<14} "
              f"flat {t_flat if t_flat is None else round(t_flat, 1)} us, islands {t_isl:.1f} us: {verdict}")
print(f"# {changed} choices changed: {better} to the faster route, {worse} to the slower (HANDOVER_PASS 0 -> {after})")
