"""test_60_admin: the admin API (auth, /status, /reload, errors) and /metrics counters."""

import re
import time

import pytest
import yaml

from conftest import metric, parse_metrics
from rawhttp import Client


@pytest.fixture
def secured(moat_factory, origin):
    return moat_factory(origin, admin=True, token=True)


def assert_json_error(r, status):
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers.get("Content-Type", "").startswith("application/json"), r.headers
    body = r.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    return body


def test_token_required(secured):
    assert_json_error(secured.admin("GET", "/status", token=None), 401)
    assert_json_error(secured.admin("GET", "/metrics", token=None), 401)
    assert_json_error(secured.admin("POST", "/reload", token=None), 401)


def test_wrong_token_rejected(secured):
    assert_json_error(secured.admin("GET", "/status", token="nope"), 401)
    assert_json_error(secured.admin("GET", "/status", token=secured.token + "x"), 401)
    r = secured.admin("GET", "/status", token=None, headers={"Authorization": "Basic Zm9vOmJhcg=="})
    assert_json_error(r, 401)


def test_status_with_token(secured):
    r = secured.admin("GET", "/status")
    assert r.status_code == 200
    assert r.headers.get("Content-Type", "").startswith("application/json")
    st = r.json()
    assert isinstance(st["version"], str) and st["version"]
    assert isinstance(st["generation"], int) and st["generation"] >= 1
    assert isinstance(st["uptime_seconds"], (int, float)) and st["uptime_seconds"] >= 0
    assert isinstance(st["connections_active"], int) and st["connections_active"] >= 0


def test_no_token_needed_on_loopback_without_token_file(moat):
    assert moat.admin("GET", "/status", token=None).status_code == 200


def test_unknown_path_404(moat):
    assert_json_error(moat.admin("GET", "/nope"), 404)
    assert_json_error(moat.admin("GET", "/status/extra"), 404)


def test_wrong_method_405(moat):
    assert_json_error(moat.admin("POST", "/status"), 405)
    assert_json_error(moat.admin("GET", "/reload"), 405)
    assert_json_error(moat.admin("DELETE", "/metrics"), 405)


def test_connections_active(moat):
    # No baseline: a connection of an earlier test may still be closing when it is read.
    clients = [Client(moat.port) for _ in range(5)]
    try:
        for c in clients:  # make sure each is accepted and served
            c.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            c.read_response()
        # The five are open right now, whatever else is.
        assert moat.status()["connections_active"] >= 5
        assert metric(moat.metrics(), "moat_connections_active") >= 5
    finally:
        for c in clients:
            c.close()


def test_reload_ok(moat, origin_factory, http):
    gen = moat.status()["generation"]
    other = origin_factory(name="other")
    cfg = dict(moat.config)
    cfg["pools"] = {"main": dict(cfg["pools"]["main"], origins=[other.addr])}
    moat.write_config(cfg)
    r = moat.admin("POST", "/reload")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ok"] is True and body["generation"] == gen + 1
    assert moat.status()["generation"] == gen + 1
    assert http.get(moat.url("/"), timeout=5).headers["X-Origin"] == "other"


def test_reload_bad_config_keeps_old(moat, origin, http):
    gen = moat.status()["generation"]
    text = yaml.safe_dump(moat.config, sort_keys=False).splitlines()
    idx = next(i for i, l in enumerate(text) if l.startswith("workers:"))
    text[idx] = "workers: lots"
    moat.write_config("\n".join(text) + "\n")
    r = moat.admin("POST", "/reload")
    body = assert_json_error(r, 400)
    m = re.match(re.escape(str(moat.config_path)) + r":(\d+):(\d+): ", body["error"])
    assert m, body["error"]
    assert int(m.group(1)) == idx + 1
    assert moat.status()["generation"] == gen
    resp = http.get(moat.url("/still"), timeout=5)
    assert resp.status_code == 200 and resp.headers["X-Origin"] == "main"
    mt = moat.metrics()
    assert metric(mt, "moat_config_reloads_total", result="failed") >= 1


def test_metrics_format(moat, http):
    http.get(moat.url("/"), timeout=5)
    r = moat.admin("GET", "/metrics")
    assert r.status_code == 200
    assert r.headers.get("Content-Type", "").startswith("text/plain")
    mt = parse_metrics(r.text)
    names = {n for n, _ in mt}
    for want in ("moat_requests_total", "moat_request_bytes_total", "moat_response_bytes_total",
                 "moat_connections_active", "moat_upstream_errors_total",
                 "moat_request_duration_seconds_bucket", "moat_request_duration_seconds_sum",
                 "moat_request_duration_seconds_count", "moat_config_reloads_total"):
        assert want in names, f"{want} missing from /metrics"
    for cls in ("1xx", "2xx", "3xx", "4xx", "5xx"):
        assert ("moat_requests_total", f'{{class="{cls}"}}') in mt, cls
    for kind in ("connect", "timeout", "reset", "bad_response"):
        assert any(n == "moat_upstream_errors_total" and f'kind="{kind}"' in lab
                   for n, lab in mt), kind
    assert any(n == "moat_request_duration_seconds_bucket" and 'le="+Inf"' in lab
               for n, lab in mt)
    for res in ("ok", "failed"):
        assert any(n == "moat_config_reloads_total" and f'result="{res}"' in lab
                   for n, lab in mt), res
    # HELP/TYPE lines, as Prometheus expects
    assert re.search(r"^# TYPE moat_requests_total counter$", r.text, re.M)
    assert re.search(r"^# TYPE moat_request_duration_seconds histogram$", r.text, re.M)


def test_counters_move_exactly(moat, origin, http):
    before = moat.metrics()
    for i in range(10):
        assert http.get(moat.url(f"/m{i}"), timeout=5).status_code == 200
    for i in range(3):
        assert http.get(moat.url("/status/404"), timeout=5).status_code == 404
    http.post(moat.url("/echo"), data=b"x" * 1000, timeout=5)
    after = moat.metrics(
        until=lambda mt: metric(mt, "moat_request_duration_seconds_count") >=
        metric(before, "moat_request_duration_seconds_count") + 14, settle=0.1)

    def d(name, **lab):
        return metric(after, name, **lab) - metric(before, name, **lab)

    assert d("moat_requests_total", **{"class": "2xx"}) == 11
    assert d("moat_requests_total", **{"class": "4xx"}) == 3
    assert d("moat_requests_total", **{"class": "5xx"}) == 0
    assert d("moat_request_duration_seconds_count") == 14
    assert d("moat_request_duration_seconds_bucket", le="+Inf") == 14
    assert d("moat_request_duration_seconds_sum") > 0
    assert d("moat_request_bytes_total") >= 1000
    assert d("moat_response_bytes_total") >= sum(len(f"ok main /m{i}\n") for i in range(10)) + 1000
    # buckets are cumulative
    buckets = sorted(((float(re.search(r'le="([^"]+)"', lab).group(1).replace("+Inf", "inf")), v)
                      for (n, lab), v in after.items()
                      if n == "moat_request_duration_seconds_bucket"))
    vals = [v for _, v in buckets]
    assert vals == sorted(vals), buckets


def test_upstream_error_counters(moat_factory, origin_factory, http):
    from conftest import free_port
    m = moat_factory(f"127.0.0.1:{free_port()}", admin=True)
    before = m.metrics()
    for _ in range(3):
        assert http.get(m.url("/"), timeout=5).status_code == 502
    after = m.metrics(until=lambda mt: metric(mt, "moat_requests_total", **{"class": "5xx"}) >=
                      metric(before, "moat_requests_total", **{"class": "5xx"}) + 3, settle=0.1)
    assert metric(after, "moat_upstream_errors_total", kind="connect") - \
        metric(before, "moat_upstream_errors_total", kind="connect") >= 3
    assert metric(after, "moat_requests_total", **{"class": "5xx"}) - \
        metric(before, "moat_requests_total", **{"class": "5xx"}) == 3


def test_reload_counter_ok(moat):
    before = metric(moat.metrics(), "moat_config_reloads_total", result="ok")
    assert moat.admin("POST", "/reload").status_code == 200
    after = metric(moat.metrics(), "moat_config_reloads_total", result="ok")
    assert after == before + 1


def test_loop_batching_counters(moat_factory, origin, http):
    # On by default (tuning.batch_wait_us 20): a wake-up with work is followed by a pause,
    # and the pause finds nothing at this load.
    m = moat_factory(origin, admin=True)
    for i in range(20):
        assert http.get(m.url(f"/b{i}"), timeout=5).status_code == 200
    mt = m.metrics(until=lambda mt: metric(mt, "moat_requests_total", **{"class": "2xx"}) >= 20)
    assert metric(mt, "moat_loop_naps_total") > 0
    assert metric(mt, "moat_loop_wakeups_total") > 0
    assert metric(mt, "moat_loop_events_total") >= metric(mt, "moat_loop_wakeups_total")
    # an empty pause lets the next 16 wake-ups block without one: far fewer pauses than
    # wake-ups at this load
    assert metric(mt, "moat_loop_naps_total") < metric(mt, "moat_loop_wakeups_total")

    # off (by reload): workers block in epoll_wait, the count stops moving, wake-ups go on
    cfg = dict(m.config)
    cfg["tuning"] = {"batch_wait_us": 0}
    gen = m.status()["generation"]
    m.write_config(cfg)
    r = m.admin("POST", "/reload")
    assert r.status_code == 200 and r.json()["generation"] == gen + 1, r.text
    time.sleep(0.3)  # the worker adopts the new snapshot on its next event or 100 ms tick
    mt = m.metrics()
    naps, wakeups = metric(mt, "moat_loop_naps_total"), metric(mt, "moat_loop_wakeups_total")
    for i in range(20):
        assert http.get(m.url(f"/d{i}"), timeout=5).status_code == 200
    mt = m.metrics(settle=0.1)
    assert metric(mt, "moat_loop_naps_total") == naps
    assert metric(mt, "moat_loop_wakeups_total") > wakeups

