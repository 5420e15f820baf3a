"""The teardown flow: stop what costs money. A subflow of the pipeline and a flow of its own.

    python -m flows.teardown [--older_than_hours 24] [--target azure ...]
"""

from __future__ import annotations

import sys

from prefect import flow

from phi3_pipeline.config.settings import SETTINGS_WHERE_IT_RUNS, PipelineSettings
from phi3_pipeline.targets.base import TeardownReport
from tasks.teardown import tear_down
from tasks.workspace_lock import one_run_per_workspace


def _sweep_skipped(settings: PipelineSettings, older_than_hours: float | None = None) -> TeardownReport | None:
    """A sweep (the reaper) never waits behind a run, which may train for hours: it skips the workspace and says
    so; the next sweep tries again. A plain teardown waits (it is what stops the bill)."""
    if older_than_hours is None:
        return None
    return TeardownReport(removed=[], already_gone=[], skipped="a run holds this workspace: the sweep skipped it; "
                                                               "the next one tries again")


@flow(name="phi3-teardown")
@one_run_per_workspace(makes_workspace=False, when_busy=_sweep_skipped)
def teardown(settings: PipelineSettings = SETTINGS_WHERE_IT_RUNS,
             older_than_hours: float | None = None) -> TeardownReport:
    """Delete the endpoint with its deployments and the connection; idempotent. With `older_than_hours`:
    every endpoint this project made that is older than that (the reaper)."""
    return tear_down(settings, older_than_hours)


if __name__ == "__main__":
    from phi3_pipeline.cli.commands import finish, run_teardown_cli

    finish(run_teardown_cli(sys.argv[1:], teardown))
