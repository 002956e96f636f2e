"""test_112_attacks.py: the defences bench/attacks.py found missing.

The slow-read defence (limits.send_queue, TCP_NOTSENT_LOWAT on client
sockets). A client with a tiny receive window that asks for a large response and reads nothing
must not get that response queued in the kernel for it: moat's side of the connection holds at
most send_queue bytes beyond what the window let go. Without the bound (send_queue: 0) the
kernel takes megabytes for the same client, which is what the slow-read attack of
bench/attacks.py multiplies by a thousand connections.

A connection flood at limits.connections: connections that only wait for a request give their
place to a new client (moat_h1_reclaim) instead of the new client being refused."""
import socket
import time

import requests

from conftest import metric

BODY = 4 * 1024 * 1024


def server_send_queue(moat_port, client_port):
    """tx_queue (bytes written and not yet acknowledged, unsent ones included) of moat's
    socket for the connection from client_port, from /proc/net/tcp."""
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            cols = line.split()
            local, remote, txrx = cols[1], cols[2], cols[4]
            if int(local.split(":")[1], 16) == moat_port and int(remote.split(":")[1], 16) == client_port:
                return int(txrx.split(":")[0], 16)
    return None


def slow_reader_queue(m, path):
    """Opens a connection with a 4 KiB receive buffer, asks for path, reads nothing; returns
    the largest send queue moat's side of it reaches within 3 s."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", m.port))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: shop.test\r\n\r\n".encode())
    cport = s.getsockname()[1]
    best = 0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        q = server_send_queue(m.port, cport)
        best = max(best, q or 0)
        time.sleep(0.1)
    # the connection still works: the client gets its bytes when it reads
    s.settimeout(5)
    assert s.recv(64).startswith(b"HTTP/1.1 200")
    s.close()
    return best


def test_slow_reader_gets_a_bounded_kernel_queue(moat_factory, origin):
    m = moat_factory(origin, limits={"send_queue": "128KiB"})
    q = slow_reader_queue(m, f"/size/{BODY}")
    # 128 KiB unsent + the window the client advertised + one segment over the mark
    assert 0 < q <= 512 * 1024, q


def test_the_default_bounds_it_too(moat_factory, origin):
    m = moat_factory(origin)
    q = slow_reader_queue(m, f"/size/{BODY}")
    assert 0 < q <= 512 * 1024, q


def test_without_the_bound_the_kernel_queues_megabytes(moat_factory, origin):
    """What the bound prevents (and proof that the measurement above can see it)."""
    m = moat_factory(origin, limits={"send_queue": 0})
    q = slow_reader_queue(m, f"/size/{BODY}")
    assert q > 1024 * 1024, q


def test_a_connection_flood_at_the_limit_does_not_lock_out_a_new_client(moat_factory, origin):
    m = moat_factory(origin, admin=True, workers=1, limits={"connections": 20})
    flood = []
    try:
        for _ in range(60):  # three times the limit, each with a head that never ends
            s = socket.create_connection(("127.0.0.1", m.port), timeout=5)
            s.sendall(b"GET / HTTP/1.1\r\n")
            flood.append(s)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            met = m.metrics()
            if metric(met, "moat_connections_active") >= 20:
                break
            time.sleep(0.05)
        assert metric(met, "moat_connections_active") >= 20
        for _ in range(5):
            r = requests.get(m.url("/x"), timeout=5)
            assert r.status_code == 200 and r.text.startswith("ok main")
        met = m.metrics()
        assert metric(met, "moat_connections_reclaimed_total") >= 5
        assert metric(met, "moat_connections_active") <= 20
    finally:
        for s in flood:
            s.close()
