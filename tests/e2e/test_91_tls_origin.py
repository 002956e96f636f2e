"""test_91_tls_origin: TLS from moat to origins (pools.*.tls): verification against ca_file or
the system store, SNI, mutual TLS, pooled and resumed origin connections, quick mode with an
https:// origin.

The origins are TLSOrigin (origins.py) with certificates of the session's test PKI: pki.origin
(origin.test and IP 127.0.0.1, trusted), pki.wrong_ca (the same names from a CA nobody
trusts), pki.expired. Clients talk plain HTTP to moat unless said otherwise.
"""

import subprocess
import time

import pytest

from conftest import MOAT_BIN, free_port, metric
from origins import default_handler, response
from rawhttp import Client
from tlsclient import TLSClient


def tls_pool(moat_factory, o, tls, start=True, **over):
    """A moat whose pool "main" reaches <o> with pools.main.tls = <tls>; admin on."""
    cfg = moat_factory.config([o], admin=True, **over)
    cfg["pools"]["main"]["tls"] = tls
    return moat_factory(config=cfg, start=start)


def get(m, path="/", host="shop.test"):
    with Client(m.port) as c:
        c.send(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n")
        return c.read_response()


def up_metrics(m, until=None, settle=0.0):
    mt = m.metrics(until=until, settle=settle)
    return {"full": metric(mt, "moat_tls_upstream_handshakes_total", kind="full"),
            "resumed": metric(mt, "moat_tls_upstream_handshakes_total", kind="resumed"),
            "verify": metric(mt, "moat_tls_upstream_failures_total", reason="verify"),
            "other": metric(mt, "moat_tls_upstream_failures_total", reason="other")}


def log_lines(m, *words, timeout=3.0):
    """Lines of moat's stderr that contain every one of <words> (case-insensitive; a word
    may be a tuple of alternatives), waiting up to <timeout> for one."""
    def has(line, w):
        alts = w if isinstance(w, tuple) else (w,)
        return any(a.lower() in line.lower() for a in alts)
    deadline = time.monotonic() + timeout
    while True:
        lines = [l for l in m.stderr().splitlines() if all(has(l, w) for w in words)]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


# What a failed verification of an origin may be logged as: the brief asks for a line that
# mentions verification (test_wrong_ca... holds moat to it); the other 502 tests also accept
# OpenSSL's own reasons (X509_verify_cert_error_string).
VERIFY_WORDS = ("verif", "hostname mismatch", "local issuer", "self-signed", "self signed",
                "untrusted")


def test_verify_ok_against_ca_file(moat_factory, origin_factory, pki):
    o = origin_factory.tls(cert=pki.origin, name="sec")
    m = tls_pool(moat_factory, o, {"verify": True, "ca_file": pki.ca, "sni": "origin.test"})
    r = get(m, "/x?y=1")
    assert r.status == 200 and r.body == b"ok sec /x?y=1\n", r.head_raw
    rec = o.conns[0]
    assert rec.tls and rec.sni == "origin.test" and rec.version in ("TLSv1.3", "TLSv1.2")
    req = o.requests[0]
    assert req.header("Host") == "shop.test" and req.target == "/x?y=1"
    # the origin is spoken to over TLS, but the client came over plain http
    assert req.header("X-Forwarded-Proto") == "http"
    assert up_metrics(m)["full"] >= 1


def test_ip_origin_without_sni_is_verified_by_ip(moat_factory, origin_factory, pki):
    """No sni: and an IP literal origin: moat sends no SNI (an IP is not a valid server
    name) and checks the certificate's IP address SAN instead."""
    o = origin_factory.tls(cert=pki.origin)
    m = tls_pool(moat_factory, o, {"ca_file": pki.ca})
    assert get(m).status == 200
    assert o.conns[0].tls and o.conns[0].sni is None


def test_sni_sent_as_configured(moat_factory, origin_factory, pki):
    o = origin_factory.tls(certs=[pki.shop_ec], name="shop")
    m = tls_pool(moat_factory, o, {"ca_file": pki.ca, "sni": "www.shop.test"})
    assert get(m, "/s").status == 200
    assert o.conns[0].sni == "www.shop.test"


def test_sni_not_in_certificate_fails(moat_factory, origin_factory, pki):
    """The name moat checks is the SNI it sends: a certificate without it is refused."""
    o = origin_factory.tls(cert=pki.origin)
    m = tls_pool(moat_factory, o, {"ca_file": pki.ca, "sni": "other.test"})
    r = get(m)
    assert r.status == 502, r.head_raw
    assert o.requests == []
    o.wait_tls_errors(1)  # the origin's side of the failed handshake is recorded after moat's 502
    assert o.conns and o.conns[0].sni == "other.test"
    assert log_lines(m, VERIFY_WORDS), m.stderr()[-2000:]


def test_wrong_ca_gives_502_and_a_clear_log_line(moat_factory, origin_factory, pki):
    o = origin_factory.tls(cert=pki.wrong_ca, name="evil")
    m = tls_pool(moat_factory, o, {"verify": True, "ca_file": pki.ca, "sni": "origin.test"})
    before = up_metrics(m)
    r = get(m, "/secret")
    assert r.status == 502, r.head_raw
    assert o.requests == [], "a request was sent to an origin that failed verification"
    lines = log_lines(m, "verif", o.addr) or log_lines(m, "verif", "main")
    assert lines, f"no log line about verification naming the origin:\n{m.stderr()[-2000:]}"
    after = up_metrics(m, until=lambda mt: metric(mt, "moat_tls_upstream_failures_total",
                                                 reason="verify") > before["verify"])
    assert after["verify"] - before["verify"] >= 1
    assert m.alive()


def test_expired_origin_certificate_fails(moat_factory, origin_factory, pki):
    o = origin_factory.tls(cert=pki.expired)
    m = tls_pool(moat_factory, o, {"ca_file": pki.ca, "sni": "origin.test"})
    assert get(m).status == 502
    assert log_lines(m, "expired"), m.stderr()[-2000:]


def test_verify_false_accepts_any_certificate(moat_factory, origin_factory, pki):
    o = origin_factory.tls(cert=pki.wrong_ca)
    m = tls_pool(moat_factory, o, {"verify": False})
    r = get(m, "/v")
    assert r.status == 200 and r.body == b"ok tls1 /v\n"


def test_tls_true_verifies_against_the_system_store(moat_factory, origin_factory, pki):
    """`tls: true`: verify on, against the system's CAs, which do not know the test CA."""
    o = origin_factory.tls(cert=pki.origin)
    m = tls_pool(moat_factory, o, True)
    assert get(m).status == 502
    assert o.requests == []
    assert log_lines(m, VERIFY_WORDS), m.stderr()[-2000:]


def test_mutual_tls(moat_factory, origin_factory, pki):
    o = origin_factory.tls(cert=pki.origin, client_ca=pki.ca, require_client_cert=True)
    m = tls_pool(moat_factory, o, {"ca_file": pki.ca, "sni": "origin.test",
                                   "cert": pki.client.cert, "key": pki.client.key})
    r = get(m, "/m")
    assert r.status == 200 and r.body == b"ok tls1 /m\n"
    subject = dict(x[0] for x in o.conns[0].peer_cert["subject"])
    assert subject["commonName"] == "moat-client"


def test_mutual_tls_without_client_certificate_fails(moat_factory, origin_factory, pki):
    o = origin_factory.tls(cert=pki.origin, client_ca=pki.ca, require_client_cert=True)
    m = tls_pool(moat_factory, o, {"ca_file": pki.ca, "sni": "origin.test"})
    assert get(m).status == 502
    o.wait_tls_errors(1)
    assert o.requests == []
    assert m.alive()


def test_origin_connections_are_pooled(moat_factory, origin_factory, pki):
    """20 requests, one after the other (new client connections each time), through one
    worker: one TLS connection to the origin, kept alive and reused."""
    o = origin_factory.tls(cert=pki.origin)
    m = tls_pool(moat_factory, o, {"ca_file": pki.ca, "sni": "origin.test"}, workers=1)
    for i in range(20):
        r = get(m, f"/p{i}")
        assert r.status == 200 and r.body == f"ok tls1 /p{i}\n".encode()
    assert len(o.requests) == 20
    assert o.tls_accepts == 1, [c.n for c in o.conns]
    assert len(o.conns) == 1 and o.conns[0].nreq == 20


def test_origin_sessions_are_resumed(moat_factory, origin_factory, pki):
    """An origin that closes after every answer: each request is a new TLS connection, and
    all but the first resume the session of an earlier one."""
    def closing(req, o):
        return response(200, f"closing {req.target}\n", [("Connection", "close")])
    o = origin_factory.tls(closing, cert=pki.origin)
    m = tls_pool(moat_factory, o, {"ca_file": pki.ca, "sni": "origin.test"}, workers=1)
    before = up_metrics(m)
    for i in range(5):
        assert get(m, f"/r{i}").body == f"closing /r{i}\n".encode()
    assert o.tls_accepts == 5
    assert (o.full, o.resumed) == (1, 4), [(c.n, c.resumed) for c in o.conns]
    after = up_metrics(m, until=lambda mt: metric(mt, "moat_tls_upstream_handshakes_total",
                                                 kind="resumed") >= before["resumed"] + 4)
    assert after["resumed"] - before["resumed"] == 4


def test_quick_mode_https_origin_verifies_against_system_store(moat_factory, origin_factory,
                                                               pki):
    """`moat --origin https://...` verifies the origin against the system store: an origin
    with a certificate from the test CA gets a 502. Expected: quick mode does not trust
    what it cannot check (use a config file with ca_file, or verify: false, for that)."""
    o = origin_factory.tls(cert=pki.origin)
    port = free_port()
    m = moat_factory.raw(["--origin", f"https://{o.addr}", "--listen", f"127.0.0.1:{port}",
                          "--workers", "1"])
    m.port = port
    m.start()
    with Client(port) as c:
        c.send("GET /q HTTP/1.1\r\nHost: a\r\n\r\n")
        r = c.read_response()
    assert r.status == 502, r.head_raw
    assert o.requests == []
    assert o.conns and o.conns[0].sni is None  # an IP literal: no SNI
    assert log_lines(m, VERIFY_WORDS), m.stderr()[-2000:]


def test_https_client_to_https_origin(moat_factory, origin_factory, pki):
    """TLS on both sides: the client's https reaches the origin as X-Forwarded-Proto."""
    o = origin_factory.tls(default_handler, cert=pki.origin)
    cfg = moat_factory.tls_config([o], pki)
    cfg["pools"]["main"]["tls"] = {"ca_file": pki.ca, "sni": "origin.test"}
    m = moat_factory(config=cfg)
    with TLSClient(m.tls_port, "shop.test", ca=pki.ca) as c:
        for i in range(3):
            r = c.get(f"/b{i}")
            assert r.status == 200 and r.body == f"ok tls1 /b{i}\n".encode()
    assert [r.header("X-Forwarded-Proto") for r in o.requests] == ["https"] * 3


@pytest.mark.parametrize("tls,what", [
    ({"ca_file": "/nonexistent/ca.pem"}, "/nonexistent/ca.pem"),
    ({"cert": "CLIENT"}, "key"),
    ({"cert": "CLIENT", "key": "OTHERKEY"}, "OTHERKEY"),
])
def test_check_refuses_bad_pool_tls(tmp_path, pki, tls, what):
    subst = {"CLIENT": pki.client.cert, "OTHERKEY": pki.other.key}
    tls = {k: subst.get(v, v) for k, v in tls.items()}
    what = subst.get(what, what)
    inner = ", ".join(f"{k}: {v}" for k, v in tls.items())
    p = tmp_path / "pool.yaml"
    p.write_text(f'listen: ["127.0.0.1:{free_port()}"]\n'
                 f'pools:\n  main:\n    origins: ["127.0.0.1:{free_port()}"]\n'
                 f'    tls: {{ {inner} }}\n'
                 'sites: [{ hosts: ["*"], pool: main }]\n')
    r = subprocess.run([MOAT_BIN, "-t", "-c", str(p)], capture_output=True, text=True,
                       timeout=10, stdin=subprocess.DEVNULL)
    assert r.returncode == 1, r
    # a file's problem may be found after parsing (when OpenSSL loads it), so the message
    # names the file, not necessarily a line
    assert what in r.stderr and "unknown key" not in r.stderr, r.stderr


def test_pools_with_other_tls_settings_never_share_a_connection(moat_factory, origin_factory,
                                                                  pki):
    """Two pools reach the same origin address: "lax" with verify: false, "strict" trusting a
    CA that did not sign the origin. After "lax" has left a warm connection in its pool, a
    request for "strict" must still verify (and fail) on a connection of its own, never reuse
    that one: idle connections are pooled per address and per TLS settings."""
    o = origin_factory.tls(cert=pki.wrong_ca)
    cfg = moat_factory.config([o], admin=True, workers=1)
    cfg["pools"]["main"]["tls"] = {"verify": False}
    cfg["pools"]["strict"] = dict(cfg["pools"]["main"],
                                  tls={"verify": True, "ca_file": pki.ca, "sni": "origin.test"})
    cfg["sites"] = [{"hosts": ["lax.test"], "pool": "main"},
                    {"hosts": ["strict.test"], "pool": "strict"}]
    m = moat_factory(config=cfg)
    assert get(m, "/a", host="lax.test").status == 200
    assert get(m, "/b", host="strict.test").status == 502
    assert get(m, "/c", host="lax.test").status == 200
    assert [r.target for r in o.requests] == ["/a", "/c"]
