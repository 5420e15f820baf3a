"""The teardown flow: stop what costs money. A subflow of the pipeline and a flow of its own.

    python -m flows.teardown [--older_than_hours 24] [--target azure ...]
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # the command line: its Prefect API server loads while the imports below run
    from cli.startup import command_starts

    command_starts(sys.argv[1:])

from prefect import flow  # noqa: E402 (after the server's start)

from config.settings import SETTINGS_WHERE_IT_RUNS, PipelineSettings
from targets.base import TeardownReport
from tasks.teardown import tear_down
from tasks.workspace_lock import one_run_per_workspace


@flow(name="phi3-teardown")
@one_run_per_workspace(makes_workspace=False)
def teardown(settings: PipelineSettings = SETTINGS_WHERE_IT_RUNS,
             older_than_hours: float | None = None) -> TeardownReport:
    """Delete the endpoint with its deployments and the connection; idempotent. With `older_than_hours`:
    every endpoint this project made that is older than that (the reaper)."""
    return tear_down(settings, older_than_hours)


if __name__ == "__main__":  # the command line, handed this module's flow (not imported a second time)
    from cli.commands import finish, run_teardown_cli

    finish(run_teardown_cli(sys.argv[1:], teardown))
