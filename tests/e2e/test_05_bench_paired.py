"""test_05_bench_paired: bench/paired.py, the paired round-by-round comparison that decides
whether moat's p99 is worse than HAProxy's. Its interval and test are checked against exact
binomial sums, and its verdicts on made-up runs whose answer is known."""

import itertools
import json
import math
import subprocess
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import paired  # noqa: E402


def coverage(n, k):
    """P(x_(k) <= median <= x_(n-k+1)) for a continuous distribution: 1 - 2 P(Bin(n, 1/2) < k)."""
    return 1.0 - 2.0 * sum(math.comb(n, j) for j in range(k)) / 2.0 ** n


def test_median_ci_is_the_widest_order_statistics_with_95_percent():
    assert paired.median_ci([1.0] * 5) is None  # 5 rounds: even [min, max] covers only 93.75%
    for n in range(6, 60):
        xs = [float(i) for i in range(n)][::-1]  # unsorted on purpose
        lo, hi = paired.median_ci(xs)
        k = int(lo) + 1
        assert hi == n - k, (n, lo, hi)
        assert coverage(n, k) >= 0.95 > coverage(n, k + 1), n
    assert paired.median_ci([5.0, 1.0, 3.0, 2.0, 6.0, 4.0]) == (1.0, 6.0)
    assert paired.median_ci([float(i) for i in range(1, 13)]) == (3.0, 10.0)


def test_sign_test_matches_the_binomial():
    assert paired.sign_test(5, 10) == 1.0
    assert math.isclose(paired.sign_test(8, 10), 2 * (1 + 10 + 45) / 1024)
    assert math.isclose(paired.sign_test(2, 10), 2 * (1 + 10 + 45) / 1024)
    assert math.isclose(paired.sign_test(0, 6), 2 / 64)


def test_verdicts_lower_and_higher_is_better():
    assert paired.verdict((0.8, 0.99), -1) == "no worse"
    assert paired.verdict((0.8, 1.01), -1) == "unresolved"
    assert paired.verdict((1.01, 1.2), -1) == "worse"
    assert paired.verdict((1.0, 1.3), +1) == "no worse"
    assert paired.verdict((0.9, 1.3), +1) == "unresolved"
    assert paired.verdict((0.7, 0.9), +1) == "worse"
    assert paired.verdict(None, -1) == "too few rounds"


def fake_run(tmp_path, name, rounds, moat_p99, haproxy_p99, ok=True):
    d = tmp_path / name
    d.mkdir()
    rows = []
    for r in range(1, rounds + 1):
        for srv, p99 in (("moat", moat_p99(r)), ("haproxy", haproxy_p99(r))):
            rows.append({"set": "proxy", "round": r, "workload": "1k-keepalive", "server": srv,
                         "p99_us": p99, "req_per_cpu_s": 1000.0, "ok": ok or srv == "moat"})
    (d / "runs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    (d / "meta.json").write_text(json.dumps({"date": "today", "command": "fake",
                                             "versions": {"moat": "moat test"}}))
    return d


def run_paired(*dirs):
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "paired.py"), *map(str, dirs)],
                         capture_output=True, text=True, check=True, timeout=30)
    return {tuple(c.strip() for c in line.strip("|").split("|"))[1]: line
            for line in out.stdout.splitlines() if line.startswith("| 1k-keepalive")}


def test_pooled_runs_and_the_verdicts(tmp_path):
    # moat 10% faster at p99 in every round of two 4-round runs: 8 pairs, interval below 1
    a = fake_run(tmp_path, "a", 4, lambda r: 900.0 + r, lambda r: 1000.0 + r)
    b = fake_run(tmp_path, "b", 4, lambda r: 905.0 + r, lambda r: 1001.0 + r)
    rows = run_paired(a, b)
    assert "| 8 | 8 |" in rows["p99"] and rows["p99"].endswith("| no worse |")
    # equal CPU in every round: ratio 1.00 everywhere, which counts as no worse (>= 1)
    assert rows["req/CPU-s"].endswith("| no worse |")
    # one run alone has too few pairs for an interval
    assert run_paired(a)["p99"].endswith("| too few rounds |")
    # moat better in half the rounds and worse in the others: unresolved, not a win
    c = fake_run(tmp_path, "c", 12, lambda r: 900.0 if r % 2 else 1100.0, lambda r: 1000.0)
    assert run_paired(c)["p99"].endswith("| unresolved |")
    # worse in every round
    d = fake_run(tmp_path, "d", 8, lambda r: 1200.0, lambda r: 1000.0)
    assert run_paired(d)["p99"].endswith("| worse |")
    # a round where the peer's run failed pairs with nothing
    e = fake_run(tmp_path, "e", 8, lambda r: 900.0, lambda r: 1000.0, ok=False)
    assert "1k-keepalive" not in "".join(run_paired(e).values())


def test_no_pair_is_counted_twice():
    runs = {"x": [{"set": "proxy", "round": r, "workload": w, "server": s, "ok": True,
                   "p99_us": 1.0, "req_per_cpu_s": 1.0}
                  for r, w, s in itertools.product((1, 2), ("1k", "128k"), ("moat", "haproxy", "limit"))]}
    prs = paired.pairs(runs, "moat", "haproxy", "proxy")
    assert sorted(prs) == ["128k", "1k"] and all(len(v) == 2 for v in prs.values())
