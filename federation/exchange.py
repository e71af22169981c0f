"""Where packages travel between sites and the coordinator: one small interface (put, get, list of named
documents) with a local-directory implementation (tests, the demo, a shared network folder) and, behind the
same interface, any fsspec URL (``s3://bucket/prefix`` with s3fs installed, ``sftp://host/path`` with
paramiko, ``memory://`` in tests). The exchange is untrusted storage: everything read from it is verified
(federation/verify.py) before use, so it needs no confidentiality beyond what the aggregates need.

Names are relative paths of plain segments (letters, digits, ``._-``), so no name can climb out of the root.
A document is written once (``overwrite=False``, the default): a round's request or reply cannot be replaced.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Protocol

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,120}(/[A-Za-z0-9][A-Za-z0-9._-]{0,120}){0,8}$")


class ExchangeError(ValueError):
    """A bad document name, or a write-once document written twice."""


def check_name(name: str) -> str:
    if not _NAME.match(name) or ".." in name:
        raise ExchangeError(f"not a valid document name: {name!r} (relative path of letters, digits, '._-' segments)")
    return name


class Exchange(Protocol):
    def put(self, name: str, data: bytes, *, overwrite: bool = False) -> None: ...
    def get(self, name: str) -> bytes: ...
    def list(self, prefix: str = "") -> list[str]: ...
    def exists(self, name: str) -> bool: ...


class LocalDirectoryExchange:
    """A folder (local or a mounted share). Writes are atomic: a reader never sees half a document."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, name: str) -> Path:
        return self.root / check_name(name)

    def put(self, name: str, data: bytes, *, overwrite: bool = False) -> None:
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".partial-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            if overwrite:
                os.replace(tmp, path)
            else:
                try:
                    os.link(tmp, path)  # fails if the name exists: write-once without a race
                except FileExistsError:
                    raise ExchangeError(f"{name} exists and is write-once") from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def get(self, name: str) -> bytes:
        return self._path(name).read_bytes()

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def list(self, prefix: str = "") -> list[str]:
        base = self.root / prefix if prefix else self.root
        if prefix:
            check_name(prefix.rstrip("/"))
        if not base.exists():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in base.rglob("*")
                      if p.is_file() and not p.name.startswith(".partial-"))


class FsspecExchange:
    """Any fsspec filesystem by URL: S3-compatible stores (``s3://``, needs s3fs), SFTP (``sftp://``, needs
    paramiko), ``memory://`` for tests. Credentials come from the filesystem's own configuration (e.g. the
    AWS_* environment variables), never from the pipeline's settings. Write-once is checked before writing
    (object stores have no atomic create-if-absent in fsspec's API): one writer per name by protocol design.

    Every existence check and listing first drops the filesystem's listing cache: the other parties write to the
    exchange, and s3fs would otherwise answer from a listing it cached earlier, never seeing a reply that arrived
    since (a session that waits forever)."""

    def __init__(self, url: str, **storage_options: object):
        import fsspec  # only a deployment that uses a remote exchange needs it

        self.fs, root = fsspec.core.url_to_fs(url, **storage_options)
        self.root = root.rstrip("/")

    def _path(self, name: str) -> str:
        return f"{self.root}/{check_name(name)}"

    def put(self, name: str, data: bytes, *, overwrite: bool = False) -> None:
        path = self._path(name)
        self.fs.invalidate_cache()
        if not overwrite and self.fs.exists(path):
            raise ExchangeError(f"{name} exists and is write-once")
        # A file system (file://, sftp://) needs the parent folders; on an object store this is a no-op.
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        self.fs.pipe_file(path, data)

    def get(self, name: str) -> bytes:
        return self.fs.cat_file(self._path(name))

    def exists(self, name: str) -> bool:
        self.fs.invalidate_cache()
        return bool(self.fs.exists(self._path(name)))

    def list(self, prefix: str = "") -> list[str]:
        base = f"{self.root}/{check_name(prefix.rstrip('/'))}" if prefix else self.root
        self.fs.invalidate_cache()
        if not self.fs.exists(base):
            return []
        root = self.fs._strip_protocol(self.root).rstrip("/")
        return sorted(p[len(root) + 1:] for p in self.fs.find(base) if not p.rsplit("/", 1)[-1].startswith(".partial-"))


def exchange_from_url(url: str) -> Exchange:
    """``FEDERATION_EXCHANGE``: a directory path or file:// URL, or any fsspec URL (s3://, sftp://, memory://)."""
    if "://" not in url:
        return LocalDirectoryExchange(url)
    if url.startswith("file://"):
        return LocalDirectoryExchange(url.removeprefix("file://"))
    return FsspecExchange(url)
