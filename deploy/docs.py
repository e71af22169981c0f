"""``make docs``: rewrite the README's data dictionary section from the table catalog."""
from __future__ import annotations

from pathlib import Path

from analytics.catalog import render_markdown

BEGIN, END = "<!-- data-dictionary:begin -->", "<!-- data-dictionary:end -->"


def update_readme(path: str = "README.md") -> None:
    text = Path(path).read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    Path(path).write_text(f"{head}{BEGIN}\n{render_markdown()}{END}{tail}")


if __name__ == "__main__":
    update_readme()
