"""A TCP proxy on 127.0.0.1 that counts the bytes a server sends to its clients.

Put between boto3 and moto, it shows how much of an object a download really fetched from S3.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Self


class LoopbackProxy:
    """A TCP listener on 127.0.0.1 that hands each connection to ``_serve`` in a thread of its
    own, forwarding to ``upstream``; a subclass says how."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.served = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False

    @property
    def endpoint(self) -> str:
        """The proxy's URL, for ``endpoint_url``."""
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> None:
        """Start counting from zero."""
        with self._lock:
            self.served = 0

    def __enter__(self) -> Self:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        raise NotImplementedError


class ByteCountingProxy(LoopbackProxy):
    """Forwards every connection to ``upstream``; ``served`` counts bytes sent to clients."""

    def _serve(self, client: socket.socket) -> None:
        server = socket.create_connection(self.upstream)
        threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
        self._pipe(server, client, True)

    def _pipe(self, source: socket.socket, sink: socket.socket, count: bool) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
                if count:
                    with self._lock:
                        self.served += len(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
