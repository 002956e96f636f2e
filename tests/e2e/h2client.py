"""h2client.py: a small HTTP/2 client for the e2e tests, on python3-h2 (Debian python3-h2)
over a plain socket (h2c with prior knowledge) or TLS (ALPN h2).

    c = H2(port)                        # h2c
    c = H2(tls_port, ctx=h2_context(pki.ca), server_hostname="shop.test")
    r = c.get("/path")                  # -> Resp(status, headers, body, trailers, reset)
    sid = c.request("POST", "/echo", body=b"...")
    c.pump(lambda: c.done(sid))

Stream events are kept per stream; a GOAWAY is kept in c.goaway (error code, last stream).
<validate=False> lets a test send what a conforming client never would (connection-specific
fields, uppercase names, a Host that differs from :authority). Received DATA is acknowledged
(WINDOW_UPDATE) as it arrives unless <auto_ack> is off: then the client's windows stay as
they are and moat must hold what it cannot send."""

import contextlib
import socket
import ssl
import struct
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings


def h2_context(ca):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx


class Stream:
    def __init__(self, sid):
        self.id = sid
        self.status = None
        self.headers = []
        self.interim = []
        self.body = bytearray()
        self.trailers = None
        self.ended = False
        self.reset = None  # the RST_STREAM error code, when reset

    def header(self, name, default=None):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return default

    def __repr__(self):
        return (f"<stream {self.id} status={self.status} ended={self.ended} reset={self.reset} "
                f"body={len(self.body)}B headers={self.headers}>")


class Closed(Exception):
    pass


class H2:
    def __init__(self, port, ctx=None, server_hostname="shop.test", validate=True, window=None,
                 auto_ack=True, timeout=10.0, max_frame=None):
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if ctx is not None:
            s = ctx.wrap_socket(s, server_hostname=server_hostname)
            self.alpn = s.selected_alpn_protocol()
        else:
            self.alpn = None
        self.sock = s
        self.authority = server_hostname if ctx is not None else f"127.0.0.1:{port}"
        cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8",
                                        validate_outbound_headers=validate,
                                        normalize_outbound_headers=validate,
                                        validate_inbound_headers=True)
        self.conn = h2.connection.H2Connection(config=cfg)
        init = {}
        if window is not None:
            init[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE] = window
        if max_frame is not None:
            init[h2.settings.SettingCodes.MAX_FRAME_SIZE] = max_frame
        if init:
            self.conn.local_settings = h2.settings.Settings(client=True, initial_values=init)
        self.conn.initiate_connection()
        self.auto_ack = auto_ack
        self.streams = {}
        self.goaway = None
        self.closed = False
        self.remote_settings = {}
        self.flush()

    # --- sending ----------------------------------------------------------------------------
    def flush(self):
        data = self.conn.data_to_send()
        if data:
            try:
                self.sock.sendall(data)
            except OSError:
                self.closed = True  # moat closed it (after a GOAWAY): reads tell the rest

    def raw(self, data):
        """Bytes written as they are (frames the library would not make)."""
        self.sock.sendall(data)

    def request(self, method, path, headers=(), body=None, authority=None, end=True):
        sid = self.conn.get_next_available_stream_id()
        hdrs = [(":method", method), (":scheme", "https" if self.alpn else "http"),
                (":authority", authority or self.authority), (":path", path)] + list(headers)
        self.streams[sid] = Stream(sid)
        self.conn.send_headers(sid, hdrs, end_stream=end and not body)
        self.flush()
        if body:
            self.send_body(sid, body, end=end)
        return sid

    def send_body(self, sid, data, end=True, timeout=30.0):
        view = memoryview(data)
        deadline = time.monotonic() + timeout
        while view:
            win = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if win <= 0:
                self.pump(lambda: self.conn.local_flow_control_window(sid) > 0 or
                          self.streams[sid].reset is not None, timeout=deadline - time.monotonic())
                if self.streams[sid].reset is not None:
                    return
                continue
            n = min(win, len(view))
            self.conn.send_data(sid, view[:n].tobytes())
            view = view[n:]
            self.flush()
        if end:
            self.conn.end_stream(sid)
            self.flush()

    # --- receiving --------------------------------------------------------------------------
    def _event(self, ev):
        st = self.streams.get(getattr(ev, "stream_id", None))
        if isinstance(ev, h2.events.ResponseReceived):
            st.headers = [(k, v) for k, v in ev.headers]
            st.status = int(dict(ev.headers)[":status"])
        elif isinstance(ev, h2.events.InformationalResponseReceived):
            st.interim.append(ev.headers)
        elif isinstance(ev, h2.events.DataReceived):
            if st is not None:
                st.body += ev.data
            if self.auto_ack and ev.flow_controlled_length:
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.TrailersReceived):
            st.trailers = [(k, v) for k, v in ev.headers]
        elif isinstance(ev, h2.events.StreamEnded):
            st.ended = True
        elif isinstance(ev, h2.events.StreamReset):
            if st is not None:
                st.reset = ev.error_code
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.goaway = ev
        elif isinstance(ev, h2.events.RemoteSettingsChanged):
            for k, v in ev.changed_settings.items():
                self.remote_settings[k] = v.new_value

    def read_once(self, timeout=None):
        if timeout is not None:
            self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return False
        except (ConnectionResetError, ssl.SSLError, OSError):
            data = b""
        if not data:
            self.closed = True
            raise Closed()
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            events = []
        for ev in events:
            self._event(ev)
        self.flush()
        return True

    def pump(self, until, timeout=10.0):
        """Reads until <until()> is true; False if the time ran out or the connection closed."""
        deadline = time.monotonic() + timeout
        while not until():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                self.read_once(min(left, 1.0))
            except Closed:
                return until()
        return True

    def open_windows(self, sids):
        """A client that held its windows shut starts reading: acknowledges data from now on
        and opens the connection's and each stream's window wide."""
        self.auto_ack = True
        self.conn.increment_flow_control_window(2 ** 30)
        for s in sids:
            self.conn.increment_flow_control_window(2 ** 30, stream_id=s)
        self.flush()

    def done(self, sid):
        st = self.streams[sid]
        return st.ended or st.reset is not None

    def response(self, sid, timeout=20.0):
        ok = self.pump(lambda: self.done(sid), timeout)
        assert ok, (self.streams[sid], self.goaway, self.closed)
        return self.streams[sid]

    def get(self, path, headers=(), method="GET", body=None, timeout=20.0, **kw):
        return self.response(self.request(method, path, headers, body, **kw), timeout)

    def wait_closed(self, timeout=10.0):
        try:
            return self.pump(lambda: self.closed, timeout)
        except Closed:
            return True

    def __enter__(self):
        return self

    def __exit__(self, *a):
        with contextlib.suppress(OSError):
            self.sock.close()


def frame(ftype, flags, sid, payload=b""):
    """One raw HTTP/2 frame."""
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + \
        struct.pack(">I", sid & 0x7fffffff) + payload


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
