"""Stage 2: quota check: fail before any work if the run needs more than is free."""

from prefect import get_run_logger, task

from pipeline.config import PipelineSettings
from targets.base import ResourceCheck, raise_if_short
from tasks.common import stage_retries, stage_target


@task(name="quota-check", **stage_retries())
def check_quota(settings: PipelineSettings) -> list[ResourceCheck]:
    target = stage_target(settings)
    checks = target.check_resources()
    logger = get_run_logger()
    for check in checks:
        logger.info("%s: need %g %s, %g free", check.resource, check.needed, check.unit, check.available)
    raise_if_short(checks)
    return checks
