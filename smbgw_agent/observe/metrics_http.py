"""Serving /metrics: rendered once per change of the data, over HTTP or TLS.

Why not prometheus-client's `start_http_server`: at 2,000 shares a scrape is ~12,000
samples and rendering them costs 50-110 ms per scrape, although the data only changes
after a pass or a background reading. This app renders once per change (and at least
every `max_age` seconds) and serves the cached bytes, gzipped on request. Owning the
server also gives TLS and client-certificate checks with Python's `ssl` on every
prometheus-client version (0.16, in Debian 12, has none).
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

StartResponse = Callable[..., Any]
log = logging.getLogger(__name__)


def _compress(body: bytes) -> bytes:
    """A rendering gzipped, the same way whether the render or a scrape does it."""
    return gzip.compress(body, compresslevel=5)


class ExpositionApp:
    def __init__(
        self, registry: CollectorRegistry, version: Callable[[], Hashable], max_age: float = 10.0
    ) -> None:
        self.registry = registry
        self.version = version
        self.max_age = max_age
        # Two locks, because a render takes 50-250 ms under a pass's load: `_render_lock`
        # makes concurrent renders one, `_store_lock` guards only the cache's
        # check-and-set. A scrape never waits for a render it does not need (it waited
        # behind the background render while storing its gzipped copy: 200-300 ms
        # scrapes at 2,000 shares during reloads).
        self._render_lock = threading.Lock()
        self._store_lock = threading.Lock()
        self._cache: dict[str, tuple[Hashable, bytes, bytes | None]] = {}
        self._encoders: dict[str, Callable[[CollectorRegistry], bytes]] = {}
        self._gzipped: set[str] = set()  # content types scraped gzipped: compressed when rendered
        self._warming = threading.Event()
        self.renders = 0

    def _key(self) -> Hashable:
        return (self.version(), int(time.monotonic() // self.max_age))

    def warm(self) -> None:
        """Re-render, in the background, every format scraped so far (call after a pass).

        Scrapes that arrive meanwhile get the previous rendering (at most one render,
        ~0.1 s, old) instead of waiting for the lock behind a pass's worth of work.
        """
        if self._warming.is_set() or not self._encoders:
            return
        self._warming.set()
        threading.Thread(target=self._warm, name="metrics-render", daemon=True).start()

    def _warm(self) -> None:
        try:
            for content_type, encoder in list(self._encoders.items()):
                with self._render_lock:
                    entry = self._cache.get(content_type)
                    if entry is None or entry[0] != self._key():
                        self._render(content_type, encoder)
        finally:
            self._warming.clear()

    def _render(self, content_type: str, encoder: Callable[[CollectorRegistry], bytes]) -> tuple[
            Hashable, bytes, bytes | None]:
        """Render (and compress, if scrapers ask for gzip) outside the store lock; the
        caller holds the render lock."""
        key = self._key()
        body = encoder(self.registry)
        compressed = _compress(body) if content_type in self._gzipped else None
        entry = (key, body, compressed)
        with self._store_lock:
            self._cache[content_type] = entry
        self.renders += 1
        return entry

    def body(self, accept: str, want_gzip: bool) -> tuple[str, bytes, bool]:
        """(content type, bytes, gzipped) for one request, from the cache when current."""
        encoder, content_type = choose_encoder(accept)
        self._encoders.setdefault(content_type, encoder)
        if want_gzip:
            self._gzipped.add(content_type)
        entry = self._cache.get(content_type)
        if entry is None or entry[0] != self._key():
            if entry is not None:
                self.warm()  # serve the previous rendering while a fresh one is made
            else:
                with self._render_lock:  # concurrent first scrapes wait for one render and share it
                    entry = self._cache.get(content_type)
                    if entry is None or entry[0] != self._key():
                        entry = self._render(content_type, encoder)
        assert entry is not None
        if want_gzip and entry[2] is None:
            entry = (entry[0], entry[1], _compress(entry[1]))
            with self._store_lock:
                if self._cache.get(content_type, (None,))[0] == entry[0]:
                    self._cache[content_type] = entry
        if want_gzip and entry[2] is not None:
            return content_type, entry[2], True
        return content_type, entry[1], False

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Content-Type", "text/plain"), ("Allow", "GET, HEAD")])
            return [b"only GET\n"]
        if path == "/":
            start_response("200 OK", [("Content-Type", "text/html")])
            return [b'<html><body><a href="/metrics">smbgw-agent metrics</a></body></html>\n']
        if path != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found; metrics are at /metrics\n"]
        want_gzip = "gzip" in environ.get("HTTP_ACCEPT_ENCODING", "")
        content_type, body, gzipped = self.body(environ.get("HTTP_ACCEPT", ""), want_gzip)
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        if gzipped:
            headers.append(("Content-Encoding", "gzip"))
        start_response("200 OK", headers)
        return [b"" if environ.get("REQUEST_METHOD") == "HEAD" else body]


class _QuietHandler(WSGIRequestHandler):
    # Every read and write on the connection gives up after this long (idle clients,
    # a TLS handshake that never comes); the server's reaper bounds the whole request.
    timeout = 5

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every 15 s would drown the journal."""


class BoundedServer(ThreadingMixIn, WSGIServer):
    """A threading WSGI server that cannot be used to starve the agent.

    - At most `max_connections` requests are served at once; a connection beyond that is
      closed as soon as it is accepted, so a flood holds no threads and no descriptors.
    - Each connection has `request_deadline` seconds in all (slow-header clients that
      send a byte every few seconds included): the reaper shuts it down after that.
    - Errors of single connections (resets, timeouts) are not worth a traceback.
    """

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64
    max_connections = 16
    request_deadline = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(self.max_connections)
        self._active: dict[Any, float] = {}
        self._active_lock = threading.Lock()
        self.refused = 0
        self.reaped = 0

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)
            return
        with self._active_lock:
            self._active[request] = time.monotonic() + self.request_deadline
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(request)

    def _release(self, request: Any) -> None:
        with self._active_lock:
            known = self._active.pop(request, None) is not None
        if known:
            self._slots.release()

    def service_actions(self) -> None:
        """Called by serve_forever about twice a second: cut connections past their deadline."""
        now = time.monotonic()
        with self._active_lock:
            overdue = [request for request, ends in self._active.items() if ends <= now]
        for request in overdue:
            self.reaped += 1
            with contextlib.suppress(OSError):
                request.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("metrics connection from %s failed", client_address, exc_info=True)

    @property
    def active(self) -> int:
        return len(self._active)


def tls_context(cert: str, key: str, client_ca: str | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if client_ca:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=client_ca)
    return context


class MetricsServer:
    def __init__(
        self, app: ExpositionApp, host: str, port: int, tls: ssl.SSLContext | None = None,
        max_connections: int = BoundedServer.max_connections,
        request_deadline: float = BoundedServer.request_deadline,
    ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        connections, deadline = max_connections, request_deadline

        class Server(BoundedServer):
            address_family = family
            max_connections = connections
            request_deadline = deadline

        self.server = make_server(host, port, app, Server, handler_class=_QuietHandler)
        if tls is not None:
            # The handshake happens in the request thread, so a slow client cannot stall accept().
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True, do_handshake_on_connect=False)
        self.thread = threading.Thread(target=self.server.serve_forever, name="metrics-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
