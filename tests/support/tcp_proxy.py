"""A TCP proxy on 127.0.0.1 that a test controls: the way to take a database away from a
running service and give it back.

    with TcpProxy(("127.0.0.1", 5432)) as proxy:
        url = f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/test"
        proxy.cut()      # every connection dropped, new ones refused: the database is gone
        proxy.restore()  # listening again on the same port

``TcpProxy(upstream, start_cut=True)`` reserves its port without listening (a database that is
down when the service starts).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType
from typing import Self

_CHUNK = 65536


class TcpProxy:
    """Forwards each connection to ``upstream`` byte for byte, on two threads."""

    def __init__(self, upstream: tuple[str, int], *, start_cut: bool = False) -> None:
        self.upstream = upstream
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None
        self.port = self._listen(0)
        self.accepted = 0
        if start_cut:
            self._close_listener()
        else:
            self._serve()

    # control -------------------------------------------------------------------------------
    @property
    def up(self) -> bool:
        return self._listener is not None

    def cut(self) -> None:
        """Refuse new connections and reset every open one."""
        self._close_listener()
        with self._lock:
            doomed, self._sockets = self._sockets, set()
        for sock in doomed:
            _close(sock)

    def restore(self) -> None:
        """Listen again, on the same port."""
        if self._listener is None:
            self._listen(self.port)
            self._serve()

    def stop(self) -> None:
        self.cut()
        for thread in self._take_threads():
            thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # plumbing ------------------------------------------------------------------------------
    def _listen(self, port: int) -> int:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(64)
        self._listener = listener
        return int(listener.getsockname()[1])

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            _close(listener)

    def _serve(self) -> None:
        assert self._listener is not None
        self._spawn(self._accept_loop, self._listener)

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut() closed the listener
            self._connect(client)

    def _connect(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            _close(client)
            return
        server.settimeout(None)
        with self._lock:
            self.accepted += 1
            self._sockets |= {client, server}
        self._spawn(self._pump, client, server)
        self._spawn(self._pump, server, client)

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(_CHUNK):
                target.sendall(data)
        for sock in (source, target):
            with self._lock:
                self._sockets.discard(sock)
            _close(sock)

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _take_threads(self) -> list[threading.Thread]:
        with self._lock:
            threads, self._threads = self._threads, []
        return threads


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
