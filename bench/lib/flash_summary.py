"""Summarize one flash_client run: bench/lib/flash_summary.py TSV CLIENTS ERRFILE -> one JSON line."""
import json
import statistics
import sys
from collections import Counter

rows = [ln.rstrip("\n").split("\t") for ln in open(sys.argv[1]) if ln.strip()]
n = int(sys.argv[2])
done = sorted(float(r[4]) for r in rows if float(r[4]) >= 0)
good = [r for r in rows if r[0] == "200" and r[3] == "1"]
errs = Counter(ln.split(":")[0] for ln in open(sys.argv[3]) if ln.strip())
print(json.dumps({
    "clients": n, "responses": len(done), "complete_200": len(good),
    "same_as_origin": sum(r[3] == "1" for r in rows),
    "statuses": Counter(r[0] for r in rows), "sizes": Counter(r[2] for r in rows),
    "cache_status": Counter(r[1] for r in rows), "errors": errs,
    "first_s": round(done[0], 4) if done else None,
    "median_s": round(statistics.median(done), 4) if done else None,
    "last_s": round(done[-1], 4) if done else None}))
