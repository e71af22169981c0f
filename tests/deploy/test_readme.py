"""The README's data dictionary and set-up commands stay in step with the code."""
from __future__ import annotations

from analytics.catalog import CATALOG, render_markdown
from deploy.docs import BEGIN, END
from tests.paths import ROOT

README = (ROOT / "README.md").read_text()


def test_the_two_setup_commands_come_first():
    setup = README.index("## Set-up")
    assert README.index("make demo") > setup and README.index("make test") > setup
    assert README.index("make demo") < README.index("## Running against a hospital")


def test_every_dictionary_column_is_documented():
    for table, spec in CATALOG.items():
        assert f"**`{table}`**" in README, table
        for column in spec.columns:
            assert f"| `{column}` |" in README, (table, column)


def test_the_dictionary_section_is_the_rendered_dictionary():
    section = README.split(BEGIN, 1)[1].split(END, 1)[0]
    assert section == "\n" + render_markdown(), "run `make docs`"
