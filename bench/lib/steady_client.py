"""steady_client.py PORT PATH RATE SECONDS [HEADER:VALUE ...]: a well-behaved client: one
keep-alive connection, RATE requests per second for SECONDS; prints one JSON line with the
count, the successes (2xx), the statuses and the latency percentiles in ms."""
import http.client
import json
import sys
import time

port, path, rate, secs = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
headers = dict(h.split(":", 1) for h in sys.argv[5:])
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
lat, statuses, errors = [], {}, 0
t0 = time.monotonic()
i = 0
while True:
    due = t0 + i / rate
    if due - t0 >= secs:
        break
    now = time.monotonic()
    if due > now:
        time.sleep(due - now)
    s = time.monotonic()
    try:
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        r.read()
        statuses[r.status] = statuses.get(r.status, 0) + 1
        lat.append((time.monotonic() - s) * 1000)
    except Exception:
        errors += 1
        conn.close()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    i += 1
lat.sort()
pct = lambda p: round(lat[min(len(lat) - 1, int(p / 100 * len(lat)))], 3) if lat else None  # noqa: E731
ok = sum(v for k, v in statuses.items() if 200 <= k < 300)
print(json.dumps({"sent": i, "ok": ok, "errors": errors, "statuses": statuses,
                  "p50_ms": pct(50), "p99_ms": pct(99), "max_ms": round(lat[-1], 3) if lat else None}))
