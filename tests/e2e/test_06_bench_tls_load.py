"""test_06_bench_tls_load: bench/lib/tls_load.c, the tls bench set's handshake client, against
the test TLS origin: full handshakes are full, --resume resumes every one, --sigalgs gets the
RSA certificate, --plain speaks plain HTTP, and the WRKJSON line has what bench/run.sh reads."""

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tls_load(tmp_path_factory):
    out = tmp_path_factory.mktemp("tls_load") / "tls_load"
    subprocess.run(["cc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(out),
                    str(ROOT / "bench/lib/tls_load.c"), "-lssl", "-lcrypto"], check=True,
                   capture_output=True)
    return out


def run(tls_load, port, *args, seconds=0.5):
    p = subprocess.run([str(tls_load), "-p", str(port), "-c", "2", "-d", str(seconds),
                        "-s", "origin.test", "-P", "/1k", *args], capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    line = next(l for l in p.stdout.splitlines() if l.startswith("WRKJSON "))
    w = json.loads(line[len("WRKJSON "):])
    for k in ("requests", "duration_us", "bytes", "connect_errors", "read_errors",
              "write_errors", "status_errors", "timeouts", "p50_us", "p90_us", "p99_us",
              "max_us", "mean_us"):
        assert k in w, k  # what bench/run.sh reads from wrk's report.lua too
    assert w["requests"] > 0, p.stderr
    assert w["connect_errors"] + w["read_errors"] + w["write_errors"] + w["timeouts"] == 0, \
        p.stderr
    return w


def test_full_resumed_rsa_plain(tls_load, origin_factory, pki):
    o = origin_factory.tls(certs=[pki.shop_ec, pki.shop_rsa], name="t")
    full = run(tls_load, o.port)
    assert full["mode"] == "full" and full["resumed"] == 0
    assert full["full"] == full["handshakes"] >= full["requests"]
    assert (full["protocol"], full["cipher"], full["group"]) == (
        "TLSv1.3", "TLS_AES_256_GCM_SHA384", "X25519")
    assert (full["key_type"], full["key_bits"]) == ("EC", 256)
    # (a handshake still in flight when the run ends is the client's but maybe not yet the
    # origin's: compare with completed requests)
    assert o.resumed == 0 and o.full >= full["requests"]
    # each connection made one request and was closed by the client
    assert all(c.nreq <= 1 for c in o.conns)

    n0 = o.tls_accepts
    res = run(tls_load, o.port, "--resume")
    assert res["mode"] == "resume" and res["full"] == 0
    assert res["resumed"] == res["handshakes"] >= res["requests"] > 0
    # the origin agrees: one full handshake (the session to resume), every other one resumed
    assert o.tls_accepts - n0 >= res["requests"] + 1
    assert o.full >= 1 and o.resumed >= res["requests"]

    rsa = run(tls_load, o.port, "--sigalgs", "rsa_pss_rsae_sha256:rsa_pkcs1_sha256")
    assert (rsa["key_type"], rsa["key_bits"]) == ("RSA", 2048) and rsa["resumed"] == 0

    plain = origin_factory(name="p")
    pl = run(tls_load, plain.port, "--plain")
    assert pl["mode"] == "plain" and pl["handshakes"] == 0
    assert plain.requests[0].header("Connection") == "close"
    assert plain.requests[0].target == "/1k"


def test_status_errors_are_counted(tls_load, origin_factory, pki):
    def h(req, o):
        from origins import response
        return response(503, "no\n")
    o = origin_factory.tls(h, cert=pki.origin)
    w = run(tls_load, o.port, seconds=0.3)
    assert w["status_errors"] == w["requests"] > 0
