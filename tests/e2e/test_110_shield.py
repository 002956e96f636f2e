"""test_110_shield.py: the shield with real moat processes and real origins: rate limits (429 +
Retry-After, the origin not seeing the excess, the configured rate over 10 s, one budget across
workers, bounded memory under 100,000 keys), access rules (CIDR v4/v6, country, path, user
agent), connection limits, the under-attack challenge solved by a Python solver (cookies
forged, expired, for another address or browser, wrong answers), auto mode, the admin API."""
import hashlib
import html
import re
import socket
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
import requests

from conftest import MOAT_BIN, metric
from mmdb import write as mmdb_write

HERE = Path(__file__).resolve().parent


def get(m, path="/", headers=None, cookies=None, allow_redirects=False):
    return requests.get(m.url(path), headers=headers or {}, cookies=cookies, timeout=5,
                        allow_redirects=allow_redirects)


def shield_moat(moat_factory, origin, shield, sites=None, **over):
    cfg = moat_factory.config([origin], admin=True, shield=shield, **over)
    if sites is not None:
        cfg["sites"] = sites
    return moat_factory(config=cfg)


# --- the challenge, solved in Python ---------------------------------------------------------

def zero_bits(h):
    z = 0
    for b in h:
        if b == 0:
            z += 8
            continue
        return z + 8 - b.bit_length()
    return z


def parse_challenge(text):
    m = re.search(r'data-c="([^"]+)" data-d="(\d+)" data-to="([^"]*)"', text)
    assert m, text[:400]
    return m.group(1), int(m.group(2)), html.unescape(m.group(3))


def solve(c, bits):
    n = 0
    while True:
        if zero_bits(hashlib.sha256(f"{c}{n}".encode()).digest()) >= bits:
            return str(n)
        n += 1


def answer(m, c, n, to, headers=None):
    q = urllib.parse.urlencode({"c": c, "n": n, "to": to})
    return requests.post(m.url(f"/.moat/challenge?{q}"), headers=headers or {}, timeout=5,
                         allow_redirects=False)


def clear(m, path="/page", headers=None):
    """Gets the challenge for <path>, solves it, posts the answer: the clearance cookie."""
    r = get(m, path, headers=headers)
    assert r.status_code == 503, r.status_code
    c, bits, to = parse_challenge(r.text)
    assert to == path
    a = answer(m, c, solve(c, bits), to, headers=headers)
    assert a.status_code == 303, a.text
    assert a.headers["Location"] == path
    sc = a.headers["Set-Cookie"]
    assert "HttpOnly" in sc and "Max-Age=" in sc
    return re.match(r"moat_clearance=([^;]+)", sc).group(1)


# --- configuration ----------------------------------------------------------------------------

@pytest.mark.parametrize("shield,needle", [
    ({"rate_limits": [{"rate": "20/week"}]}, "rate_limits[0].rate"),
    ({"rate_limits": [{"rate": "20/s", "key": "header:"}]}, "rate_limits[0].key"),
    ({"rate_limits": [{"rate": "20/s", "action": "tarpit"}]}, "rate_limits[0].action"),
    ({"access": [{"match": {"cidr": ["10.0.0.1/8"]}, "action": "block"}]}, "match.cidr"),
    ({"access": [{"match": {"country": ["DE"]}, "action": "block"}]}, "shield.geoip"),
    ({"access": [{"match": {"path": "/x"}}]}, "action"),
    ({"challenge": {"difficulty": 40}}, "challenge.difficulty"),
    ({"auto": {"origin_errors": 1.5}}, "auto.origin_errors"),
])
def test_bad_shield_config_is_refused_with_file_and_line(moat_factory, origin, shield, needle):
    cfg = moat_factory.config([origin], shield=shield)
    m = moat_factory(config=cfg, start=False)
    m.write_config(cfg)
    p = subprocess.run([MOAT_BIN, "-t", "-c", str(m.config_path)], capture_output=True,
                       text=True, timeout=10)
    assert p.returncode != 0
    assert re.search(r"moat\.yaml:\d+:\d+: ", p.stderr), p.stderr
    assert needle in p.stderr, p.stderr


# --- rate limits ------------------------------------------------------------------------------

def test_rate_limit_429_retry_after_and_origin_sees_only_allowed(moat_factory, origin):
    m = shield_moat(moat_factory, origin, {"rate_limits": [
        {"match": {"path": "/api/*"}, "key": "header:X-Key", "rate": "2/s", "burst": 5,
         "action": "block"}]})
    codes = []
    for _ in range(20):
        r = get(m, "/api/x", headers={"X-Key": "alice"})
        codes.append(r.status_code)
        if r.status_code == 429:
            assert int(r.headers["Retry-After"]) >= 1
            assert r.headers["Cache-Control"] == "no-store"
    assert codes[:5] == [200] * 5
    assert codes.count(200) <= 6  # 5 of burst, maybe one refilled
    assert codes.count(429) >= 14
    assert len(origin.requests) == codes.count(200)
    # another key has its own budget; paths outside the match are not limited
    assert get(m, "/api/x", headers={"X-Key": "bob"}).status_code == 200
    assert get(m, "/other").status_code == 200
    mt = m.metrics()
    assert metric(mt, "moat_shield_rate_limited_total", rule="0", action="block") == codes.count(429)
    # it recovers: after Retry-After a request passes again (count_refused: the flood stopped)
    time.sleep(int(r.headers.get("Retry-After", "1")) + 0.6)
    assert get(m, "/api/x", headers={"X-Key": "alice"}).status_code == 200


def paced(m, path, headers, rate, seconds, conns=1):
    """Sends at <rate> requests/s for <seconds> over <conns> keep-alive connections (threads);
    returns the status codes."""
    codes = []
    lock = threading.Lock()

    def run(k):
        s = requests.Session()
        t0 = time.monotonic()
        i = 0
        while True:
            due = t0 + (i * conns + k) / rate
            now = time.monotonic()
            if due - t0 >= seconds:
                break
            if due > now:
                time.sleep(due - now)
            r = s.get(m.url(path), headers=headers, timeout=5)
            with lock:
                codes.append(r.status_code)
            i += 1
    ts = [threading.Thread(target=run, args=(k,)) for k in range(conns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return codes


def test_rate_limit_holds_the_configured_rate_over_10s(moat_factory, origin):
    """count_refused: false (nginx's limit_req): a client sending twice the rate gets the rate
    through: burst + rate x 10 s, within 10%."""
    m = shield_moat(moat_factory, origin, {"rate_limits": [
        {"key": "client_ip", "rate": "20/s", "burst": 10, "count_refused": False}]})
    codes = paced(m, "/r", {}, rate=40, seconds=10)
    ok = codes.count(200)
    want = 10 + 20 * 10
    assert abs(ok - want) <= want * 0.1, (ok, want, len(codes))
    assert codes.count(429) == len(codes) - ok
    assert len(origin.requests) == ok


def test_refused_requests_count_by_default_so_a_flooder_stays_blocked(moat_factory, origin):
    m = shield_moat(moat_factory, origin, {"rate_limits": [
        {"key": "client_ip", "rate": "5/s", "burst": 5}]})
    codes = paced(m, "/f", {}, rate=30, seconds=3)
    # 5 of burst, then nothing: each refusal uses the budget up again (at most one slips
    # through at the start while the bucket refills)
    assert codes.count(200) <= 7, codes.count(200)
    assert len(origin.requests) == codes.count(200)


def test_limit_holds_across_workers(moat_factory, origin):
    """Eight connections, spread over two workers by SO_REUSEPORT, share one budget."""
    m = shield_moat(moat_factory, origin, {"rate_limits": [
        {"key": "header:X-Key", "rate": "10/s", "burst": 10, "count_refused": False}]},
        workers=2)
    codes = paced(m, "/w", {"X-Key": "k"}, rate=80, seconds=3, conns=8)
    ok = codes.count(200)
    want = 10 + 10 * 3
    assert ok <= want * 1.15 + 2, (ok, want)  # per-worker tables would let ~2x through
    assert ok >= want * 0.8, (ok, want)


def test_count_origin_only_charges_requests_that_reach_the_origin(moat_factory, origin):
    sites = [{"hosts": ["*"], "pool": "main",
              "rules": [{"match": {"path": "/static/*"}, "cache": "everything",
                         "edge_ttl": "1h"}]}]
    m = shield_moat(moat_factory, origin, {"rate_limits": [
        {"key": "client_ip", "rate": "1/h", "burst": 3, "count": "origin"}]}, sites=sites)
    # cache hits do not use the budget
    for _ in range(10):
        assert get(m, "/static/a.css").status_code == 200
    assert len(origin.requests) == 1
    assert get(m, "/d1").status_code == 200
    assert get(m, "/d2").status_code == 200
    assert get(m, "/d3").status_code == 429  # 3 origin requests: the burst is used
    assert get(m, "/static/a.css").status_code == 429  # over budget: refused, even hits
    assert len(origin.requests) == 3


def pipelined(port, reqs, per_conn=5000):
    """Sends the requests (bytes each) pipelined over keep-alive connections; returns the
    status codes in order."""
    codes = []
    for i in range(0, len(reqs), per_conn):
        chunk = reqs[i:i + per_conn]
        s = socket.create_connection(("127.0.0.1", port), timeout=20)
        t = threading.Thread(target=s.sendall, args=(b"".join(chunk),))
        t.start()
        buf = b""
        got = 0
        while got < len(chunk):
            while True:
                he = buf.find(b"\r\n\r\n")
                if he < 0:
                    break
                head = buf[:he].decode("latin-1")
                cl = int(re.search(r"(?i)\r\ncontent-length: *(\d+)", head).group(1))
                if len(buf) < he + 4 + cl:
                    break
                codes.append(int(head[9:12]))
                buf = buf[he + 4 + cl:]
                got += 1
            if got >= len(chunk):
                break
            d = s.recv(1 << 20)
            assert d, f"connection closed after {got} of {len(chunk)}"
            buf += d
        t.join()
        s.close()
    return codes


def test_memory_stays_bounded_under_100000_distinct_keys(moat_factory, origin):
    """keys: 1024 (16 KiB of buckets): 100,000 distinct header keys evict old ones instead of
    growing the table or the process."""
    sites = [{"hosts": ["*"], "pool": "main",
              "rules": [{"match": {"path": "/k"}, "cache": "everything", "edge_ttl": "1h"}]}]
    m = shield_moat(moat_factory, origin, {"keys": 1024, "rate_limits": [
        {"key": "header:X-Key", "rate": "1/h", "burst": 1}]}, sites=sites, workers=1)
    port = int(m.url("/").split(":")[2].split("/")[0])
    hot = b"GET /k HTTP/1.1\r\nHost: t\r\nX-Key: hot\r\n\r\n"
    assert pipelined(port, [hot, hot]) == [200, 429]
    warm = [b"GET /k HTTP/1.1\r\nHost: t\r\nX-Key: w%d\r\n\r\n" % i for i in range(20000)]
    assert pipelined(port, warm).count(200) == 20000
    bytes0 = metric(m.metrics(), "moat_shield_table_bytes")
    reqs = [b"GET /k HTTP/1.1\r\nHost: t\r\nX-Key: k%d\r\n\r\n" % i for i in range(100000)]
    codes = pipelined(port, reqs)
    assert len(codes) == 100000
    assert codes.count(200) == 100000  # each key's first request passes (a cache hit)
    mt = m.metrics()
    cap = metric(mt, "moat_shield_keys_capacity")
    assert cap == 1024
    assert metric(mt, "moat_shield_keys") <= cap
    assert metric(mt, "moat_shield_table_bytes") <= 1024 * 16 + 32 * 1024
    assert metric(mt, "moat_shield_keys_evicted_total") >= 120000 - 1024
    assert metric(mt, "moat_shield_table_bytes") == bytes0  # allocated once, at first use
    # (RSS is not asserted: under this pipelined load the process's own buffers move it by
    # 10 to 40 MiB with or without a shield configured, measured, which would hide the 1.6 MB
    # that 100,000 keys at 16 B would cost even if they were all kept)
    assert len(origin.requests) == 1


# --- access rules ---------------------------------------------------------------------------

def test_access_rules_cidr_v4_v6_path_user_agent_first_match_wins(moat_factory, origin):
    """The test client's peer is 127.0.0.1, a trusted proxy in the base config, so its
    X-Forwarded-For names the client address the rules see."""
    m = shield_moat(moat_factory, origin, {"access": [
        {"match": {"cidr": ["10.9.0.0/16"]}, "action": "allow"},
        {"match": {"cidr": ["10.0.0.0/8", "2001:db8::/32"]}, "action": "block"},
        {"match": {"user_agent": "*BadBot*"}, "action": "block"},
        {"match": {"path": "/wp-login.php"}, "action": "block"},
        {"match": {"path": "/gone"}, "action": "drop"},
    ]})
    xff = lambda a: {"X-Forwarded-For": a}  # noqa: E731
    assert get(m, "/", headers=xff("10.1.2.3")).status_code == 403
    assert get(m, "/", headers=xff("2001:db8::7")).status_code == 403
    assert get(m, "/", headers=xff("2001:db9::7")).status_code == 200
    assert get(m, "/", headers=xff("192.0.2.1")).status_code == 200
    assert get(m, "/", headers={"User-Agent": "x BadBot/2"}).status_code == 403
    assert get(m, "/", headers={"User-Agent": "Mozilla/5.0"}).status_code == 200
    assert get(m, "/wp-login.php").status_code == 403
    # allow comes first and beats the later rules, even the path and UA ones
    assert get(m, "/wp-login.php", headers={**xff("10.9.1.1"),
                                            "User-Agent": "BadBot"}).status_code == 200
    n = len(origin.requests)
    assert n == 4
    with pytest.raises(requests.exceptions.ConnectionError):
        get(m, "/gone")
    assert len(origin.requests) == n
    mt = m.metrics()
    assert metric(mt, "moat_shield_access_total", rule="1", action="block") == 2
    assert metric(mt, "moat_shield_access_total", rule="4", action="drop") == 1


def test_access_rule_cidr_on_the_peer_address(moat_factory, origin):
    m = shield_moat(moat_factory, origin, {"access": [
        {"match": {"cidr": ["127.0.0.0/8"]}, "action": "block"}]}, trusted_proxies=[])
    assert get(m, "/").status_code == 403
    assert len(origin.requests) == 0


def test_access_rule_by_country_from_a_test_database(moat_factory, origin, tmp_path):
    db = tmp_path / "c.mmdb"
    mmdb_write(str(db), [("127.0.0.0/8", "XX"), ("192.0.2.0/24", "DE"),
                         ("2001:db8::/32", "JP")])
    m = shield_moat(moat_factory, origin, {"geoip": str(db), "access": [
        {"match": {"country": ["XX", "jp"]}, "action": "block"}]}, trusted_proxies=[])
    assert get(m, "/").status_code == 403  # 127.0.0.1 is XX in the test database
    m2 = shield_moat(moat_factory, origin, {"geoip": str(db), "access": [
        {"match": {"country": ["XX", "jp"]}, "action": "block"}]})
    assert get(m2, "/", headers={"X-Forwarded-For": "192.0.2.5"}).status_code == 200
    assert get(m2, "/", headers={"X-Forwarded-For": "2001:db8::1"}).status_code == 403
    assert get(m2, "/", headers={"X-Forwarded-For": "198.51.100.1"}).status_code == 200


# --- connections ------------------------------------------------------------------------------

def one_response(s):
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(4096)
        assert d, buf
        buf += d
    he = buf.index(b"\r\n\r\n")
    cl = int(re.search(rb"(?i)content-length: *(\d+)", buf[:he]).group(1))
    while len(buf) < he + 4 + cl:
        buf += s.recv(4096)
    return buf

def test_connections_per_ip_closed_at_accept(moat_factory, origin):
    m = shield_moat(moat_factory, origin, {"connections": {"per_ip": 4}})
    port = int(m.url("/").split(":")[2].split("/")[0])
    # moat accepts once a request's first bytes are in (TCP_DEFER_ACCEPT): each held
    # connection sends one request first
    held = []
    for _ in range(4):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert one_response(s).startswith(b"HTTP/1.1 200")
        held.append(s)
    extra = socket.create_connection(("127.0.0.1", port))
    extra.settimeout(3)
    extra.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    try:
        data = extra.recv(100)
    except ConnectionResetError:
        data = b""
    assert data == b""
    extra.close()
    for s in held:
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert one_response(s).startswith(b"HTTP/1.1 200")
    held.pop().close()
    time.sleep(0.2)
    assert get(m, "/").status_code == 200  # a slot is free again
    mt = m.metrics()
    assert metric(mt, "moat_shield_connections_refused_total") == 1
    for s in held:
        s.close()


# --- under attack -----------------------------------------------------------------------------

def ua_moat(moat_factory, origin, mode="on", shield=None, **site):
    sh = {"challenge": {"difficulty": 10, "clearance": "30m"}}
    sh.update(shield or {})
    s = {"hosts": ["*"], "pool": "main", "under_attack": mode, **site}
    return shield_moat(moat_factory, origin, sh, sites=[s])


def test_under_attack_curl_gets_the_challenge_and_the_origin_nothing(moat_factory, origin):
    m = ua_moat(moat_factory, origin, challenge_exempt=["/api/*"])
    r = get(m, "/page?x=1")
    assert r.status_code == 503
    assert r.headers["Content-Type"].startswith("text/html")
    assert r.headers["Cache-Control"] == "no-store"
    assert "<noscript>" in r.text and "Checking your browser" in r.text
    assert 'role="status"' in r.text and "<progress" in r.text
    assert "http://" not in r.text and "https://" not in r.text  # no external resources
    assert parse_challenge(r.text)[2] == "/page?x=1"
    assert len(origin.requests) == 0
    # exempt paths pass
    assert get(m, "/api/v1").status_code == 200
    assert len(origin.requests) == 1


def test_python_solver_gets_clearance_and_reaches_the_origin(moat_factory, origin):
    m = ua_moat(moat_factory, origin)
    ua = {"User-Agent": "solver/1"}
    ck = clear(m, "/page", headers=ua)
    r = get(m, "/page", headers=ua, cookies={"moat_clearance": ck})
    assert r.status_code == 200
    assert len(origin.requests) == 1
    mt = m.metrics()
    assert metric(mt, "moat_shield_challenge_passed_total") == 1
    assert metric(mt, "moat_shield_under_attack") == 1


def test_forged_other_ip_other_ua_and_expired_cookies_are_refused(moat_factory, origin):
    m = ua_moat(moat_factory, origin, shield={"challenge": {"difficulty": 8, "clearance": "2s"}})
    h = {"User-Agent": "solver/1", "X-Forwarded-For": "192.0.2.10"}
    ck = clear(m, "/p", headers=h)
    assert get(m, "/p", headers=h, cookies={"moat_clearance": ck}).status_code == 200
    forged = ck[:-2] + ("AA" if not ck.endswith("AA") else "BB")
    later = str(int(ck.split(".")[0]) + 3600) + "." + ck.split(".")[1]
    for hh, c in [(h, forged), (h, later), ({**h, "User-Agent": "other/2"}, ck),
                  ({**h, "X-Forwarded-For": "198.51.100.10"}, ck), (h, "garbage")]:
        r = get(m, "/p", headers=hh, cookies={"moat_clearance": c})
        assert r.status_code == 503
        assert "was refused" in r.text
        assert 'data-auto="0"' in r.text  # explained, not solved again in a loop
    # the same /24 keeps the clearance (NAT pools move within it)
    assert get(m, "/p", headers={**h, "X-Forwarded-For": "192.0.2.99"},
               cookies={"moat_clearance": ck}).status_code == 200
    time.sleep(2.2)
    r = get(m, "/p", headers=h, cookies={"moat_clearance": ck})
    assert r.status_code == 503 and "expired" in r.text
    assert len(origin.requests) == 2
    assert metric(m.metrics(), "moat_shield_cookies_refused_total") == 6


def test_wrong_or_malformed_answer_is_refused_with_a_message(moat_factory, origin):
    m = ua_moat(moat_factory, origin, shield={"challenge": {"difficulty": 16}})
    r = get(m, "/x")
    c, bits, to = parse_challenge(r.text)
    n = 0
    while zero_bits(hashlib.sha256(f"{c}{n}".encode()).digest()) >= bits:
        n += 1
    a = answer(m, c, str(n), to)
    assert a.status_code == 403
    assert "proof of work was not correct" in a.text and 'href="/x"' in a.text
    assert "Set-Cookie" not in a.headers
    a = answer(m, c[:-1] + ("A" if c[-1] != "A" else "B"), solve(c, bits), to)
    assert a.status_code == 403 and "not issued to this browser" in a.text
    a = answer(m, c, solve(c, bits), "//evil.example/")  # no open redirect
    assert a.status_code == 403 and "Location" not in a.headers
    # a challenge from another address does not count here
    a = answer(m, c, solve(c, bits), to, headers={"X-Forwarded-For": "203.0.113.1"})
    assert a.status_code == 403
    assert metric(m.metrics(), "moat_shield_challenge_failed_total") == 4
    assert len(origin.requests) == 0


def test_auto_switches_on_under_a_flood_and_off_after_quiet(moat_factory, origin):
    m = ua_moat(moat_factory, origin, mode="auto", shield={
        "auto": {"requests_per_second": 30, "for": "2s", "quiet": "2s"}})
    assert get(m, "/").status_code == 200
    st = m.status()["shield"]["sites"][0]
    assert st["under_attack"] == "auto" and st["active"] is False
    codes = paced(m, "/", {}, rate=80, seconds=4, conns=2)
    assert codes[0] == 200
    assert 503 in codes  # switched on during the flood
    st = m.status()["shield"]["sites"][0]
    assert st["active"] is True and st["switched_on"] == 1
    assert get(m, "/").status_code == 503
    n = len(origin.requests)
    time.sleep(4)
    assert get(m, "/").status_code == 200
    st = m.status()["shield"]["sites"][0]
    assert st["active"] is False and st["switched_off"] == 1
    assert len(origin.requests) == n + 1
    assert "under attack mode switched on" in m.stderr()
    assert "under attack mode switched off" in m.stderr()
    mt = m.metrics()
    assert metric(mt, "moat_shield_under_attack_switches_total", to="on") == 1


def test_admin_switches_under_attack_at_runtime(moat_factory, origin):
    m = ua_moat(moat_factory, origin, mode="off")
    assert get(m, "/").status_code == 200
    r = m.admin("POST", "/shield/under_attack", json={"site": "any.example", "mode": "on"})
    assert r.status_code == 200 and r.json()["ok"] is True
    assert get(m, "/").status_code == 503
    st = m.status()["shield"]["sites"][0]
    assert st["override"] == "on" and st["active"] is True
    r = m.admin("POST", "/shield/under_attack", json={"site": "x", "mode": "sometimes"})
    assert r.status_code == 400 and "error" in r.json()
    r = m.admin("POST", "/shield/under_attack", data="{")
    assert r.status_code == 400 and "error" in r.json()
    r = m.admin("POST", "/shield/under_attack", json={"site": "x", "mode": "config"})
    assert r.status_code == 200
    assert get(m, "/").status_code == 200


def test_access_rule_challenge_and_rate_limit_challenge(moat_factory, origin):
    m = shield_moat(moat_factory, origin, {
        "challenge": {"difficulty": 8},
        "access": [{"match": {"path": "/wp-login.php"}, "action": "challenge"}],
        "rate_limits": [{"match": {"path": "/s/*"}, "key": "client_ip", "rate": "1/h",
                         "burst": 1, "action": "challenge"}]})
    assert get(m, "/wp-login.php").status_code == 503
    ck = clear(m, "/wp-login.php")
    assert get(m, "/wp-login.php", cookies={"moat_clearance": ck}).status_code == 200
    assert get(m, "/s/1").status_code == 200
    assert get(m, "/s/2").status_code == 503  # over the rate: the challenge
    assert get(m, "/s/2", cookies={"moat_clearance": ck}).status_code == 429


def test_admin_block_unblock_and_top(moat_factory, origin):
    m = shield_moat(moat_factory, origin, {"rate_limits": [
        {"match": {"header": "X-Key"}, "key": "header:X-Key", "rate": "10/s", "burst": 1}]})
    xff = {"X-Forwarded-For": "198.51.100.7"}
    assert get(m, "/", headers=xff).status_code == 200
    r = m.admin("POST", "/shield/block", json={"cidr": "198.51.100.0/24", "for": "2s"})
    assert r.status_code == 200 and r.json()["ok"] is True
    assert get(m, "/", headers=xff).status_code == 403
    assert get(m, "/", headers={"X-Forwarded-For": "198.51.101.7"}).status_code == 200
    st = m.status()["shield"]
    assert st["blocks"][0]["cidr"] == "198.51.100.0/24" and st["blocks"][0]["seconds_left"] <= 2
    assert any("block 198.51.100.0/24" in c["what"] for c in st["changes"])
    time.sleep(2.2)  # expired
    assert get(m, "/", headers=xff).status_code == 200
    assert m.admin("POST", "/shield/block", json={"cidr": "2001:db8::/32"}).status_code == 200
    assert get(m, "/", headers={"X-Forwarded-For": "2001:db8::5"}).status_code == 403
    assert m.admin("POST", "/shield/unblock", json={"cidr": "2001:db8::/32"}).status_code == 200
    assert get(m, "/", headers={"X-Forwarded-For": "2001:db8::5"}).status_code == 200
    for bad in [{"cidr": "10.0.0.1/8"}, {"cidr": "x"}, {"cidr": "10.0.0.0/8", "for": "soon"}, {}]:
        r = m.admin("POST", "/shield/block", json=bad)
        assert r.status_code == 400 and "error" in r.json(), bad
    r = m.admin("POST", "/shield/unblock", json={"cidr": "10.0.0.0/8"})
    assert r.status_code == 400 and "not blocked" in r.json()["error"]
    assert metric(m.metrics(), "moat_shield_admin_blocked_total") == 2
    # the busiest keys: the flooder first, named by its header value
    for _ in range(30):
        get(m, "/t", headers={"X-Key": "flooder"})
    get(m, "/t", headers={"X-Key": "quiet"})
    get(m, "/t", headers={"X-Key": "quiet"})
    top = m.admin("GET", "/shield/top").json()["top"]
    assert top[0]["name"] == "header:flooder" and top[0]["rule"] == 0
    assert top[0]["ahead_seconds"] > top[1]["ahead_seconds"]


def test_ip_prefix_and_cookie_keys(moat_factory, origin):
    m = shield_moat(moat_factory, origin, {"rate_limits": [
        {"match": {"path": "/p/*"}, "key": "ip_prefix:/24", "rate": "1/h", "burst": 2},
        {"match": {"path": "/c/*"}, "key": "cookie:sid", "rate": "1/h", "burst": 1},
        {"match": {"path": "/v6/*"}, "key": "ip_prefix:/48", "rate": "1/h", "burst": 1}]})
    x = lambda a: {"X-Forwarded-For": a}  # noqa: E731
    assert get(m, "/p/1", headers=x("203.0.113.1")).status_code == 200
    assert get(m, "/p/1", headers=x("203.0.113.200")).status_code == 200
    assert get(m, "/p/1", headers=x("203.0.113.9")).status_code == 429  # same /24
    assert get(m, "/p/1", headers=x("203.0.114.9")).status_code == 200
    assert get(m, "/c/1", cookies={"sid": "a"}).status_code == 200
    assert get(m, "/c/1", cookies={"sid": "a"}).status_code == 429
    assert get(m, "/c/1", cookies={"sid": "b"}).status_code == 200
    assert get(m, "/v6/1", headers=x("2001:db8:1:2::1")).status_code == 200
    assert get(m, "/v6/1", headers=x("2001:db8:1:3::1")).status_code == 429  # same /48
    assert get(m, "/v6/1", headers=x("2001:db8:2::1")).status_code == 200


def test_buckets_and_overrides_survive_a_reload(moat_factory, origin):
    cfg = moat_factory.config([origin], admin=True, shield={"rate_limits": [
        {"match": {"header": "X-Key"}, "key": "header:X-Key", "rate": "1/h", "burst": 1}]})
    cfg["sites"] = [{"hosts": ["*"], "pool": "main"}, {"hosts": ["ua.example"], "pool": "main"}]
    m = moat_factory(config=cfg)
    assert get(m, "/", headers={"X-Key": "a"}).status_code == 200
    assert get(m, "/", headers={"X-Key": "a"}).status_code == 429
    r = m.admin("POST", "/shield/under_attack", json={"site": "ua.example", "mode": "on"})
    assert r.status_code == 200
    assert get(m, "/", headers={"Host": "ua.example"}).status_code == 503
    gen = m.status()["generation"]
    m.reload()
    deadline = time.monotonic() + 5
    while m.status()["generation"] == gen and time.monotonic() < deadline:
        time.sleep(0.05)
    assert m.status()["generation"] == gen + 1
    assert get(m, "/", headers={"X-Key": "a"}).status_code == 429  # the bucket is kept
    assert get(m, "/", headers={"X-Key": "b"}).status_code == 200
    assert get(m, "/", headers={"Host": "ua.example"}).status_code == 503  # and the override
    assert get(m, "/").status_code == 200
