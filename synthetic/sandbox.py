"""Run the sandbox FHIR server (sekmet-fhir) on loopback for the demo and the integration tests.

sekmet is a real FHIR R4 server (FastAPI + SQLite) in its own process, so the pipeline talks to
it over HTTP exactly as it would to a hospital. Its workflow simulator is switched off (it would
answer our MedicationStatements with its own resources) and inbound validation is off, so tests
can serve malformed resources and watch the pipeline quarantine them.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx
import yaml


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SandboxFhirServer:
    """A sekmet-fhir process bound to 127.0.0.1, with its data under ``data_dir``."""

    def __init__(self, data_dir: Path, port: int | None = None, inbound_validation: str = "off",
                 server_auth: dict | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.inbound_validation = inbound_validation
        self.server_auth = server_auth  # sekmet's server_auth settings, e.g. SMART clients and their keys
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    def _write_settings(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        settings = {
            "base_url": self.base_url,
            "host": "127.0.0.1",
            "port": self.port,
            "data_dir": str(self.data_dir / "store"),
            "simulator": {"enabled": False},
            "validation": {"inbound": self.inbound_validation},
            "log_inbound": False,
            "own_private_key_path": str(self.data_dir / "keys" / "sekmet_private.pem"),
        }
        if self.server_auth:
            settings["server_auth"] = self.server_auth
        path = self.data_dir / "settings.yaml"
        path.write_text(yaml.safe_dump(settings))
        return path

    def start(self, timeout_s: float = 60.0) -> "SandboxFhirServer":
        settings = self._write_settings()
        env = {**os.environ, "SEKMET_CONFIG": str(settings)}
        log = open(self.data_dir / "server.log", "ab")
        sekmet = Path(sys.executable).with_name("sekmet")
        self._proc = subprocess.Popen(
            [str(sekmet), "serve", "--config", str(settings), "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=self.data_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"sandbox FHIR server exited with {self._proc.returncode}; see {self.data_dir / 'server.log'}")
            try:
                if httpx.get(f"{self.base_url}/metadata", timeout=2).status_code in (200, 401):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"sandbox FHIR server did not answer on {self.base_url} within {timeout_s:.0f}s")

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> "SandboxFhirServer":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
