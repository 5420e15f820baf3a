"""The console script does what the module commands do, and the packages keep their seams: the flows never
import the command line, the Azure target never imports the local one."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli

CONSOLE_SCRIPT = Path(sys.executable).parent / "phi3-pipeline"


def console(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(CONSOLE_SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def options(help_text: str) -> str:
    """--help without its usage lines (they wrap by the command's name)."""
    return help_text[help_text.index("\n\n"):]


@pytest.fixture
def workspace_env(tmp_path, session_home):
    return {"PHI3_LOCAL__WORKSPACE_DIR": str(tmp_path / "ws")}


@pytest.mark.system
def test_the_console_script_gives_the_module_commands_help_and_errors(workspace_env):
    assert CONSOLE_SCRIPT.exists(), "the install command installs the console script"
    for command, module, extra in (("run", "flows.full_pipeline", ()), ("teardown", "flows.teardown", ())):
        ours, theirs = console(command, "--help"), run_cli(module, "--help", *extra)
        assert ours.returncode == theirs.returncode == 0
        assert options(ours.stdout) == options(theirs.stdout)
        assert ours.stdout.startswith(f"usage: phi3-pipeline {command} ")
    for args in (["--epoch", "3"], ["--training.learning_rate", "-1"], ["--dataset.source", "/nowhere.jsonl"]):
        ours, theirs = console("run", *args, env=workspace_env), run_cli("flows.full_pipeline", *args,
                                                                         env=workspace_env)
        assert (ours.returncode, ours.stderr) == (theirs.returncode, theirs.stderr) and ours.returncode == 2


@pytest.mark.system
def test_the_console_scripts_plan_is_the_modules_plan(workspace_env):
    ours, theirs = console("plan", env=workspace_env), run_cli("flows.full_pipeline", "--plan", env=workspace_env)
    assert ours.returncode == theirs.returncode == 0, ours.stderr
    resources_and_actions = [[line[:75] for line in result.stdout.splitlines()] for result in (ours, theirs)]
    assert resources_and_actions[0] == resources_and_actions[1]  # the details hold free memory and disk
    assert "Nothing was created" in ours.stdout


@pytest.mark.system
def test_the_console_script_without_a_command_names_the_commands():
    for args, code in (([], 2), (["deploy"], 2), (["--help"], 0)):
        result = console(*args)
        assert result.returncode == code
        assert "run" in result.stdout + result.stderr and "teardown" in result.stdout + result.stderr
        if code:
            assert result.stderr.strip().splitlines()[-1].startswith("error: ")


def test_the_install_exposes_one_import_name():
    from importlib.metadata import distribution, packages_distributions

    ours = sorted(name for name, dists in packages_distributions().items() if "phi3-pipeline" in dists)
    assert ours == ["phi3_pipeline"]
    assert distribution("phi3-pipeline").read_text("top_level.txt").split() == ["phi3_pipeline"]


def test_no_flow_module_imports_the_command_line():
    probe = ("import sys, flows.full_pipeline, flows.teardown; "
             "print(sorted(m for m in sys.modules if m.startswith('phi3_pipeline.cli')))")
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def _offending(folder: Path, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    found = {str(path.relative_to(ROOT)): sorted(name for name in _imports(path) if name.startswith(forbidden))
             for path in folder.rglob("*.py")}
    return {path: names for path, names in found.items() if names}


def test_the_azure_target_never_imports_the_local_one():
    assert _offending(ROOT / "phi3_pipeline" / "targets" / "azure", ("phi3_pipeline.targets.local",)) == {}


def test_the_library_never_imports_the_flows_or_their_tasks():
    """No circle between flows/ and the command line: the library loads the flows by their entrypoints."""
    assert _offending(ROOT / "phi3_pipeline", ("flows", "tasks", "deployments")) == {}


def test_no_target_imports_prefect():
    assert _offending(ROOT / "phi3_pipeline" / "targets", ("prefect",)) == {}
