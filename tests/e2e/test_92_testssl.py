"""test_92_testssl: testssl.sh against moat's default TLS settings: no SSLv3 / TLS 1.0 / 1.1,
no weak cipher, forward secrecy and AEAD only (scripts/testssl_summary.py decides).

One testssl run (-p -s -f -E) takes about 15 s here (measured against nginx with moat's
default lists: 15 s; 19 s for a deliberately weak nginx), so it is part of `make e2e`;
scripts/testssl runs the same outside pytest, also against nginx for comparison. The summary's
parsing is checked on two recorded testssl runs (tests/e2e/data/): nginx with moat's default
protocols and ciphers (everything passes) and a weak nginx (each weakness fails)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / "data"
sys.path.insert(0, str(ROOT / "scripts"))
import testssl_summary  # noqa: E402


def failed(results):
    return [what for ok, what in results if not ok]


def test_summary_of_recorded_runs():
    good = testssl_summary.summarize(json.loads((DATA / "testssl-nginx-moat-defaults.json")
                                                .read_text()))
    assert failed(good) == [], failed(good)
    weak = failed(testssl_summary.summarize(json.loads((DATA / "testssl-nginx-weak.json")
                                                       .read_text())))
    assert [w.split(" (")[0].split(";")[0] for w in weak] == [
        "TLS1 not offered", "TLS1_1 not offered", "no AVERAGE ciphers",
        "every cipher has forward secrecy", "every cipher is an AEAD"], weak
    assert "AES128-SHA" in weak[3] and "ECDHE-RSA-AES128-SHA" in weak[4]


@pytest.mark.timeout(150)
def test_testssl_against_moat_defaults(moat_factory, origin, pki, tmp_path):
    assert shutil.which("testssl"), "testssl.sh is not installed: run scripts/install-deps"
    # every tls key but the certificates at its default
    m = moat_factory(config=moat_factory.tls_config([origin], pki,
                                                    certs=[pki.shop_ec, pki.shop_rsa]))
    out = tmp_path / "testssl.json"
    p = subprocess.run(["testssl", "--quiet", "--color", "0", "--warnings", "off", "--nodns",
                        "none", "--sneaky", "--ip", "127.0.0.1", "--jsonfile", str(out),
                        "-p", "-s", "-f", "-E", f"shop.test:{m.tls_port}"],
                       capture_output=True, text=True, timeout=140, stdin=subprocess.DEVNULL)
    assert out.exists(), p.stdout[-3000:] + p.stderr[-2000:]
    results = testssl_summary.summarize(json.loads(out.read_text()))
    assert failed(results) == [], "\n".join(failed(results)) + "\n" + p.stdout[-3000:]
    assert m.alive()
