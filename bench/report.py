"""Tables from a bench run: bench/report.py OUTDIR [--results bench/RESULTS.md]

Reads OUTDIR/runs.jsonl (one JSON object per wrk run, written by run.sh) and OUTDIR/meta.json,
prints one markdown table per (scenario set, workload) to stdout and, with --results, writes a
complete RESULTS.md (date, command, machine, versions, tables).

Every ratio is computed per round against `limit` measured in the same round, then the median
of those ratios is taken (not the ratio of medians): the machine is shared and noisy, and a
round's servers saw roughly the same noise."""

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

import paired

SERVER_ORDER = ["limit", "moat", "moat_b", "moat_nofwd", "haproxy", "nginx",
                "moat_cache", "varnish", "haproxy_cache", "nginx_cache",
                "moat_tls", "haproxy_tls", "nginx_tls", "moat_lb", "haproxy_lb", "nginx_lb",
                "haproxy_h2", "nginx_h2"]

# Figures the TLS issue quotes, measured earlier on this machine (per CPU-second of the server;
# keep-alive: ratio to the plain-HTTP limit per CPU-second). Shown under the tls tables.
TLS_REFERENCE = {
    "hs-full-ecdsa": {"nginx_tls": 2660, "haproxy_tls": 2520},
    "hs-full-rsa": {"nginx_tls": 1660, "haproxy_tls": 1530},
    "hs-resumed": {"nginx_tls": 3450, "haproxy_tls": 2890},
    "tls-1k-keepalive": {"nginx_tls": 0.62, "haproxy_tls": 0.51},
}


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt_num(x, nd=0):
    if x is None:
        return "-"
    return f"{x:,.{nd}f}"


def fmt_ratio(x):
    return "-" if x is None else f"{x:.2f}x"


def tables(runs):
    """{(set, workload): {server: stats}} plus workload order."""
    by = defaultdict(lambda: defaultdict(dict))  # (set, wl) -> server -> round -> row
    order = []
    for r in runs:
        key = (r["set"], r["workload"])
        if key not in order:
            order.append(key)
        by[key][r["server"]][r["round"]] = r
    out = {}
    for key in order:
        servers = by[key]
        limit = servers.get("limit", {})
        stats = {}
        for srv, rounds in servers.items():
            ok = {rnd: r for rnd, r in rounds.items() if r["ok"]}
            ratios = defaultdict(list)
            for rnd, r in ok.items():
                lim = limit.get(rnd)
                if not lim or not lim["ok"]:
                    continue
                for f in ("rps", "p50_us", "p99_us", "req_per_cpu_s"):
                    if r[f] and lim[f]:
                        ratios[f].append(r[f] / lim[f])
            # the origin's CPU per forwarded request (core 1, shared with wrk): what this
            # server's way of talking to the origin costs the other side (older runs lack it)
            origin_us = [r["origin_cpu_s"] * 1e6 / r["requests"] for r in ok.values()
                         if r.get("origin_cpu_s") is not None and r["requests"]]
            stats[srv] = {
                "n_ok": len(ok), "n": len(rounds), "rounds": ok,
                "origin_us": med(origin_us) if srv != "limit" else None,
                "why": sorted({r["why"] for r in rounds.values() if not r["ok"]}),
                **{f: med([r[f] for r in ok.values()])
                   for f in ("rps", "p50_us", "p99_us", "req_per_cpu_s", "cpu_s")},
                **{f + "_ratio": med(ratios[f]) for f in ("rps", "p50_us", "p99_us", "req_per_cpu_s")},
            }
        out[key] = stats
    return order, out


def render_tables(order, stats):
    lines = []
    for key in order:
        set_, wl = key
        # cache-hit and TLS tables also show the CPU cost of one request in µs (1e6 /
        # req-per-CPU-s; on the handshake rows, one request = one connection = one handshake)
        us = set_ in ("cache", "tls", "h2")
        ous = set_ in ("proxy", "lb")
        lines.append(f"### {set_}: {wl}")
        lines.append("")
        lines.append("| server | req/s | ×limit | p50 ms | ×limit | p99 ms | ×limit | req/CPU-s | ×limit |"
                     + (" µs CPU/req |" if us else "") + (" origin µs CPU/req |" if ous else "")
                     + " ok runs |")
        lines.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|" + ("--:|" if us else "")
                     + ("--:|" if ous else "") + "--:|")
        srvs = sorted(stats[key], key=lambda s: (SERVER_ORDER.index(s) if s in SERVER_ORDER else 99, s))
        for s in srvs:
            st = stats[key][s]
            p50 = None if st["p50_us"] is None else st["p50_us"] / 1000
            p99 = None if st["p99_us"] is None else st["p99_us"] / 1000
            cpu_us = 1e6 / st["req_per_cpu_s"] if st["req_per_cpu_s"] else None
            lines.append(
                f"| {s} | {fmt_num(st['rps'])} | {fmt_ratio(st['rps_ratio'])} "
                f"| {fmt_num(p50, 2)} | {fmt_ratio(st['p50_us_ratio'])} "
                f"| {fmt_num(p99, 2)} | {fmt_ratio(st['p99_us_ratio'])} "
                f"| {fmt_num(st['req_per_cpu_s'])} | {fmt_ratio(st['req_per_cpu_s_ratio'])} "
                + (f"| {fmt_num(cpu_us, 1)} " if us else "")
                + (f"| {fmt_num(st['origin_us'], 1)} " if ous else "")
                + f"| {st['n_ok']}/{st['n']} |")
        lines.append("")
        for s in srvs:
            for why in stats[key][s]["why"]:
                lines.append(f"- **{s} FAILED** a run: {why}")
        if any(stats[key][s]["why"] for s in srvs):
            lines.append("")
        lines.extend(target_lines(set_, stats[key], wl))
    return "\n".join(lines)


def target_lines(set_, st, wl=""):
    """The bars: proxy set: moat's req/CPU-s ratio >= HAProxy's, p99 no worse than HAProxy.
    Cache set: moat_cache's req/CPU-s ratio >= 1.1x haproxy_cache's, and on the 1 KiB
    keep-alive hit row at most 20 µs of CPU per hit (>= 50,000 req/CPU-s)."""
    if set_ == "cache":
        return cache_target_lines(st, wl)
    if set_ == "tls":
        return tls_lines(st, wl)
    if set_ == "h2":
        return h2_target_lines(st)
    if set_ == "lb":
        return lb_target_lines(st)
    if set_ != "proxy":
        return []
    m, h = st.get("moat"), st.get("haproxy")
    if not m or not h or m["req_per_cpu_s_ratio"] is None or h["req_per_cpu_s_ratio"] is None:
        return ["Target (moat ≥ HAProxy per CPU-second, p99 no worse): needs both moat and HAProxy rows.", ""]
    # p99 is compared like everything else: as the median over rounds of the ratio to limit.
    cpu_ok = m["req_per_cpu_s_ratio"] >= h["req_per_cpu_s_ratio"]
    p99_ok = (m["p99_us_ratio"] is not None and h["p99_us_ratio"] is not None
              and m["p99_us_ratio"] <= h["p99_us_ratio"])
    verdict = "MET" if cpu_ok and p99_ok else "NOT MET"
    lines = [f"Target: **{verdict}** (per CPU-second moat {m['req_per_cpu_s_ratio']:.2f}x vs HAProxy "
             f"{h['req_per_cpu_s_ratio']:.2f}x of limit {'✓' if cpu_ok else '✗'}; p99 moat "
             f"{m['p99_us_ratio']:.2f}x vs HAProxy {h['p99_us_ratio']:.2f}x of limit "
             f"{'✓' if p99_ok else '✗'})", ""]
    # Not the verdict, a reading aid: the same comparison round by round, moat against the
    # HAProxy run of the same round instead of each against its own limit run.
    both = sorted(set(m.get("rounds", {})) & set(h.get("rounds", {})))
    c = paired.compare([(m["rounds"][r], h["rounds"][r]) for r in both], "p99_us", -1)
    if c["n"]:
        ci = c["ci"]
        ci_txt = (f" (95% interval {ci[0]:.2f}-{ci[1]:.2f})" if ci else
                  " (too few rounds for a 95% interval: 6 at least; pool runs with bench/paired.py)")
        lines[-1:-1] = ["", f"Round by round (not the verdict): moat's p99 ≤ HAProxy's in {c['wins']} of "
                        f"{c['n']} rounds; median of moat's p99 / HAProxy's in the same round "
                        f"{c['median']:.2f}{ci_txt}."]
    return lines


def lb_target_lines(st):
    """The lb set: moat_lb's req/CPU-s ratio to limit >= haproxy_lb's (the issue: >= 1.0x
    HAProxy across a pool of 4 origins)."""
    m, h = st.get("moat_lb"), st.get("haproxy_lb")
    if not m or not h or m["req_per_cpu_s_ratio"] is None or h["req_per_cpu_s_ratio"] is None:
        return ["Target (moat_lb ≥ 1.0x haproxy_lb per CPU-second): needs both rows.", ""]
    ok = m["req_per_cpu_s_ratio"] >= h["req_per_cpu_s_ratio"]
    return [f"Target: **{'MET' if ok else 'NOT MET'}** (per CPU-second moat_lb "
            f"{m['req_per_cpu_s_ratio']:.2f}x vs haproxy_lb {h['req_per_cpu_s_ratio']:.2f}x of limit "
            f"{'✓' if ok else '✗'}; pairs round by round: bench/paired.py --set lb --a moat_lb "
            f"--b haproxy_lb)", ""]


def cache_target_lines(st, wl):
    m, h = st.get("moat_cache"), st.get("haproxy_cache")
    if not m or not h or m["req_per_cpu_s_ratio"] is None or h["req_per_cpu_s_ratio"] is None:
        return ["Target (moat_cache ≥ 1.1x haproxy_cache per CPU-second): needs both rows.", ""]
    want = 1.1 * h["req_per_cpu_s_ratio"]
    ok = m["req_per_cpu_s_ratio"] >= want
    parts = [f"per CPU-second moat_cache {m['req_per_cpu_s_ratio']:.2f}x vs 1.1 × haproxy_cache "
             f"{h['req_per_cpu_s_ratio']:.2f}x = {want:.2f}x of limit {'✓' if ok else '✗'}"]
    if wl == "hit-1k-keepalive":
        us = 1e6 / m["req_per_cpu_s"] if m["req_per_cpu_s"] else None
        us_ok = us is not None and us <= 20.0
        ok = ok and us_ok
        parts.append(f"{'-' if us is None else f'{us:.1f}'} µs CPU per 1 KiB hit vs ≤ 20 µs "
                     f"{'✓' if us_ok else '✗'}")
    return [f"Target: **{'MET' if ok else 'NOT MET'}** ({'; '.join(parts)})", ""]


def tls_lines(st, wl):
    """Under a tls table: what tls_load counted (so the table shows which kind of handshake it
    measured), moat_tls per CPU-second against each peer, and the issue's reference figures.
    No bar: the issue sets none for TLS."""
    lines = []
    counted = []
    for srv in sorted(st, key=lambda s: (SERVER_ORDER.index(s) if s in SERVER_ORDER else 99, s)):
        rows = list(st[srv].get("rounds", {}).values())
        if srv == "limit" or not rows or rows[0].get("handshakes") is None:
            continue  # limit is plain HTTP; wrk rows have no handshake counts
        full = sum(r.get("full") or 0 for r in rows)
        res = sum(r.get("resumed") or 0 for r in rows)
        key = rows[0].get("key_type")
        counted.append(f"{srv} {full:,} full + {res:,} resumed ({key})")
    if counted:
        lines.append("Handshakes counted by tls_load over the ok runs (SSL_session_reused): "
                     + "; ".join(counted) + ". limit: plain HTTP, a new connection per request.")
    m = st.get("moat_tls")
    peers = [p for p in ("nginx_tls", "haproxy_tls") if st.get(p) and st[p]["req_per_cpu_s"]]
    if m and m["req_per_cpu_s"]:
        lines.append("moat_tls per CPU-second: " + ", ".join(
            f"{m['req_per_cpu_s'] / st[p]['req_per_cpu_s']:.2f}x {p}" for p in peers) + ".")
    else:
        lines.append("moat_tls: not measured in this run.")
    ref = TLS_REFERENCE.get(wl)
    if ref:
        if wl == "tls-1k-keepalive":
            now = ", ".join(f"{p} {st[p]['req_per_cpu_s_ratio']:.2f}x" for p in peers
                            if st[p]["req_per_cpu_s_ratio"] is not None)
            lines.append("Reference (the TLS issue): nginx 0.62x and HAProxy 0.51x of the "
                         f"plain-HTTP limit per CPU-second; this run: {now or '-'}.")
        else:
            lines.append("Reference (the TLS issue, per CPU-second): " + ", ".join(
                f"{p} {v:,}" for p, v in ref.items()) + ".")
    return [" ".join(lines), ""] if lines else []


def h2_target_lines(st):
    """The HTTP/2 issue's bar: moat_tls's req/CPU-s ratio >= 1.1x the better of nginx_h2's and
    haproxy_h2's (each as the median over rounds of its ratio to limit)."""
    m = st.get("moat_tls")
    peers = {p: st[p]["req_per_cpu_s_ratio"] for p in ("nginx_h2", "haproxy_h2")
             if st.get(p) and st[p]["req_per_cpu_s_ratio"] is not None}
    if not m or m["req_per_cpu_s_ratio"] is None or not peers:
        return ["Target (moat_tls ≥ 1.1x the better of nginx_h2 and haproxy_h2 per CPU-second): "
                "needs moat_tls and a peer row.", ""]
    best = max(peers, key=peers.get)
    want = 1.1 * peers[best]
    ok = m["req_per_cpu_s_ratio"] >= want
    return [f"Target: **{'MET' if ok else 'NOT MET'}** (per CPU-second moat_tls "
            f"{m['req_per_cpu_s_ratio']:.2f}x vs 1.1 × {best} {peers[best]:.2f}x = {want:.2f}x "
            f"of limit {'✓' if ok else '✗'})", ""]


MARKER = "<!-- end of the generated tables: what follows is kept by report.py -->"


def results_md(meta, body):
    v = meta["versions"]
    out = [
        "# moat benchmark results",
        "",
        "Written by `bench/run.sh --write-results`; see bench/README.md for what is measured and",
        "how to read the ratios. Raw runs of this table were in "
        f"`{meta.get('out_dir', 'bench/out/')}` on the machine that ran it (not committed).",
        "",
        f"- Date: {meta['date']}",
        f"- Command: `{meta['command']}`",
        f"- Machine: {meta['nproc']} cores, {meta['cpu_model']}, {meta['kernel']}",
        f"- Load average before / after: {meta['loadavg_before']} / {meta['loadavg_after']} "
        "(the machine is shared: other work ran alongside)",
        f"- Parameters: {meta['rounds']} rounds × {meta['duration']} per run (+{meta['warmup']} warm-up), "
        f"wrk -t1 -c{meta['conns']} on core {meta['client_cpu']} with the origin"
        + (f" (the tls set's handshake rows: bench/lib/tls_load.c -c{meta['tls_conns']})"
           if "tls" in meta.get("sets", []) else "") + "; "
        f"servers under test on core {meta['server_cpu']}, one worker/thread each",
        "- Versions:",
    ]
    for k in ("nginx", "haproxy", "varnish", "wrk", "openssl", "moat"):
        out.append(f"  - {k}: {v.get(k, '-')}")
    for s in meta.get("skipped", []):
        out.append(f"- **Skipped** {s}")
    for s in meta.get("failed", []):
        out.append(f"- **Failed** {s}")
    out.append("- Peers' configurations and why: bench/README.md; the exact config and log of "
               "every server of a run are kept in its `servers/` directory")
    out += ["", "Medians over rounds; ×limit = median over rounds of (server / limit in the same "
            "round). For req/s and req/CPU-s higher is better; for latency lower is better.", "",
            body]
    return "\n".join(out).rstrip() + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--results", type=Path)
    a = ap.parse_args()
    runs = [json.loads(line) for line in (a.outdir / "runs.jsonl").read_text().splitlines() if line.strip()]
    meta_path = a.outdir / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else None
    order, stats = tables(runs)
    body = render_tables(order, stats)
    print(body)
    if a.results:
        if meta is None:
            raise SystemExit("report.py: no meta.json, cannot write results")
        # What follows the marker (memory, flash crowd, purge, the reading against the
        # targets: written by hand from other scripts) is kept across rewrites.
        kept = MARKER + "\n"
        if a.results.exists():
            old = a.results.read_text()
            if MARKER in old:
                kept = old[old.index(MARKER):]
        a.results.write_text(results_md(meta, body) + "\n" + kept)


if __name__ == "__main__":
    main()
