"""Paired comparison of two servers over the rounds of one or more bench runs.

    bench/paired.py [--a moat] [--b haproxy] [--set proxy] OUTDIR [OUTDIR ...]

Within a round the servers run one after the other against the same origin, so each round
gives one pair (A's figure, B's figure) measured under about the same noise. For every
workload this prints, over all pairs of the given runs:

- how many rounds A did at least as well as B (p99: lower; req/CPU-s: higher);
- the median of A / B in the same round, with a distribution-free 95% confidence interval
  (order statistics of the binomial(n, 1/2): no assumption on how the noise is distributed);
- the two-sided sign-test p-value of "A and B are equally likely to win a round".

A / B in one round equals (A / limit) / (B / limit) with the same round's limit, so this is the
per-round comparison of the two ratios to limit that the tables show.

Verdict per row, on p99: "no worse" when the whole interval lies at or below 1.00, "worse"
when it lies above 1.00, "unresolved" when it contains both; likewise for req/CPU-s (at or
above 1.00). Pool only runs of the same source: the moat version each run recorded is
printed so that the reader can check.
"""

import argparse
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

# p99: lower is better; req/CPU-s: higher is better
FIELDS = (("p99_us", "p99", -1), ("req_per_cpu_s", "req/CPU-s", +1))


def median_ci(xs, conf=0.95):
    """Distribution-free interval for the median: [x_(k), x_(n-k+1)] with the largest k such
    that P(Bin(n, 1/2) < k) <= (1 - conf) / 2. None when n is too small for conf."""
    xs = sorted(xs)
    n = len(xs)
    tail = (1.0 - conf) / 2.0
    cum, k = 0.0, 0
    for j in range(n + 1):
        p = math.comb(n, j) / 2.0 ** n
        if cum + p > tail:
            break
        cum += p
        k = j + 1
    if k < 1:
        return None
    return xs[k - 1], xs[n - k]


def sign_test(wins, n):
    """Two-sided sign-test p-value for <wins> of <n> under p = 1/2."""
    if n == 0:
        return 1.0
    lo = min(wins, n - wins)
    return min(1.0, 2.0 * sum(math.comb(n, j) for j in range(lo + 1)) / 2.0 ** n)


def verdict(ci, better):
    if ci is None:
        return "too few rounds"
    lo, hi = ci
    if better < 0:
        return "no worse" if hi <= 1.0 else "worse" if lo > 1.0 else "unresolved"
    return "no worse" if lo >= 1.0 else "worse" if hi < 1.0 else "unresolved"


def pairs(runs_by_dir, a, b, set_):
    """{workload: [(A row, B row), ...]} over every round where both runs were ok."""
    out = defaultdict(list)
    for d, runs in runs_by_dir.items():
        by = defaultdict(dict)
        for r in runs:
            if r["set"] == set_ and r["ok"] and r["server"] in (a, b):
                by[(r["workload"], r["round"])][r["server"]] = r
        for (wl, _), v in sorted(by.items()):
            if a in v and b in v:
                out[wl].append((v[a], v[b]))
    return out


def compare(prs, field, better):
    xs = [ra[field] / rb[field] for ra, rb in prs if ra[field] and rb[field]]
    n = len(xs)
    wins = sum(1 for x in xs if (x <= 1.0 if better < 0 else x >= 1.0))
    ci = median_ci(xs) if xs else None
    return {"n": n, "wins": wins, "median": statistics.median(xs) if xs else None, "ci": ci,
            "p": sign_test(wins, n), "verdict": verdict(ci, better)}


def render(runs_by_dir, metas, a, b, set_):
    lines = [f"Paired rounds, {a} / {b} in the same round ({set_} set), runs:", ""]
    for d in runs_by_dir:
        m = metas.get(d) or {}
        lines.append(f"- `{d}`: {m.get('date', '?')}, {m.get('versions', {}).get('moat', '?')}, "
                     f"`{m.get('command', '?')}`")
    lines += ["", f"| row | figure | rounds | {a} as good or better | median {a}/{b} | 95% CI "
              "| sign test p | verdict |", "|---|---|--:|--:|--:|--:|--:|---|"]
    for wl, prs in pairs(runs_by_dir, a, b, set_).items():
        for field, name, better in FIELDS:
            c = compare(prs, field, better)
            if not c["n"]:
                continue
            ci = "-" if c["ci"] is None else f"{c['ci'][0]:.3f}-{c['ci'][1]:.3f}"
            lines.append(f"| {wl} | {name} | {c['n']} | {c['wins']} | {c['median']:.3f} | {ci} "
                         f"| {c['p']:.2g} | {c['verdict']} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("outdirs", nargs="+", type=Path)
    ap.add_argument("--a", default="moat")
    ap.add_argument("--b", default="haproxy")
    ap.add_argument("--set", default="proxy")
    o = ap.parse_args()
    runs_by_dir, metas = {}, {}
    for d in o.outdirs:
        runs_by_dir[str(d)] = [json.loads(line) for line in (d / "runs.jsonl").read_text().splitlines()
                               if line.strip()]
        mp = d / "meta.json"
        metas[str(d)] = json.loads(mp.read_text()) if mp.exists() else None
    print(render(runs_by_dir, metas, o.a, o.b, o.set), end="")


if __name__ == "__main__":
    main()
