"""A real TCP forwarder for tests: another address family or port in front of the test server,
or a port that accepts connections and never answers (``mute``)."""
from __future__ import annotations

import socket
import threading


class Proxy:
    def __init__(self, target_port: int, listen_host: str = "127.0.0.1", target_host: str = "127.0.0.1",
                 mute: bool = False):
        family = socket.AF_INET6 if ":" in listen_host else socket.AF_INET
        self.server = socket.socket(family, socket.SOCK_STREAM)
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind((listen_host, 0))
        self.server.listen(64)
        self.port = self.server.getsockname()[1]
        self.target = (target_host, target_port)
        self.mute = mute
        self.connections: list[socket.socket] = []
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self.connections.append(client)
            if self.mute:
                continue                    # accepted, never answered
            upstream = socket.create_connection(self.target)
            self.connections.append(upstream)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._closed.set()
        self.server.close()
        for s in self.connections:
            try:
                s.close()
            except OSError:
                pass

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
