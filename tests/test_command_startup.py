"""A command pauses the garbage collector while it imports Prefect and Prompt flow (see cli.startup); whatever
the command, its flow runs with the collector back on."""

from __future__ import annotations

import gc

import pytest

from cli.commands import run_pipeline_cli, run_teardown_cli
from targets.base import TeardownReport


@pytest.fixture
def collector_paused():
    gc.disable()  # as cli.startup.command_starts leaves it
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


def test_the_pipeline_and_the_teardown_run_with_the_collector_on(collector_paused, prefect_server, tmp_path):
    seen = []

    def pipeline(settings):
        seen.append(("pipeline", gc.isenabled()))
        return {"stages": [], "unchanged": "live: nothing"}

    def teardown(settings, older_than_hours):
        seen.append(("teardown", gc.isenabled()))
        return TeardownReport(removed=[], already_gone=[])

    workspace = ["--local.workspace_dir", str(tmp_path / "ws")]
    assert run_pipeline_cli(workspace, pipeline) == 0
    gc.disable()
    assert run_teardown_cli(workspace, teardown) == 0
    assert seen == [("pipeline", True), ("teardown", True)]


def test_a_command_run_in_this_process_leaves_the_collector_alone(prefect_server, tmp_path):
    frozen = gc.get_freeze_count()
    assert run_pipeline_cli(["--local.workspace_dir", str(tmp_path / "ws"), "--plan"]) == 0
    assert gc.isenabled() and gc.get_freeze_count() == frozen
