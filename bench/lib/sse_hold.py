"""sse_hold.py PORT N: holds N GET /events streams open on 127.0.0.1:PORT (moat's admin
listener, no token) and reads them until killed, like N open dashboards."""
import selectors
import socket
import sys

port, n = int(sys.argv[1]), int(sys.argv[2])
sel = selectors.DefaultSelector()
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /events HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n")
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        if not key.fileobj.recv(65536):
            sys.exit("a stream ended")
