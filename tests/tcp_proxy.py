"""A TCP proxy for fault tests: put it in front of a server (e.g. MariaDB) and cut the network path.

    proxy = TcpProxy(("127.0.0.1", 3306))          # listening on proxy.port, forwarding
    proxy.cut()                                    # drop every open connection, keep accepting
    proxy.stop()                                   # down: connections cut, new ones refused
    proxy.start()                                  # up again on the same port
    proxy.close()                                  # for good

`TcpProxy(target, start=False)` reserves a port without listening on it: a client started against it
sees "connection refused" until `start()`. No server is ever stopped, only the path to it.
"""
from __future__ import annotations

import socket
import threading


class TcpProxy:
    def __init__(self, target: tuple[str, int], *, port: int = 0, start: bool = True) -> None:
        self.target = target
        self.port = port or _free_port()
        self.connections = 0  # accepted so far (diagnostics)
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._stopped: threading.Event | None = None
        if start:
            self.start()

    @property
    def up(self) -> bool:
        return self._listener is not None

    def start(self) -> None:
        """Listen on `port` and forward every connection to the target (no-op when already up)."""
        with self._lock:
            if self._listener is not None:
                return
            listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR on POSIX
            listener.settimeout(0.1)
            self._listener, self._stopped = listener, threading.Event()
        threading.Thread(target=self._accept, args=(listener, self._stopped), name=f"tcp-proxy-{self.port}",
                         daemon=True).start()

    def stop(self) -> None:
        """Down: stop listening (new connections are refused) and cut every open connection."""
        with self._lock:
            listener, stopped = self._listener, self._stopped
            self._listener = self._stopped = None
        if stopped is not None:
            stopped.set()
        if listener is not None:
            listener.close()
        self.cut()

    def cut(self) -> None:
        """Cut every open connection (both sides see the socket close); keep accepting new ones."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> "TcpProxy":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- forwarding ------------------------------------------------------------------------------
    def _accept(self, listener: socket.socket, stopped: threading.Event) -> None:
        while not stopped.is_set():
            try:
                client, _ = listener.accept()
            except (socket.timeout, OSError):
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if stopped.is_set():  # stopped while connecting
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
                self.connections += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        # one side closed: close the other so the peer sees it too
        for s in (dst, src):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
