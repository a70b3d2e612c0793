"""An HTTP/1.1 proxy on 127.0.0.1 that misbehaves the way networks and S3 stores do.

Put between the pipeline and moto (S3 and SQS through one endpoint), it forwards every request
and answer (delimited by Content-Length, as boto3 and moto send them; no chunked encoding),
counts the body bytes of S3 GETs sent to the client, and applies the faults a test arms, each
to the next matching requests: ``slowdown`` (503 SlowDown instead of forwarding),
``reset`` (the connection reset after some body bytes), ``flip`` (one body byte flipped at
random), ``ignore-range`` (the Range header dropped, so the store sends the whole object).
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from byte_proxy import LoopbackProxy

SLOWDOWN = (
    b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
    b"<Message>Please reduce your request rate.</Message></Error>"
)


@dataclass
class Request:
    """What a fault is matched on."""

    method: str
    target: str
    headers: dict[str, str]

    @property
    def object_get(self) -> bool:
        """A GET of an S3 object (not an SQS call, not a HEAD)."""
        return self.method == "GET" and "Action=" not in self.target and self.target != "/"


@dataclass
class Fault:
    kind: str  # "slowdown", "reset", "flip" or "ignore-range"
    matches: Callable[[Request], bool]
    times: int
    after: int = 0  # "reset": body bytes sent before the reset


class FaultProxy(LoopbackProxy):
    """Forwards to ``upstream``; ``served`` counts the object bytes sent to clients."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        super().__init__(upstream_host, upstream_port)
        self.fired: dict[str, int] = {}
        self._faults: list[Fault] = []

    def arm(
        self, kind: str, times: int, matches: Callable[[Request], bool], after: int = 0
    ) -> None:
        """Apply fault ``kind`` to the next ``times`` requests that ``matches``."""
        with self._lock:
            self._faults.append(Fault(kind, matches, times, after))

    def disarm(self) -> None:
        """No more faults."""
        with self._lock:
            self._faults.clear()

    def _take(self, request: Request) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.times > 0 and fault.matches(request):
                    fault.times -= 1
                    self.fired[fault.kind] = self.fired.get(fault.kind, 0) + 1
                    return fault
        return None

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.upstream)
        reader, up_reader = client.makefile("rb"), upstream.makefile("rb")
        try:
            while True:
                head = _read_head(reader)
                if head is None:
                    return
                request, raw_headers = _parse_request(head)
                body = reader.read(int(request.headers.get("content-length", "0") or 0))
                fault = self._take(request)
                if fault and fault.kind == "slowdown":
                    client.sendall(_slowdown_answer(with_body=request.method != "HEAD"))
                    continue
                if fault and fault.kind == "ignore-range":
                    raw_headers = [h for h in raw_headers if not h.lower().startswith(b"range:")]
                upstream.sendall(b"\r\n".join([head.split(b"\r\n", 1)[0], *raw_headers]))
                upstream.sendall(b"\r\n\r\n" + body)
                if not self._relay(request, up_reader, client, fault):
                    return
        except OSError:
            return
        finally:
            for stream in (reader, up_reader, client, upstream):
                with contextlib.suppress(OSError):
                    stream.close()

    def _relay(
        self, request: Request, up_reader, client: socket.socket, fault: Fault | None
    ) -> bool:
        """Send the upstream's answer to the client, with the fault; False once reset."""
        head = _read_head(up_reader)
        if head is None:
            return False
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        body = up_reader.read(length) if request.method != "HEAD" else b""
        if fault and fault.kind == "flip" and body:
            flipped = bytearray(body)
            flipped[int.from_bytes(os.urandom(4), "big") % len(flipped)] ^= 0x01
            body = bytes(flipped)
        if fault and fault.kind == "reset":
            sent = body[: fault.after]
            client.sendall(head + b"\r\n\r\n" + sent)
            self._count(request, len(sent))
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.shutdown(socket.SHUT_RDWR)  # an RST now, as a reset link gives
            return False
        client.sendall(head + b"\r\n\r\n" + body)
        self._count(request, len(body))
        return True

    def _count(self, request: Request, count: int) -> None:
        if request.object_get:
            with self._lock:
                self.served += count


def _read_head(reader) -> bytes | None:
    lines = []
    while True:
        line = reader.readline()
        if not line:
            return None
        if line in (b"\r\n", b"\n"):
            return b"".join(lines).rstrip(b"\r\n")
        lines.append(line)


def _parse_request(head: bytes) -> tuple[Request, list[bytes]]:
    first, *raw_headers = head.split(b"\r\n")
    method, target, _ = first.decode("latin-1").split(" ", 2)
    headers = {}
    for line in raw_headers:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return Request(method, target, headers), raw_headers


def _slowdown_answer(with_body: bool) -> bytes:
    """503 SlowDown (a HEAD's answer carries the length but no body)."""
    return (
        b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
        + f"Content-Length: {len(SLOWDOWN)}\r\n\r\n".encode()
        + (SLOWDOWN if with_body else b"")
    )
