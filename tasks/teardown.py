"""Teardown: remove what costs money or holds a port; deleting what is gone is success."""

from prefect import get_run_logger, task

from pipeline.config import PipelineSettings
from targets.base import TeardownReport
from tasks.common import stage_retries, stage_target


@task(name="teardown", **stage_retries())
def tear_down(settings: PipelineSettings, older_than_hours: float | None = None) -> TeardownReport:
    target = stage_target(settings)
    report = target.teardown() if older_than_hours is None else target.sweep(older_than_hours)
    logger = get_run_logger()
    logger.info("removed: %s", ", ".join(report.removed) or "nothing")
    logger.info("already gone: %s", ", ".join(report.already_gone) or "nothing")
    return report
