"""Teardown: remove what costs money or holds a port; deleting what is gone is success."""

from __future__ import annotations

from prefect import get_run_logger, task
from pydantic import BaseModel

from pipeline.config import PipelineSettings
from targets.base import DeploymentRef, TeardownReport
from tasks.common import stage_retries, stage_target


class CleanUp(BaseModel):
    removed: list[str]
    still_serving: str | None  # a deployment left up on purpose: it served before the run, or passed its gate


@task(name="teardown", **stage_retries())
def tear_down(settings: PipelineSettings, older_than_hours: float | None = None) -> TeardownReport:
    target = stage_target(settings)
    report = target.teardown() if older_than_hours is None else target.sweep(older_than_hours)
    logger = get_run_logger()
    logger.info("removed: %s", ", ".join(report.removed) or "nothing")
    logger.info("already gone: %s", ", ".join(report.already_gone) or "nothing")
    return report


@task(name="clean-up-after-failure", **stage_retries())
def clean_up_after_failure(settings: PipelineSettings, live_before: DeploymentRef | None,
                           went_live: bool) -> CleanUp:
    """Nothing served before the run: tear everything down. A model served: if the new one never completed
    going live, traffic goes back to the old one; either way the deployments without traffic go."""
    target = stage_target(settings)
    if live_before is None:
        return CleanUp(removed=target.teardown().removed, still_serving=None)
    live = target.go_live(live_before) if not went_live else target.live_deployment()
    if live is None:
        return CleanUp(removed=target.teardown().removed, still_serving=None)
    return CleanUp(removed=target.remove_deployments(keep=live.deployment_name), still_serving=live.deployment_name)
