"""The project's `dagster` wrapper makes `asset materialize -w workspace.yaml` work (deploy.dagster_cli)."""
from __future__ import annotations

import pytest

from deploy.dagster_cli import WorkspaceError, early_forkserver, translate
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


def test_materialize_of_the_workspace_starts_its_fork_server_early_unless_run_config_is_given():
    argv = translate(["asset", "materialize", "-w", str(ROOT / "workspace.yaml"), "--select", "*"])
    assert early_forkserver(argv) == ("assets.definitions", str(ROOT))
    assert early_forkserver([*argv, "--config-json", "{}"]) is None  # it may choose spawn or another preload
    assert early_forkserver([*argv, "-c", "run.yaml"]) is None
    assert early_forkserver(["asset", "list", "-m", "assets.definitions", "-d", str(ROOT)]) is None
    assert early_forkserver(["asset", "materialize", "-m", "assets.definitions", "--select", "*"]) is None  # no -d
