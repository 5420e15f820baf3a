"""The teardown flow: stop what costs money. A subflow of the pipeline and a flow of its own.

    python -m flows.teardown [--local.workspace_dir DIR ...]
"""

from __future__ import annotations

import sys

from prefect import flow

from pipeline.config import PipelineSettings
from targets.base import TeardownReport
from tasks.teardown import tear_down


@flow(name="phi3-teardown")
def teardown(settings: PipelineSettings | None = None) -> TeardownReport:
    """Delete the deployments/endpoint and the connection; idempotent."""
    return tear_down(settings or PipelineSettings())


if __name__ == "__main__":
    from flows.cli import run_teardown_cli

    sys.exit(run_teardown_cli(sys.argv[1:]))
