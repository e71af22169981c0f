"""Element paths inside a resource, built as a linked chain while walking and rendered only when used.

Formatting a path string for every element cost more than the walks themselves (plausibility rules,
coding rows), and only a failure or a coding needs one.
"""
from __future__ import annotations

Link = tuple  # (parent link, key or list index); None is the resource itself


def render_path(link: Link | None) -> str:
    """The chain ``(((None, "a"), 0), "b")`` renders as ``a[0].b``."""
    parts: list[str | int] = []
    while link:
        link, part = link
        parts.append(part)
    out = ""
    for part in reversed(parts):
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out
