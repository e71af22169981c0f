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


class PdfPrint:
    """Chromium started *before* the report is rendered, printing a page this process serves once it exists.

    Chromium's start (its zygote, GPU, network and renderer processes) took about 40 % of a print of the study
    report on the reference machine; started first, it overlaps the rendering of the report (matplotlib, on
    the other core), and its request for the page waits on a local server until the page is ready. The page
    is the same bytes as the HTML file beside the PDF, and its only links are to its own fragments, so the
    PDF's content is what printing the file gives (tests/report/test_study_report.py compares the two)."""

    def __init__(self, pdf_path: Path, chromium: str, name: str = "report.html", timeout_s: float = 180.0) -> None:
        import http.server
        import threading

        self.pdf_path, self.chromium, self.timeout_s = pdf_path, chromium, timeout_s
        self._page: bytes | None = None
        self._ready = threading.Event()
        printer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server name
                if self.path != f"/{name}":
                    self.send_error(404)
                    return
                printer._ready.wait(printer.timeout_s)
                if printer._page is None:
                    self.send_error(503)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(printer._page)))
                self.end_headers()
                self.wfile.write(printer._page)

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="report-pdf-page", daemon=True)
        self._thread.start()
        self._profile = tempfile.TemporaryDirectory(prefix="iimild-chromium-")
        url = f"http://127.0.0.1:{self._server.server_address[1]}/{name}"
        command = [chromium, *FLAGS, f"--user-data-dir={self._profile.name}", f"--print-to-pdf={pdf_path}", url]
        # A fixed browser binary and arguments; the only input is our own page, served on the loopback.
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # noqa: S603

    def print(self, page: bytes) -> int:
        """Hand Chromium the page and wait for the PDF; its size in bytes."""
        self._page = page
        self._ready.set()
        try:
            _, stderr = self._process.communicate(timeout=self.timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise PdfError(f"{self.chromium} did not print the report within {self.timeout_s:.0f} s") from exc
        if self._process.returncode != 0 or not self.pdf_path.exists() or self.pdf_path.stat().st_size == 0:
            raise PdfError(f"{self.chromium} could not print the report (exit {self._process.returncode}): {stderr[-1500:]}")
        return self.pdf_path.stat().st_size

    def close(self) -> None:
        """Stop the browser if it still runs (the rendering failed), the server, and remove the profile."""
        if self._process.poll() is None:
            self._process.kill()
            self._process.communicate()
        self._ready.set()
        self._server.shutdown()
        self._server.server_close()
        self._profile.cleanup()

    def __enter__(self) -> PdfPrint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
