"""The fast upstream: raw asyncio HTTP/1.1 with keep-alive, so the upstream itself costs next to nothing.

    GET|POST /fast                 a small JSON body
    GET      /big?bytes=N          N bytes, streamed in 64 KiB writes with flow control
                                   (&chunked=true: chunked, with no Content-Length up front)
    POST     /record/{queue}/{seq} notes (queue, seq) in arrival order
    GET      /recorded             every (queue, seq) noted so far, as JSON

Run as `python -m bench.upstream --port N`; it only listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from urllib.parse import parse_qs

FAST_BODY = b'{"ok":true,"id":12345,"name":"bench","items":[1,2,3]}'
BLOCK = b"x" * 65536
MAX_HEAD = 64 * 1024

recorded: list[tuple[str, int]] = []


def response(status: str, body: bytes, content_type: str = "application/json") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode("latin-1") + body


FAST_RESPONSE = response("200 OK", FAST_BODY)
NOT_FOUND = response("404 Not Found", b'{"error":"not_found"}')


class Http(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.streaming: asyncio.Task[None] | None = None
        self.writable = asyncio.Event()
        self.writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.writable.set()
        if self.streaming is not None:
            self.streaming.cancel()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.streaming is None:
            self.process()

    def process(self) -> None:
        while self.transport is not None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD:
                    self.transport.close()
                return
            lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            length, close = 0, False
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "connection":
                    close = value.strip().lower() == "close"
                elif name == "transfer-encoding":
                    close = True  # not needed by any client here: refuse rather than mis-parse
            if len(self.buffer) < end + 4 + length:
                return
            del self.buffer[: end + 4 + length]
            path, _, query = target.partition("?")
            if path == "/big":
                asked = parse_qs(query)
                size = int(asked.get("bytes", ["1048576"])[0])
                chunked = asked.get("chunked", ["false"])[0] == "true"
                self.streaming = asyncio.get_running_loop().create_task(self.stream(size, close, chunked))
                return
            self.transport.write(self.answer(method, path))
            if close:
                self.transport.close()
                return

    def answer(self, method: str, path: str) -> bytes:
        if path == "/fast":
            return FAST_RESPONSE
        if path.startswith("/record/") and method == "POST":
            _, _, queue, seq = path.split("/", 3)
            recorded.append((queue, int(seq)))
            return response("200 OK", json.dumps({"queue": queue, "seq": int(seq)}).encode())
        if path == "/recorded":
            return response("200 OK", json.dumps(recorded).encode())
        if path == "/health":
            return response("200 OK", b'{"ok":true}')
        return NOT_FOUND

    async def stream(self, size: int, close: bool, chunked: bool = False) -> None:
        framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
        head = f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n{framing}\r\n\r\n"
        sent = 0
        try:
            if self.transport is None:
                return
            self.transport.write(head.encode("latin-1"))
            while sent < size and self.transport is not None:
                await self.writable.wait()
                if self.transport is None:
                    return
                piece = BLOCK[: min(len(BLOCK), size - sent)]
                self.transport.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                sent += len(piece)
            if chunked and self.transport is not None:
                self.transport.write(b"0\r\n\r\n")
        finally:
            self.streaming = None
        if close and self.transport is not None:
            self.transport.close()
        elif self.buffer:
            self.process()


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Http, "127.0.0.1", port, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(serve(args.port))
    else:
        uvloop.run(serve(args.port))


if __name__ == "__main__":
    main()
