"""NDJSON framing: whole lines, with their file and line number, from bytes cut anywhere.

Bulk export files and an NDJSON hand-over are read in blocks of whole lines: the loading process
only cuts blocks, and the validation workers split them into lines, so no per-line object is made
or pickled on the loading side (per-line objects cost it more than a tenth of validation).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from .wire import MAX_RESOURCE_BYTES

BLOCK_BYTES = 1 << 18  # ~700 lines of a typical export: small enough to keep both workers busy
FILE_TYPE = re.compile(r"^(?P<type>[A-Z][A-Za-z]+)(?:[._-].*)?\.ndjson$")


@dataclass(frozen=True)
class Line:
    source: str               # file or URL, with ":<line number>"
    text: bytes
    type_hint: str | None     # from the file name or manifest entry
    # (id, versionId) when the sender already parsed the resource (a REST entry): a line refused unparsed,
    # for its size, still names the resource it was, so it is quarantined under that id, not taken for a delete.
    known: tuple[str, str | None] | None = None

    def __reduce__(self) -> tuple:  # a plain tuple crosses the process boundary ~5x cheaper than dataclass state
        return Line, (self.source, self.text, self.type_hint, self.known)


def identity(resource: object) -> tuple[str, str | None] | None:
    """(id, versionId) of a parsed resource, when it has a string id."""
    if not isinstance(resource, dict) or not isinstance(resource.get("id"), str):
        return None
    meta = resource.get("meta")
    version = meta.get("versionId") if isinstance(meta, dict) else None
    return resource["id"], version if isinstance(version, str) else None


@dataclass(frozen=True)
class Block:
    """Whole lines of one NDJSON file in one bytes object. The parent only reads and cuts blocks;
    splitting them into lines happens in the workers, so no per-line object is made or pickled
    on the parent's side (per-line objects cost the parent more than a tenth of validation)."""
    path: str                 # file or URL
    first_line: int           # the line number of the block's first line
    data: bytes
    type_hint: str | None

    @property
    def last_line(self) -> int:
        return self.first_line + self.data.count(b"\n") - self.data.endswith(b"\n")

    def from_line(self, number: int) -> "Block":
        """The same block without its lines before line ``number`` (a resumed download re-sends them)."""
        start = 0
        for _ in range(number - self.first_line):
            start = self.data.index(b"\n", start) + 1
        return Block(self.path, number, self.data[start:], self.type_hint)

    def lines(self) -> Iterator[Line]:
        for offset, text in enumerate(self.data.split(b"\n")):
            text = text.strip()
            if text:
                yield Line(f"{self.path}:{self.first_line + offset}", text, self.type_hint)


def blocks_of(chunks: Iterable[bytes], path: str, type_hint: str | None = None) -> Iterator[Block]:
    """Blocks of whole lines from bytes cut anywhere (file reads, an HTTP body); a chunk that ends
    mid-line keeps its tail for the next block, and a line longer than a chunk makes a longer block."""
    number, carry, overlong = 1, b"", False
    for data in chunks:
        if overlong:
            # The rest of a line already longer than any resource may be: dropped up to its newline (the part
            # kept is quarantined for its size), so one endless line costs neither memory nor quadratic copies.
            cut = data.find(b"\n")
            if cut < 0:
                continue
            data, overlong = data[cut:], False
        data = carry + data
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            carry = data
            if len(carry) > MAX_RESOURCE_BYTES:
                yield Block(path, number, carry[:MAX_RESOURCE_BYTES + 1], type_hint)
                carry, overlong = b"", True
            continue
        block, carry = data[:cut], data[cut:]
        yield Block(path, number, block, type_hint)
        number += block.count(b"\n")
    if carry.strip():
        yield Block(path, number, carry, type_hint)


def file_blocks(path: Path, type_hint: str | None = None, size: int = BLOCK_BYTES) -> Iterator[Block]:
    with path.open("rb") as handle:
        yield from blocks_of(iter(lambda: handle.read(size), b""), str(path), type_hint)


def type_from_file_name(path: Path) -> str | None:
    match = FILE_TYPE.match(path.name)
    return match.group("type") if match and match.group("type") != "Bundle" else None
