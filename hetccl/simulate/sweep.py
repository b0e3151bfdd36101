"""One simulation: every applicable algorithm's predicted time per size, the runtime's choice, why.

Results are plain dicts (the JSON output), built from a Group (group.py): the prices are the
planners' own (``Group.rows``), the choice is collectives/decide.py's, and the reason is read off
the same pricers (forced, measured by a tuning file, device islands, or the lowest price).
"""
from __future__ import annotations

from ..benchmark import format as fmt
from ..memory.symmetric import AUTO_MIN


def why(group, collective, nbytes, key, rows) -> str:
    """Why the runtime takes ``key`` here, in the words of comm.explain()."""
    t = group.tuner
    if collective in t.forced:
        return f"forced by HETCCL_ALGO ({t.forced[collective]})"
    if key == "symmetric":
        fifo = min((v, k) for k, v in rows.items() if k != key)
        return (f"plain buffers reused: registered automatically (single copy); FIFO path {fifo[1]} "
                f"+{(fifo[0] / rows[key] - 1) * 100:.0f}%")
    m = t.measured(collective, nbytes)
    if m is not None:
        return f"measured fastest at the nearest tuned size ({m})"
    isl = group.islands
    if isl is not None and key.startswith("islands") and isl.device:
        return "device islands always compose (only their forms reach device buffers); cheapest form"
    ranked = sorted(rows.items(), key=lambda kv: kv[1])
    if len(ranked) > 1 and ranked[0][0] == key:
        nxt, tn = ranked[1]
        return f"lowest predicted time; next {nxt} +{(tn / ranked[0][1] - 1) * 100:.0f}%"
    if ranked and ranked[0][0] != key:
        return f"the planners' pick ({ranked[0][0]} is priced lower by the {_who(group, ranked[0][0])})"
    return "the only algorithm that applies"


def _who(group, name) -> str:
    return "island pricer" if name.startswith("islands") else "topology planner"


def simulate(group, collective: str, sizes) -> dict:
    """{"collective", "ranks", "topology", "cost_model", "islands", "sizes": [row, ...]}."""
    p = group.p
    factor = fmt.busbw_factor(collective, p) if p > 1 else 1.0
    out = []
    for n in sizes:
        rows = group.rows(collective, n)
        name, form = group.decide(collective, n)
        key = f"islands:{form}" if form else name
        t = rows.get(key)
        if t is None and rows:
            t = min(rows.values())
        algbw = n / t / 1e9 if t else 0.0
        out.append({"size": n, "choice": key, "time_s": t, "algbw": algbw, "busbw": algbw * factor,
                    "why": why(group, collective, n, key, rows), "algorithms": rows})
    doc = {"collective": collective, "ranks": p, "topology": group.topo.summary(),
           "cost_model": group.model.describe(), "sizes": out}
    if group.shared:           # one all-c2c host: automatic registration applies (docs/simulate.md)
        doc["buffers"] = ("plain, reused by every call: registered automatically from "
                          f"{AUTO_MIN >> 20} MiB where the "
                          "symmetric path is priced faster" if group.reused else
                          "plain, new at every call (--fresh-buffers): never registered")
    if group.plan is not None and group.plan.fabric is not None:
        doc["network"] = group.plan.fabric.describe()
    if group.islands is not None:
        from ..bridges.formation import describe
        doc["islands"] = describe(group.islands.islands)
    return doc


def algorithms_of(doc) -> list[str]:
    names = []
    for row in doc["sizes"]:
        for k in row["algorithms"]:
            if k not in names:
                names.append(k)
    return names
