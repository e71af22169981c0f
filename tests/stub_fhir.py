"""A hostile FHIR server for the tests: 127.0.0.1 only, one handler function per test, stopped on exit.

The handler gets (method, path with query, headers) and returns (status, headers, body), where the
body may be bytes or an iterator of (bytes, seconds to wait before sending them) for dripped bodies.
Every request is recorded, so a test can assert what reached which server (a token, say).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterable, Iterator

import orjson

Body = bytes | Iterable[tuple[bytes, float]]
Handler = Callable[[str, str, dict[str, str]], tuple[int, dict[str, str], Body]]


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class StubServer:
    handler: Handler
    requests: list[Seen] = field(default_factory=list)

    def __enter__(self) -> "StubServer":
        stub = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _serve(self) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                length = int(headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                stub.requests.append(Seen(self.command, self.path, headers))
                status, out_headers, body = stub.handler(self.command, self.path, headers)
                self.send_response(status)
                for k, v in out_headers.items():
                    self.send_header(k, v)
                if isinstance(body, bytes):
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self.send_header("Connection", "close")
                self.end_headers()
                try:
                    for chunk, wait in body:
                        time.sleep(wait)
                        self.wfile.write(chunk)
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass
                self.close_connection = True

            do_GET = do_POST = do_DELETE = _serve

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def origin(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def base_url(self) -> str:
        return f"{self.origin}/fhir"


def bundle(entries: list[dict], next_url: str | None = None, search_mode_list: bool = False, **extra: object) -> bytes:
    links = [{"relation": "next", "url": next_url}] if next_url else []
    mode = ["match"] if search_mode_list else "match"
    return orjson.dumps({"resourceType": "Bundle", "type": "searchset", "link": links,
                         "entry": [{"resource": r, "search": {"mode": mode}} for r in entries], **extra})


def json_response(body: bytes, status: int = 200, **headers: str) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/fhir+json", **headers}, body


def drip(body: bytes, seconds_per_byte: float) -> Iterator[tuple[bytes, float]]:
    for i in range(len(body)):
        yield body[i:i + 1], seconds_per_byte
