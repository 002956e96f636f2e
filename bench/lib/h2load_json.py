"""h2load_json.py OUTPUT: h2load's summary -> the WRKJSON line bench/run.sh's measure() reads
(the fields bench/lua/report.lua prints for wrk). h2load reports no percentiles: p50 is its
mean time per request, p99 and max its max; p90 is 0."""
import json
import re
import sys

t = sys.argv[1]


def num(pat):
    m = re.search(pat, t)
    return int(m.group(1)) if m else 0


def us(v, unit):
    return float(v) * {"us": 1, "ms": 1e3, "s": 1e6}[unit]


ok = num(r"requests: .*? (\d+) succeeded")
fin = re.search(r"finished in ([\d.]+)(us|ms|s),", t)
tr = re.search(r"time for request:\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)", t)
mean = us(tr.group(5), tr.group(6)) if tr else 0
mx = us(tr.group(3), tr.group(4)) if tr else 0
row = {"requests": ok, "duration_us": us(*fin.groups()) if fin else 1,
       "bytes": num(r"traffic: .*?\((\d+)\) total"), "connect_errors": 0,
       "read_errors": num(r"(\d+) errored"), "write_errors": 0,
       "status_errors": num(r"(\d+) failed") + num(r"(\d+) 4xx") + num(r"(\d+) 5xx"),
       "timeouts": num(r"(\d+) timeout"), "p50_us": mean, "p90_us": 0, "p99_us": mx,
       "max_us": mx, "mean_us": mean, "client": "h2load"}
if not ok or "Application protocol: h2" not in t:
    row["wrk_failed"] = 1
print("WRKJSON " + json.dumps(row))
