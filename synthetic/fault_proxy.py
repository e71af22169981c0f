"""A fault-injecting HTTP proxy in front of the sandbox FHIR server, for the ingestion tests.

Hospital servers throttle, fall over, expire page links, stall, reset connections and cut
bodies short. This proxy does each of those, on a seeded share of requests, so a test can prove
that the warehouse ends identical to a clean run. It speaks plain HTTP/1.1 on 127.0.0.1, one
request per connection, forwards to the upstream with httpx and rewrites the upstream's base URL
in bodies and headers so paging and Bulk links come back through the proxy.
"""
from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from dataclasses import dataclass, field

import httpx

FAULTS = ("throttle_429", "unavailable_503", "gone_410", "slow", "reset", "truncated")


@dataclass
class FaultProxy:
    upstream: str                   # e.g. http://127.0.0.1:8080 (scheme, host and port only)
    fault_rate: float = 0.1
    seed: int = 1
    faults: tuple[str, ...] = FAULTS
    slow_s: float = 0.3
    retry_after: str = "1"
    injected: Counter = field(default_factory=Counter)
    requests: int = 0
    port: int = 0

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._client: httpx.AsyncClient | None = None

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _pick(self, target: str) -> str | None:
        self.requests += 1
        if self._rng.random() >= self.fault_rate:
            return None
        candidates = [f for f in self.faults if f != "gone_410" or "_offset=" in target and "_offset=0" not in target]
        return self._rng.choice(candidates) if candidates else None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = [tuple(line.split(": ", 1)) for line in lines[1:] if ": " in line]
        length = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
        body = await reader.readexactly(length) if length else b""
        fault = self._pick(target)
        if fault:
            self.injected[fault] += 1
        if fault == "reset":
            writer.transport.abort()
            return
        if fault in ("throttle_429", "unavailable_503", "gone_410"):
            status = {"throttle_429": "429 Too Many Requests", "unavailable_503": "503 Service Unavailable",
                      "gone_410": "410 Gone"}[fault]
            text = b'{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"transient"}]}'
            extra = f"Retry-After: {self.retry_after}\r\n" if fault != "gone_410" else ""
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: application/fhir+json\r\nContent-Length: {len(text)}\r\n"
                         f"{extra}Connection: close\r\n\r\n".encode() + text)
            await writer.drain()
            writer.close()
            return
        if fault == "slow":
            await asyncio.sleep(self.slow_s)
        forward = {k: v for k, v in headers if k.lower() not in ("host", "content-length", "connection", "accept-encoding")}
        if self._client is None:
            raise RuntimeError("the proxy is not started")
        try:
            response = await self._client.request(method, self.upstream + target, headers=forward, content=body)
        except httpx.HTTPError:
            writer.transport.abort()
            return
        content = response.content.replace(self.upstream.encode(), self.origin.encode())
        out_headers = [(k, v.replace(self.upstream, self.origin)) for k, v in response.headers.items()
                       if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding")]
        head_out = f"HTTP/1.1 {response.status_code} {response.reason_phrase}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in out_headers) + f"Content-Length: {len(content)}\r\nConnection: close\r\n\r\n"
        if fault == "truncated" and len(content) > 1:
            writer.write(head_out.encode() + content[: len(content) // 2])
            await writer.drain()
            writer.transport.abort()
            return
        writer.write(head_out.encode() + content)
        await writer.drain()
        writer.close()

    def start(self) -> "FaultProxy":
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)

            async def boot() -> None:
                self._client = httpx.AsyncClient(timeout=120)
                self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
                self.port = self._server.sockets[0].getsockname()[1]
                ready.set()

            self._loop.run_until_complete(boot())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True, name="fault-proxy")
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fault proxy did not start")
        return self

    def stop(self) -> None:
        if self._loop is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            if self._client is not None:
                await self._client.aclose()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
