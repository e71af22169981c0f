"""The project's `dagster` wrapper makes `asset materialize -w workspace.yaml` work (deploy.dagster_cli)."""
from __future__ import annotations

import pytest

from deploy.dagster_cli import WorkspaceError, translate
from tests.paths import ROOT


def test_workspace_flag_becomes_the_code_location_pointer():
    argv = translate(["asset", "materialize", "-w", str(ROOT / "workspace.yaml"), "--select", "*"])
    assert argv == ["asset", "materialize", "-m", "assets.definitions", "-d", str(ROOT), "--select", "*"]


def test_other_commands_pass_through_untouched():
    argv = ["dev", "-w", "workspace.yaml", "-p", "3000"]
    assert translate(argv) == argv


def test_a_workspace_with_two_locations_is_refused(tmp_path):
    ws = tmp_path / "workspace.yaml"
    ws.write_text("load_from:\n  - python_module: a\n  - python_module: b\n")
    with pytest.raises(WorkspaceError, match="exactly one code location"):
        translate(["asset", "materialize", "-w", str(ws), "--select", "*"])


def test_python_file_locations_resolve_relative_to_the_workspace(tmp_path):
    ws = tmp_path / "workspace.yaml"
    ws.write_text("load_from:\n  - python_file: {relative_path: defs.py}\n")
    assert translate(["asset", "list", f"--workspace={ws}"]) == ["asset", "list", "-f", str(tmp_path / "defs.py")]
