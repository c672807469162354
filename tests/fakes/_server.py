"""Threaded loopback HTTP server shared by the provider fakes.

Each fake subclasses :class:`FakeServer` and implements ``_process``. The base class records
every request, and applies the scripted behaviour in this order: ``hang_next``, ``set_handler``,
``outage``, ``fail_next``, then the fake's own processing (auth, validation, ``fail_to``,
success). Every connection is closed after one response, so ``stop()`` can join every thread.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


@dataclass
class RecordedRequest:
    """One HTTP request as the fake saw it; ``status`` is what it answered (None: no answer)."""

    method: str
    path: str
    query: str
    headers: Message[str, str]  # case-insensitive: headers["authorization"] works
    body: bytes
    received_at: float  # time.monotonic()
    received_wall: float  # time.time()
    params: Any = None  # parsed body: form fields (Twilio) or JSON (SendGrid)
    status: int | None = None


@dataclass
class Reply:
    """An HTTP answer; ``after`` runs once the answer has been written."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    after: Callable[[], None] | None = None


Handler = Callable[[RecordedRequest], Reply | None]


@dataclass
class WebhookResult:
    """What the service answered to a webhook the fake posted."""

    status: int
    headers: dict[str, str]
    body: bytes


def post(url: str, body: bytes, headers: dict[str, str], timeout: float = 5.0) -> WebhookResult:
    """POST ``body`` to ``url`` directly (proxy variables ignored); 4xx/5xx are returned."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with opener.open(request, timeout=timeout) as response:
            return WebhookResult(response.status, dict(response.headers.items()), response.read())
    except urllib.error.HTTPError as error:
        with error:
            return WebhookResult(error.code, dict(error.headers.items()), error.read())


@dataclass
class _Hang:
    seconds: float
    accept: bool


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30  # a client that connects and never sends cannot block stop() forever
    server: _Server

    def _serve(self) -> None:
        self.server.fake._serve(self)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True

    def __init__(self, fake: FakeServer) -> None:
        self.fake = fake
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _RequestHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:  # in the serve thread, so stop() sees every connection
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # the client went away (timeout, reset) or the fake is stopping
        self.fake.server_errors.append(sys.exc_info()[1] or RuntimeError("unknown"))
        traceback.print_exc()


class FakeServer:
    """Base of the fakes: lifecycle, request log, scripting and rate measurement."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._requests: list[RecordedRequest] = []
        self._failures: deque[Reply] = deque()
        self._hangs: deque[_Hang] = deque()
        self._outage: tuple[Reply, float | None] | None = None
        self._handler: Handler | None = None
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._workers: list[threading.Thread] = []
        self.server_errors: list[BaseException] = []

    # lifecycle ---------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` of the running server."""
        if self._server is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> Self:
        """Bind 127.0.0.1 on an ephemeral port and serve in a background thread."""
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.01},
            name=f"{type(self).__name__}-serve",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake hung requests, close every socket and join every thread.

        Webhooks already due (Twilio ``auto_callbacks``) are still posted before it returns.
        """
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        with server.connections_lock:
            for conn in list(server.connections):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        server.server_close()  # joins the request threads, so no worker is spawned after this
        if self._thread is not None:
            self._thread.join()
        for worker in self._take_workers():
            worker.join(timeout=30)  # webhook posts: a few, each with a 5 s timeout

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        """Run ``target`` in a thread that ``stop()`` joins."""
        worker = threading.Thread(target=target, name=name)
        with self._lock:
            self._workers = [w for w in self._workers if w.is_alive()]
            self._workers.append(worker)
        worker.start()

    def _take_workers(self) -> list[threading.Thread]:
        with self._lock:
            workers, self._workers = self._workers, []
        return workers

    # records ------------------------------------------------------------------------------
    @property
    def requests(self) -> list[RecordedRequest]:
        """Snapshot of every request received, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def received(self) -> int:
        """How many requests arrived (cheap enough to poll every millisecond)."""
        with self._lock:
            return len(self._requests)

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """Block until at least ``count`` requests arrived; raise TimeoutError otherwise."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._requests) >= count, timeout):
                raise TimeoutError(f"{len(self._requests)} of {count} requests after {timeout}s")
            return list(self._requests)

    def max_rate(
        self, window: float = 1.0, where: Callable[[RecordedRequest], bool] | None = None
    ) -> float:
        """Most requests (those ``where`` accepts) received within any ``window`` seconds,
        divided by ``window``: e.g. ``where=lambda r: r.params.get("From") == sender``."""
        times = sorted(r.received_at for r in self.requests if where is None or where(r))
        best, start = 0, 0
        for end, t in enumerate(times):
            while t - times[start] >= window:
                start += 1
            best = max(best, end - start + 1)
        return best / window

    def reset(self) -> None:
        """Forget recorded requests and all scripted behaviour."""
        with self._lock:
            self._requests.clear()
            self._failures.clear()
            self._hangs.clear()
            self._outage = None
            self._handler = None

    # scripting ------------------------------------------------------------------------------
    def hang_next(self, seconds: float, times: int = 1, *, accept: bool = False) -> None:
        """Delay the next ``times`` answers by ``seconds``.

        ``accept=False``: the request is dropped and the connection closed without an answer.
        ``accept=True``: the request is processed normally first (a message is accepted even
        though the client probably timed out), then answered late.
        """
        with self._lock:
            self._hangs.extend(_Hang(seconds, accept) for _ in range(times))

    def set_handler(self, handler: Handler | None) -> None:
        """Call ``handler(request)`` first for every request; a returned Reply is sent as is,
        None falls through to the normal behaviour. ``None`` removes the handler."""
        with self._lock:
            self._handler = handler

    def end_outage(self) -> None:
        """End an outage started with ``outage()``."""
        with self._lock:
            self._outage = None

    def _push_failures(self, reply: Reply, times: int) -> None:
        with self._lock:
            self._failures.extend(reply for _ in range(times))

    def _set_outage(self, reply: Reply, until: float | None) -> None:
        with self._lock:
            self._outage = (reply, until)

    # request path ------------------------------------------------------------------------
    def _parse(self, request: RecordedRequest) -> Any:
        """The body as the provider reads it, recorded in ``params`` before any scripting."""
        return None

    def _process(self, request: RecordedRequest) -> Reply:
        raise NotImplementedError

    def _scripted(self, request: RecordedRequest) -> Reply:
        with self._lock:
            handler = self._handler
        if handler is not None:
            reply = handler(request)
            if reply is not None:
                return reply
        with self._lock:
            if self._outage is not None:
                reply, until = self._outage
                if until is None or time.monotonic() < until:
                    return reply
                self._outage = None
            if self._failures:
                return self._failures.popleft()
        return self._process(request)

    def _serve(self, http: _RequestHandler) -> None:
        received_at, received_wall = time.monotonic(), time.time()
        http.close_connection = True
        length = int(http.headers.get("Content-Length") or 0)
        path, _, query = http.path.partition("?")
        body = http.rfile.read(length) if length else b""
        request = RecordedRequest(
            http.command, path, query, http.headers, body, received_at, received_wall
        )
        with contextlib.suppress(ValueError):
            request.params = self._parse(request)
        with self._lock:
            self._requests.append(request)
            self._lock.notify_all()
            hang = self._hangs.popleft() if self._hangs else None
        if hang is not None and not hang.accept:
            self._stopping.wait(hang.seconds)
            return  # dropped: the connection closes without an answer
        reply = self._scripted(request)
        if hang is not None and self._stopping.wait(hang.seconds):
            return
        request.status = reply.status
        http.send_response(reply.status)
        headers = {"Content-Length": str(len(reply.body)), "Connection": "close", **reply.headers}
        for name, value in headers.items():
            http.send_header(name, value)
        http.end_headers()
        http.wfile.write(reply.body)
        http.wfile.flush()
        if reply.after is not None:
            reply.after()
