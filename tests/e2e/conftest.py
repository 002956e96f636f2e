"""conftest.py: fixtures that start real moat processes and scripted origins on 127.0.0.1.

    moat_factory(origin, **cfg) -> Moat     a running moat with an inline YAML config
    origin_factory(handler, name) -> Origin  a scripted origin (see origins.py)
    origin_factory.tls(handler, name, cert=pki.origin, ...) -> TLSOrigin   the same, HTTPS
    pki -> PKI                               the session's test CA and certificates (pki.py)
    https(pki) -> requests.Session           resolves every name to 127.0.0.1, trusts pki.ca

Every process and thread a test starts is stopped at teardown; a moat that printed a
sanitizer report fails the test that ran it.
"""

import copy
import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml

from origins import Origin, TLSOrigin
from pki import PKI
from rawhttp import wait_port
from tlsclient import https_session

ROOT = Path(__file__).resolve().parents[2]
MOAT_BIN = os.environ.get("MOAT_BIN") or str(ROOT / "moat")
SAN = "san" in os.path.basename(MOAT_BIN)  # the ASan+UBSan build is slower
os.environ["NO_PROXY"] = "127.0.0.1,localhost"
for _v in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
    os.environ.pop(_v, None)

SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                     "ERROR: ThreadSanitizer", "SUMMARY: UndefinedBehaviorSanitizer")


_handed_out = set()


def free_port():
    """A port nothing listens on now and that this test run has not handed out before: the
    kernel may give the same ephemeral port to two binds in a row once the first socket is
    closed, and a moat whose listener and admin API got the same port would exit with "address
    already in use"."""
    for _ in range(100):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("free_port: no fresh port in 100 tries")


def listening(port):
    """True if something listens on TCP <port> (from /proc/net/tcp{,6}): a check that does
    not connect, so it costs the listener nothing (no accept, no TLS handshake counted)."""
    want = f":{port:04X} "
    for f in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            for line in Path(f).read_text().splitlines()[1:]:
                parts = line.split()
                if parts[1].endswith(want.strip()) and parts[3] == "0A":
                    return True
        except FileNotFoundError:
            pass
    return False


def wait_listening(port, timeout=5.0, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        if listening(port):
            return True
        time.sleep(0.02)
    return False


def listen_ports(listen):
    """The config's listen entries -> (plain ports, TLS ports), in order."""
    if isinstance(listen, (str, dict)):
        listen = [listen]
    plain, tls = [], []
    for e in listen:
        addr, is_tls = (e["addr"], bool(e.get("tls"))) if isinstance(e, dict) else (e, False)
        (tls if is_tls else plain).append(int(str(addr).rsplit(":", 1)[1]))
    return plain, tls


def deep_merge(base, over):
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_metrics(text):
    """Prometheus text -> {'name{a="b"}': float, 'name': float}. Labels are kept in the order
    moat prints them; use metric() to look one up by name and label subset."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)', line)
        if m:
            out[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return out


def metric(metrics, name, **labels):
    """Sum of the samples of <name> whose labels include <labels> (0.0 if none)."""
    total = 0.0
    for (n, lab), v in metrics.items():
        if n != name:
            continue
        pairs = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', lab))
        if all(pairs.get(k) == str(v2) for k, v2 in labels.items()):
            total += v
    return total


class Moat:
    """A moat process. Config is a dict (written as YAML) or raw YAML text."""

    def __init__(self, workdir, config, args=None, admin=False):
        self.dir = Path(workdir)
        self.config_path = self.dir / "moat.yaml"
        self.stderr_path = self.dir / "moat.stderr"
        self.access_log = self.dir / "access.log"
        self.token = None
        self.admin_port = None
        self.proc = None
        self.args = args
        self.config = config
        self.port = None  # the first plain listener
        self.tls_port = None  # the first TLS listener ({addr: ..., tls: true})
        self.tls_ports = []
        if isinstance(config, dict):
            plain, self.tls_ports = listen_ports(config["listen"])
            self.port = plain[0] if plain else None
            self.tls_port = self.tls_ports[0] if self.tls_ports else None
            if "admin" in config:
                self.admin_port = int(config["admin"]["listen"].rsplit(":", 1)[1])
                tf = config["admin"].get("token_file")
                if tf:
                    self.token = Path(tf).read_text().strip()
        self.write_config(config)

    def write_config(self, config):
        self.config = config
        text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config_path)

    def start(self, wait=True):
        argv = [MOAT_BIN] + (self.args if self.args is not None else ["-c", str(self.config_path)])
        self.stderr_f = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.stderr_f,
                                     stderr=self.stderr_f, cwd=self.dir)
        if wait:
            if self.port is not None:
                ok = wait_port(self.port, 10.0 if SAN else 5.0, self.proc)
            else:
                ok = True
            # TLS listeners are waited for without connecting: a probe connection would be
            # a failed handshake in moat's counters
            for p in self.tls_ports:
                ok = ok and wait_listening(p, 10.0 if SAN else 5.0, self.proc)
            if not ok:
                self.kill()
                raise AssertionError(
                    f"moat did not accept on {self.port} / {self.tls_ports}; "
                    f"exit={self.proc.returncode}; stderr:\n{self.stderr()}")
            if self.admin_port and not wait_port(self.admin_port, 5.0, self.proc):
                self.kill()
                raise AssertionError(f"moat admin did not accept; stderr:\n{self.stderr()}")
        return self

    @property
    def pid(self):
        return self.proc.pid

    def url(self, path="/"):
        return f"http://127.0.0.1:{self.port}{path}"

    def https_url(self, path="/", host="shop.test"):
        """https://HOST:TLSPORT/PATH: for https_session(), which connects it to 127.0.0.1."""
        return f"https://{host}:{self.tls_port}{path}"

    def http_url(self, path="/", host="shop.test"):
        return f"http://{host}:{self.port}{path}"

    def stderr(self):
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        self.proc.send_signal(sig)

    def reload(self, config=None):
        if config is not None:
            self.write_config(config)
        self.signal(signal.SIGHUP)

    def rss_kib(self):
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def access_lines(self, n, timeout=3.0):
        """Waits until the access log has at least <n> lines; returns them parsed."""
        deadline = time.monotonic() + timeout
        lines = []
        while time.monotonic() < deadline:
            if self.access_log.exists():
                lines = [l for l in self.access_log.read_text().splitlines() if l.strip()]
                if len(lines) >= n:
                    break
            time.sleep(0.05)
        return [json.loads(l) for l in lines]

    # --- admin -------------------------------------------------------------------------
    def admin(self, method, path, token="default", **kw):
        headers = kw.pop("headers", {})
        tok = self.token if token == "default" else token
        if tok:
            headers["Authorization"] = f"Bearer {tok}"
        with requests.Session() as s:
            s.trust_env = False
            return s.request(method, f"http://127.0.0.1:{self.admin_port}{path}",
                             headers=headers, timeout=5, **kw)

    def metrics(self, until=None, timeout=2.0, settle=0.0):
        """Scrapes /metrics. With <until>, scrapes again until until(metrics) is true or
        <timeout> passes: moat may count a request just after its last byte is written, so a
        scrape right after a response can lag behind. <settle> waits that much longer and
        scrapes once more, so exact-count assertions also catch overshoot."""
        deadline = time.monotonic() + timeout
        while True:
            r = self.admin("GET", "/metrics")
            assert r.status_code == 200, r.text
            mt = parse_metrics(r.text)
            if until is None or until(mt) or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        if settle:
            time.sleep(settle)
            return self.metrics()
        return mt

    def status(self):
        r = self.admin("GET", "/status")
        assert r.status_code == 200, r.text
        return r.json()

    # --- stop ----------------------------------------------------------------------------
    def stop(self, timeout=10.0):
        """SIGTERM, wait; SIGKILL if it hangs. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.stderr_f.close()
        return self.proc.returncode

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def sanitizer_report(self):
        text = self.stderr()
        for m in SANITIZER_MARKERS:
            if m in text:
                return text
        return None


def base_config(port, origins, **over):
    """A complete moat config: listen on <port>, one pool "main" with <origins>
    (Origin objects or "host:port" strings), site "*" -> main; <over> deep-merged."""
    addrs = [o if isinstance(o, str) else o.addr for o in origins]
    cfg = {
        "listen": [f"127.0.0.1:{port}"],
        "workers": 2,
        "limits": {"request_line": "8KiB", "header_bytes": "16KiB", "header_count": 100,
                   "body_bytes": 0, "connections": 10000},
        "timeouts": {"client_header": "10s", "client_body": "60s", "keepalive": "60s",
                     "send": "60s", "drain": "5s"},
        "trusted_proxies": ["127.0.0.1/32"],
        "via": "moat",
        "log": {"error": "stderr", "level": "info"},
        "pools": {"main": {"origins": addrs, "keepalive": 32, "connect_timeout": "2s",
                           "first_byte_timeout": "5s", "idle_timeout": "5s",
                           "host_header": "client"}},
        "sites": [{"hosts": ["*"], "pool": "main"}],
    }
    return deep_merge(cfg, over)


class MoatFactory:
    def __init__(self, tmpdir):
        self.tmpdir = Path(tmpdir)
        self.moats = []
        self.n = 0

    def config(self, origins, admin=False, token=False, access_log=True, **over):
        """Builds (does not start) a config dict with fresh ports."""
        self.n += 1
        d = self.tmpdir / f"moat{self.n}"
        d.mkdir(parents=True, exist_ok=True)
        cfg = base_config(free_port(), origins, **over)
        if access_log:
            cfg["log"]["access"] = str(d / "access.log")
        if admin:
            cfg["admin"] = {"listen": f"127.0.0.1:{free_port()}"}
            if token:
                tf = d / "admin.token"
                tf.write_text("s3cret-token-for-tests\n")
                cfg["admin"]["token_file"] = str(tf)
        cfg["_dir"] = str(d)
        return cfg

    def tls_config(self, origins, pki, certs=None, admin=True, **over):
        """config() plus a TLS listener after the plain one and tls.certificates: <certs>
        (pki.Leaf list; default shop.test ECDSA first (the default certificate), shop.test
        RSA, *.api.test, other.test). A `tls` map in <over> is kept (certificates added)."""
        cfg = self.config(origins, admin=admin, **over)
        cfg["listen"] = [cfg["listen"][0], {"addr": f"127.0.0.1:{free_port()}", "tls": True}]
        if certs is None:
            certs = [pki.shop_ec, pki.shop_rsa, pki.api_wild, pki.other]
        tls = dict(cfg.get("tls") or {})
        tls.setdefault("certificates", [{"cert": c.cert, "key": c.key} for c in certs])
        cfg["tls"] = tls
        return cfg

    def __call__(self, origins=(), config=None, start=True, admin=False, token=False, **over):
        if isinstance(origins, Origin) or isinstance(origins, str):
            origins = [origins]
        cfg = config if config is not None else self.config(list(origins), admin=admin,
                                                             token=token, **over)
        d = cfg.pop("_dir")
        m = Moat(d, cfg)
        self.moats.append(m)
        if start:
            m.start()
        return m

    def raw(self, args, yaml_text=None):
        """A moat with explicit argv (quick mode); port must be found by the caller."""
        self.n += 1
        d = self.tmpdir / f"moat{self.n}"
        d.mkdir(parents=True, exist_ok=True)
        m = Moat(d, yaml_text or "", args=args)
        self.moats.append(m)
        return m

    def teardown(self):
        reports = []
        for m in self.moats:
            m.stop()
            rep = m.sanitizer_report()
            if rep:
                reports.append(rep)
        return reports


class OriginFactory:
    def __init__(self):
        self.origins = []

    def __call__(self, handler=None, name=None, port=0):
        o = Origin(handler, name or f"o{len(self.origins) + 1}", port)
        self.origins.append(o)
        return o

    def tls(self, handler=None, name=None, cert=None, certs=None, port=0, **kw):
        """A TLSOrigin (origins.py) serving <cert> (a pki.Leaf; or <certs>, a list of them);
        other keywords go to TLSOrigin (client_ca, require_client_cert, ...)."""
        leaves = certs if certs is not None else [cert]
        o = TLSOrigin(handler, name or f"tls{len(self.origins) + 1}", port,
                      certs=[(leaf.cert, leaf.key) for leaf in leaves], **kw)
        self.origins.append(o)
        return o

    def teardown(self):
        errors = []
        for o in self.origins:
            o.stop()
            errors += o.errors
        return errors


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """The test PKI (pki.py): a root CA, leaves for shop.test (ECDSA and RSA), *.api.test,
    other.test, origin.test, one from an untrusted CA, an expired one, a client certificate.
    Built once per session with the openssl CLI (about 1.5 s)."""
    return PKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def https(pki):
    """requests over TLS to 127.0.0.1 under any name, trusting the test CA:
    https.get(moat.https_url("/x")) checks moat's certificate for shop.test."""
    s = https_session(pki.ca)
    yield s
    s.close()


@pytest.fixture
def origin_factory():
    f = OriginFactory()
    yield f
    errors = f.teardown()
    assert not errors, f"origin handler errors: {errors}"


@pytest.fixture
def origin(origin_factory):
    return origin_factory(name="main")


@pytest.fixture
def moat_factory(tmp_path):
    f = MoatFactory(tmp_path)
    yield f
    reports = f.teardown()
    assert not reports, "sanitizer report from moat:\n" + "\n".join(reports)[-8000:]


@pytest.fixture
def moat(moat_factory, origin):
    """A moat with admin on (no token) in front of the default origin."""
    return moat_factory(origin, admin=True)


@pytest.fixture
def http():
    """A requests session that ignores proxy settings from the environment."""
    s = requests.Session()
    s.trust_env = False
    yield s
    s.close()


# --- per-test watchdog: pytest-timeout is not installed, so SIGALRM does its job -------------

def pytest_configure(config):
    config.addinivalue_line("markers", "timeout(seconds): fail the test after this long")


class TestTimeout(Exception):
    pass


@pytest.fixture(autouse=True)
def _watchdog(request):
    mark = request.node.get_closest_marker("timeout")
    secs = int(mark.args[0]) if mark else 60
    if SAN:
        secs *= 3

    def on_alarm(signum, frame):
        raise TestTimeout(f"test took longer than {secs}s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(secs)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)
