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


def test_the_console_scripts_plan_is_the_modules_plan(workspace_env):
    ours, theirs = console("plan", env=workspace_env), run_cli("flows.full_pipeline", "--plan", env=workspace_env)
    assert ours.returncode == theirs.returncode == 0, ours.stderr
    resources_and_actions = [[line[:75] for line in result.stdout.splitlines()] for result in (ours, theirs)]
    assert resources_and_actions[0] == resources_and_actions[1]  # the details hold free memory and disk
    assert "Nothing was created" in ours.stdout


def test_the_console_script_without_a_command_names_the_commands():
    for args, code in (([], 2), (["deploy"], 2), (["--help"], 0)):
        result = console(*args)
        assert result.returncode == code
        assert "run" in result.stdout + result.stderr and "teardown" in result.stdout + result.stderr
        if code:
            assert result.stderr.strip().splitlines()[-1].startswith("error: ")


def test_the_console_script_starts_a_server_first_for_each_command_that_runs_a_flow():
    from cli.commands import COMMANDS
    from cli.startup import FLOW_COMMANDS

    assert set(FLOW_COMMANDS) == set(COMMANDS) - {"plan"}  # a plan runs no flow: no server to start


def test_no_flow_module_imports_the_command_line():
    probe = ("import sys, flows.full_pipeline, flows.teardown; "
             "print(sorted(m for m in sys.modules if m == 'cli' or m.startswith('cli.')))")
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


def test_the_azure_target_never_imports_the_local_one():
    offending = {str(path.relative_to(ROOT)): sorted(name for name in _imports(path)
                                                     if name.startswith("targets.local"))
                 for path in (ROOT / "targets" / "azure").glob("*.py")}
    assert {path: names for path, names in offending.items() if names} == {}
