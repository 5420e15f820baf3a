"""Stage 1: quota check: fail before anything is created if the run needs more than is free (on Azure this
also resolves the catalog model and the VM sizes, and refuses a retired model)."""

from prefect import get_run_logger, task
from pydantic import BaseModel

from phi3_pipeline.config.settings import PipelineSettings
from phi3_pipeline.stages import Stage
from phi3_pipeline.targets.base import ResourceCheck, raise_if_short
from tasks.retries import stage_retries
from tasks.run_target import stage_target


class QuotaReport(BaseModel):
    checks: list[ResourceCheck]
    warnings: list[str]  # e.g. a deprecated model: also in the run summary

    @property
    def label(self) -> str:
        return "; ".join(f"warning: {w}" for w in self.warnings) or f"{len(self.checks)} checks passed"


@task(name=Stage.QUOTA.task_name, **stage_retries())
def check_quota(settings: PipelineSettings) -> QuotaReport:
    target = stage_target(settings)
    checks = target.check_resources()
    logger = get_run_logger()
    for check in checks:
        logger.info("%s: need %g %s, %g free", check.resource, check.needed, check.unit, check.available)
    raise_if_short(checks)
    report = QuotaReport(checks=checks, warnings=target.notices())
    for warning in report.warnings:
        logger.warning(warning)
    return report
