"""The ``dagster`` command of this project's virtual environment.

Operators run ``dagster asset materialize -w workspace.yaml --select '*'``. dagster 1.13's
``asset materialize`` (and ``asset list``) are not workspace-aware: they only accept a pointer to
one code location (-m/-f/--package-name, -d) and reject ``-w``. This thin wrapper translates
``-w FILE`` into the pointer of that workspace's single code location for those two commands and
hands everything else to dagster's own CLI unchanged.

For ``asset materialize`` it also starts the steps' fork server before dagster loads the code location, so
the fork server's imports overlap the command's own (assets/forkserver.py says why).
"""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

WORKSPACE_UNAWARE = (("asset", "materialize"), ("asset", "list"))
# Run config may choose another start method or preload (assets/executor.py): then the executor starts its own.
RUN_CONFIG_FLAGS = ("-c", "--config", "--config-json")


class WorkspaceError(SystemExit):
    pass


def pointer_args(workspace_file: str) -> list[str]:
    """The -m/-f/--package-name and -d arguments for the workspace's only code location."""
    path = Path(workspace_file)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise WorkspaceError(f"cannot read workspace file {path}: {exc}") from None
    locations = (data or {}).get("load_from") or []
    if len(locations) != 1:
        raise WorkspaceError(f"{path}: 'dagster asset materialize -w' needs exactly one code location, found {len(locations)}")
    (kind, spec), = locations[0].items()
    flag = {"python_module": ("-m", "module_name"), "python_file": ("-f", "relative_path"),
            "python_package": ("--package-name", "package_name")}.get(kind)
    if flag is None or not isinstance(spec, (dict, str)):
        raise WorkspaceError(f"{path}: code location of kind {kind!r} is not supported by this wrapper")
    if isinstance(spec, str):
        spec = {flag[1]: spec}
    target = spec[flag[1]]
    if kind == "python_file":
        target = str((path.parent / target).resolve())
    args = [flag[0], target]
    if spec.get("attribute"):
        args += ["-a", spec["attribute"]]
    if spec.get("working_directory"):
        args += ["-d", str((path.parent / spec["working_directory"]).resolve())]
    return args


def translate(argv: list[str]) -> list[str]:
    if tuple(argv[:2]) not in WORKSPACE_UNAWARE:
        return argv
    out: list[str] = list(argv[:2])
    rest = iter(argv[2:])
    for arg in rest:
        if arg in ("-w", "--workspace"):
            out += pointer_args(next(rest, ""))
        elif arg.startswith("--workspace="):
            out += pointer_args(arg.split("=", 1)[1])
        else:
            out.append(arg)
    return out


def early_forkserver(argv: list[str]) -> tuple[str, str] | None:
    """(module, working directory) of the code location whose fork server may start now: ``asset materialize``
    of a module location with its working directory, and no run config (translated arguments)."""
    if tuple(argv[:2]) != ("asset", "materialize"):
        return None
    if any(arg in RUN_CONFIG_FLAGS or arg.startswith(tuple(f + "=" for f in RUN_CONFIG_FLAGS)) for arg in argv):
        return None
    options = dict(zip(argv[2::1], argv[3::1], strict=False))
    module, directory = options.get("-m"), options.get("-d")
    return (module, directory) if module and directory else None


def start_forkserver(module: str, directory: str) -> None:
    """The code location's own assets/forkserver.py (its checkout first on the path, as the executor puts it),
    with the .env dagster's CLI will load from the current directory before it runs anything."""
    sys.path[:0] = [directory]
    from dotenv import dotenv_values  # what dagster's CLI reads the .env with (dagster._core.secrets.env_file)

    from assets.forkserver import EARLY_MODULES, start_early

    if module not in EARLY_MODULES:  # another location's jobs may not fork from a fork server at all
        return
    env_file = Path.cwd() / ".env"
    overlay = {k: v for k, v in dotenv_values(env_file).items() if v is not None} if env_file.exists() else {}
    start_early(module, overlay)


def main() -> None:
    argv = translate(sys.argv[1:])
    early = early_forkserver(argv)
    if early:
        start_forkserver(*early)
    from dagster._cli import main as dagster_main  # the function behind dagster's own console script

    sys.argv = [sys.argv[0], *argv]
    dagster_main()


if __name__ == "__main__":
    main()
