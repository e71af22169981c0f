"""Start `dagster-webserver -w workspace.yaml` on 127.0.0.1 for the UI tests, and stop it after."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest

from synthetic.sandbox import free_port

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def running_webserver(home: Path, ready: Callable[[str], bool], *extra_args: str,
                      timeout_s: float = 120.0) -> Iterator[str]:
    """Yield the server's base URL once ``ready(base_url)`` is true (errors while it starts count as not ready)."""
    port = free_port()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "DAGSTER_HOME": str(home), "FHIR_BASE_URL": "http://127.0.0.1:9/fhir",
           "PSEUDONYM_KEY": "not-used-by-this-test-0123"}
    proc = subprocess.Popen([str(Path(sys.executable).with_name("dagster-webserver")), "-w", "workspace.yaml",
                             "-h", "127.0.0.1", "-p", str(port), *extra_args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if ready(base):
                    break
            except (httpx.HTTPError, KeyError, TypeError, ValueError):
                pass
            time.sleep(0.5)
        else:
            pytest.fail(f"the Dagster webserver was not ready within {timeout_s:.0f} s")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)
