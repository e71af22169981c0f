"""HTML to PDF with headless Chromium's print-to-PDF (Debian's ``chromium``; the same browser the UI
test drives). Chosen over WeasyPrint because Chromium lays out the report exactly as a reader's
browser shows it (CSS grid, SVG images), and it is already a test dependency of this project."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# No sandbox as root, no GPU, no background connections: the same flags as the UI test, for a closed network.
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions",
         "--no-pdf-header-footer", "--run-all-compositor-stages-before-draw")


class PdfError(RuntimeError):
    pass


def find_chromium(configured: str = "") -> str | None:
    """The configured browser (a path or a command name), else the first Chromium on PATH."""
    if configured:
        return shutil.which(configured) or (configured if os.access(configured, os.X_OK) else None)
    return next((path for path in map(shutil.which, CANDIDATES) if path), None)


def html_to_pdf(html_path: Path, pdf_path: Path, chromium: str, timeout_s: float = 180.0) -> int:
    """Print ``html_path`` to ``pdf_path`` with the page size and margins of the report's @page rule; the
    PDF's size in bytes. The browser gets a throw-away profile so runs do not share state."""
    with tempfile.TemporaryDirectory(prefix="iimild-chromium-") as profile:
        command = [chromium, *FLAGS, f"--user-data-dir={profile}", f"--print-to-pdf={pdf_path}",
                   html_path.resolve().as_uri()]
        try:
            # A fixed browser binary and arguments; the only input is our own file's URI.
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)  # noqa: S603
        except subprocess.TimeoutExpired as exc:
            raise PdfError(f"{chromium} did not print the report within {timeout_s:.0f} s") from exc
    if done.returncode != 0 or not pdf_path.exists() or pdf_path.stat().st_size == 0:
        raise PdfError(f"{chromium} could not print {html_path} (exit {done.returncode}): {done.stderr[-1500:]}")
    return pdf_path.stat().st_size
