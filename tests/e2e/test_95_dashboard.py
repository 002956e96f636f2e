"""test_95_dashboard.py: the live dashboard in a real browser (Debian's chromium, driven by
playwright-core from tests/browser/), against a real moat and a real origin: login, live
numbers that match /metrics, purge from the page, the SSE fan-out, and the JSON stream itself.
"""

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests

from origins import response

ROOT = Path(__file__).resolve().parents[2]
BROWSER_DIR = ROOT / "tests" / "browser"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def cacheable(req, origin):
    body = f"item {req.path}\n".encode() * 20
    return response(200, body, [("Cache-Control", "max-age=300"), ("X-Origin", origin.name)])


def run_browser(moat, out_dir, **env):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/install-deps (Debian package chromium)")
    if not (BROWSER_DIR / "node_modules" / "playwright-core").exists():
        pytest.fail("tests/browser/node_modules is missing: run scripts/install-deps (npm ci)")
    e = dict(os.environ, MOAT_URL=f"http://127.0.0.1:{moat.port}",
             ADMIN_URL=f"http://127.0.0.1:{moat.admin_port}", TOKEN=moat.token,
             OUT=str(out_dir), CHROMIUM=CHROMIUM, **{k: str(v) for k, v in env.items()})
    p = subprocess.run(["node", str(BROWSER_DIR / "dashboard.mjs")], env=e, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    assert lines, p.stdout + p.stderr
    return json.loads(lines[-1])


@pytest.fixture
def dash_moat(moat_factory, origin_factory):
    origin = origin_factory(cacheable, name="shop")
    cfg = moat_factory.config([origin], admin=True, token=True)
    cfg["admin"]["dashboard_clients"] = 12
    m = moat_factory(config=cfg)
    return m, origin


def test_dashboard_in_chromium(dash_moat, tmp_path):
    m, origin = dash_moat
    out = Path(os.environ.get("MOAT_TEST_OUT", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    r = run_browser(m, out, LOAD=400, STREAMS=8)
    assert "error" not in r, r.get("error")
    # refused without the token, and with a wrong one; no cookie handed out
    assert r["anon_page_status"] == 401 and r["anon_has_form"]
    assert r["anon_events_status"] == 401
    assert r["wrong_token_status"] == 401 and r["wrong_token_message"]
    assert r["wrong_token_cookies"] == 0
    # the right token: a session cookie that is not the token itself
    assert r["login_status"] == 200 and r["login_url"].endswith("/dashboard")
    assert r["cookie"] == {"httpOnly": True, "sameSite": "Strict", "path": "/",
                           "is_token": False}
    # clean page: no console error, nothing fetched outside the admin origin
    assert r["console_errors"] == []
    assert r["outside_requests"] == []
    # the numbers moved and match /metrics: 400 requests on 5 URLs = 5 misses, 395 hits
    assert r["load_sent"] == 400
    assert r["metric_hits"] - r["page_hits_before"] >= 390
    assert abs(r["page_hits"] - r["metric_hits"]) <= 2, r
    # the page's misses include the requests collapsed onto another one's fetch
    assert abs(r["page_misses"] - r["metric_misses"] - r["metric_collapsed"]) <= 2, r
    assert abs(r["page_ratio_req"] - 100 * 395 / 400) <= 5, r
    assert r["page_ratio_bytes"] > 90
    assert "/item/" in r["page_top_url"]
    assert r["page_lat_hit_p50"] not in ("", "–")
    assert r["chart_has_pixels"] > 1000
    assert r["keyboard_reaches_purge"]
    # purge from the page: the object is gone, the next request is a miss
    assert "hit" in r["before_purge_cache_status"]
    assert r["purge_result"].startswith("purged ") and r["purge_result"] != "purged 0", r
    assert "fwd=uri-miss" in r["after_purge_cache_status"], r
    # fan-out: 8 more streams (9 open), still one snapshot a second
    assert r["stream_statuses"] == [200] * 8
    assert r["clients_metric"] == 9
    assert abs(r["snapshots_delta"] - r["snapshots_seconds"]) <= 1.5, r
    assert all(n >= 3 for n in r["stream_events"]), r
    # admin.dashboard_clients: 12, so with 12 open the next one is refused
    assert r["over_limit_status"] == 503
    assert r["streams_open_at_refusal"] == 12
    # both themes
    assert r["dark_bg"] != r["light_bg"]
    for name in ("dashboard-light.png", "dashboard-dark.png"):
        assert (out / name).stat().st_size > 10000


def sse_events(port, headers, seconds):
    """Reads /events for <seconds>; returns (status, [(event, data)])."""
    with requests.get(f"http://127.0.0.1:{port}/events", headers=headers, stream=True,
                      timeout=seconds + 3) as r:
        if r.status_code != 200:
            return r.status_code, []
        evs, ev, deadline = [], {}, time.monotonic() + seconds
        for line in r.iter_lines(decode_unicode=True):
            if line == "":
                if "data" in ev:
                    evs.append((ev.get("event", "message"), json.loads(ev["data"])))
                ev = {}
            elif ":" in line:
                k, v = line.split(":", 1)
                ev[k] = v.lstrip(" ")
            if time.monotonic() > deadline:
                break
        return 200, evs


def test_events_stream_and_history(dash_moat):
    """The stream without a browser: history first, then a snapshot a second whose counts
    add up to what was sent, split by outcome (hit / miss / pass / error)."""
    m, origin = dash_moat
    auth = {"Authorization": f"Bearer {m.token}"}
    s = requests.Session()
    for i in range(30):
        assert s.get(m.url(f"/item/{i % 3}")).status_code == 200
    assert s.post(m.url("/item/x"), data=b"x").status_code == 200  # a pass
    time.sleep(2.2)  # the history now has the seconds of that traffic
    st, evs = sse_events(m.admin_port, auth, 2.5)
    assert st == 200
    assert evs[0][0] == "history"
    hist = evs[0][1]
    assert hist["classes"] == ["hit", "miss", "pass", "stale", "error"]
    sent = [sum(p[1 + k] for p in hist["points"]) for k in range(5)]
    assert sent[0] == 27 and sent[1] == 3 and sent[2] == 1, sent
    snaps = [d for e, d in evs if e == "message"]
    assert len(snaps) >= 2
    last = snaps[-1]
    assert last["total"]["req"]["hit"] == 27 and last["total"]["req"]["miss"] == 3
    assert last["top"]["urls"]["top"][0]["key"].endswith(("/item/0", "/item/1", "/item/2"))
    assert last["top"]["clients"]["top"][0]["key"] == "127.0.0.1"
    assert last["latency"]["hit"]["n"] == 27 and last["latency"]["hit"]["p50"] > 0
    assert last["pools"] is None and last["shield"] is None  # their panels come later
    assert last["workers"] == 2 and last["generation"] >= 1
    # one snapshot a second: consecutive ones are one second apart
    ts = [d["t"] for d in snaps]
    assert all(b - a == 1 for a, b in zip(ts, ts[1:])), ts


def test_reload_result_and_cookie_changes(dash_moat):
    m, origin = dash_moat
    s = requests.Session()
    r = s.post(f"http://127.0.0.1:{m.admin_port}/login", data={"token": m.token},
               allow_redirects=False)
    assert r.status_code == 303 and "moat_admin" in s.cookies
    # a change by cookie needs the dashboard's field (a plain cross-site form has none)
    r = s.post(f"http://127.0.0.1:{m.admin_port}/reload")
    assert r.status_code == 403 and "error" in r.json()
    r = s.post(f"http://127.0.0.1:{m.admin_port}/reload", headers={"X-Moat-Dashboard": "1"})
    assert r.status_code == 200, r.text
    time.sleep(1.3)
    st, evs = sse_events(m.admin_port, {"Cookie": f"moat_admin={s.cookies['moat_admin']}"}, 1.5)
    assert st == 200
    snap = [d for e, d in evs if e == "message"][-1]
    assert snap["reload"]["last"] == "ok" and snap["reload"]["ok"] == 1
    # ?token= once: a cookie and a redirect that drops the token from the address
    r = requests.get(f"http://127.0.0.1:{m.admin_port}/dashboard?token={m.token}",
                     allow_redirects=False)
    assert r.status_code == 303 and r.headers["Location"] == "/dashboard"
    assert "HttpOnly" in r.headers["Set-Cookie"] and "SameSite=Strict" in r.headers["Set-Cookie"]
    # a forged cookie is refused
    r = requests.get(f"http://127.0.0.1:{m.admin_port}/events",
                     headers={"Cookie": "moat_admin=" + "0" * 64}, timeout=3)
    assert r.status_code == 401


def test_dashboard_off(moat_factory, origin_factory):
    origin = origin_factory(cacheable)
    cfg = moat_factory.config([origin], admin=True)
    cfg["admin"]["dashboard"] = False
    m = moat_factory(config=cfg)
    assert m.admin("GET", "/dashboard").status_code == 404
    assert m.admin("GET", "/events").status_code == 404
    assert m.admin("GET", "/status").status_code == 200


def test_grafana_dashboard_uses_real_metrics(moat_factory, origin_factory):
    """docs/grafana-dashboard.json asks only for series moat exports: every metric name in its
    queries is in a real scrape (the certificate gauge, present only with TLS, in the docs)."""
    import re
    origin = origin_factory(cacheable)
    m = moat_factory(origin, admin=True)
    assert requests.get(m.url("/item/1")).status_code == 200
    text = m.admin("GET", "/metrics").text
    exported = set(re.findall(r"^(moat_[a-z0-9_]+)", text, re.M))
    dash = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    assert dash["__inputs"][0]["pluginId"] == "prometheus"
    names = set()
    for p in dash["panels"]:
        for t in p["targets"]:
            names |= set(re.findall(r"\bmoat_[a-z0-9_]+", t["expr"]))
    assert len(names) >= 25
    ops = (ROOT / "docs" / "operations.md").read_text()
    for n in sorted(names):
        if n == "moat_tls_certificate_expiry_seconds":
            assert f"`{n}`" in ops
            continue
        assert n in exported, f"{n} is not in /metrics"


def test_stale_and_error_outcomes(moat_factory, origin_factory):
    """A stale-while-revalidate answer counts as stale, an origin 500 as an error."""
    def handler(req, origin):
        if req.path == "/swr":
            return response(200, b"swr\n", [("Cache-Control", "max-age=1, stale-while-revalidate=30")])
        return response(500, b"boom\n", [("Cache-Control", "no-store")])
    origin = origin_factory(handler)
    m = moat_factory(origin, admin=True)
    s = requests.Session()
    assert s.get(m.url("/swr")).status_code == 200
    time.sleep(1.3)
    r = s.get(m.url("/swr"))
    assert "stale-while-revalidate" in r.headers.get("Cache-Status", ""), r.headers
    assert s.get(m.url("/boom")).status_code == 500
    time.sleep(1.3)
    st, evs = sse_events(m.admin_port, {}, 1.2)
    assert st == 200
    total = [d for e, d in evs if e == "message"][-1]["total"]["req"]
    assert total["stale"] == 1 and total["error"] == 1, total
    assert total["miss"] >= 1 and total["hit"] == 0, total
