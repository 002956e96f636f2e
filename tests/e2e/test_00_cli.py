"""test_00_cli: the command line: --version, --help, -t config checks, quick mode."""

import re
import subprocess

import pytest

from conftest import MOAT_BIN, free_port
from rawhttp import wait_port

TEMPLATE = """\
listen: ["127.0.0.1:{port}"]
workers: 2
limits: {{ request_line: 8KiB, header_bytes: 16KiB }}
timeouts: {{ client_header: 10s }}
pools:
  main:
    origins: ["127.0.0.1:{oport}"]
    connect_timeout: 2s
sites:
  - hosts: ["*"]
    pool: main
"""


def run(*args, timeout=10):
    return subprocess.run([MOAT_BIN, *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_version():
    r = run("--version")
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    assert "moat" in out.lower()
    assert re.search(r"\d+\.\d+", out), out


def test_help():
    r = run("--help")
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    for opt in ("-c", "-t", "--origin", "--listen", "--workers", "--version"):
        assert opt in out, f"--help does not mention {opt}:\n{out}"


def test_unknown_option_fails():
    r = run("--no-such-option")
    assert r.returncode != 0


def test_check_valid_config(tmp_path):
    p = tmp_path / "ok.yaml"
    p.write_text(TEMPLATE.format(port=free_port(), oport=free_port()))
    r = run("-t", "-c", str(p))
    assert r.returncode == 0, r.stderr
    assert str(p) + ":" not in r.stderr


def test_check_missing_file(tmp_path):
    p = tmp_path / "nope.yaml"
    r = run("-t", "-c", str(p))
    assert r.returncode == 1
    assert "nope.yaml" in r.stderr


BAD = [
    # (line number, replacement line, what)
    (1, 'listen: ["127.0.0.1:99999"]', "port out of range"),
    (2, "workers: lots", "workers not a number"),
    (3, "limits: { request_line: 8KiB, header_bytes: sixteen }", "bad size"),
    (4, "timeouts: { client_header: 10s, bogus_key: 1s }", "unknown key"),
    (8, "    connect_timeout: 5 parsecs", "bad duration"),
    (11, "    pool: nope", "unknown pool"),
    (2, "wrokers: 2", "misspelt top-level key"),
]


@pytest.mark.parametrize("line,repl,what", BAD, ids=[b[2].replace(" ", "_") for b in BAD])
def test_check_bad_config_points_at_line(tmp_path, line, repl, what):
    lines = TEMPLATE.format(port=free_port(), oport=free_port()).splitlines()
    lines[line - 1] = repl
    p = tmp_path / "bad.yaml"
    p.write_text("\n".join(lines) + "\n")
    r = run("-t", "-c", str(p))
    assert r.returncode == 1, f"{what}: exit {r.returncode}, stderr {r.stderr!r}"
    m = re.search(re.escape(str(p)) + r":(\d+):(\d+): \S", r.stderr)
    assert m, f"{what}: no FILE:LINE:COL: message in {r.stderr!r}"
    assert int(m.group(1)) == line, f"{what}: wrong line in {r.stderr!r}"
    assert int(m.group(2)) >= 1


def test_check_forward_headers_refused(tmp_path):
    for value, msg in (("[via]", "Via is always sent"),
                       ("[x-real-ip]", 'unknown forwarding header "x-real-ip"'),
                       ("[forwarded, Forwarded]", '"Forwarded" is listed twice')):
        f = tmp_path / "fwd.yaml"
        f.write_text("listen: 127.0.0.1:1\npools: { main: { origins: [127.0.0.1:2] } }\n"
                     "sites: [{ hosts: ['*'], pool: main }]\n"
                     f"forward_headers: {value}\n")
        p = run("-t", "-c", str(f))
        assert p.returncode == 1, p
        assert f"{f}:4:" in p.stderr and msg in p.stderr, p.stderr


def test_check_yaml_syntax_error(tmp_path):
    p = tmp_path / "syntax.yaml"
    p.write_text('listen: ["127.0.0.1:8080"\nworkers: [2\n')
    r = run("-t", "-c", str(p))
    assert r.returncode == 1
    assert re.search(re.escape(str(p)) + r":\d+:\d+: \S", r.stderr), r.stderr


def test_run_with_bad_config_exits_1(tmp_path):
    lines = TEMPLATE.format(port=free_port(), oport=free_port()).splitlines()
    lines[1] = "workers: lots"
    p = tmp_path / "bad.yaml"
    p.write_text("\n".join(lines) + "\n")
    r = run("-c", str(p))
    assert r.returncode == 1
    assert re.search(re.escape(str(p)) + r":2:\d+: ", r.stderr), r.stderr


def test_quick_mode_proxies(moat_factory, origin, http):
    port = free_port()
    m = moat_factory.raw(["--origin", f"http://{origin.addr}", "--listen",
                          f"127.0.0.1:{port}", "--workers", "1"])
    m.port = port
    m.start()
    r = http.get(m.url("/hello?x=1"), timeout=5)
    assert r.status_code == 200
    assert r.text == "ok main /hello?x=1\n"
    assert origin.requests[0].target == "/hello?x=1"


def test_listening_line_on_stderr(moat_factory, origin):
    m = moat_factory(origin)
    assert wait_port(m.port)
    assert f"moat: listening on 127.0.0.1:{m.port}" in m.stderr()
