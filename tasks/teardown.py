"""Teardown: remove what costs money or holds a port; deleting what is gone is success."""

from __future__ import annotations

from prefect import get_run_logger, task
from pydantic import BaseModel

from phi3_pipeline.config.errors import PipelineError, TransientError
from phi3_pipeline.config.settings import PipelineSettings
from phi3_pipeline.stages import Stage
from phi3_pipeline.targets.base import SMOKE_PROBE, DeploymentRef, TeardownReport
from tasks.retries import stage_retries
from tasks.run_target import stage_target


class CleanUp(BaseModel):
    removed: list[str]
    still_serving: str | None  # a deployment left up on purpose: it served before the run, or passed its gate


@task(name=Stage.TEARDOWN.task_name, **stage_retries())
def tear_down(settings: PipelineSettings, older_than_hours: float | None = None) -> TeardownReport:
    target = stage_target(settings)
    report = target.teardown() if older_than_hours is None else target.sweep(older_than_hours)
    logger = get_run_logger()
    logger.info("removed: %s", ", ".join(report.removed) or "nothing")
    logger.info("already gone: %s", ", ".join(report.already_gone) or "nothing")
    if report.kept:
        logger.info("kept: %s", ", ".join(report.kept))
    if report.failed:  # after the others were removed: the run fails, so a schedule shows it
        raise PipelineError(f"teardown could not remove {'; '.join(report.failed)}; run it again later "
                            "(python -m flows.teardown)")
    return report


@task(name="clean-up-after-failure", **stage_retries())
def clean_up_after_failure(settings: PipelineSettings, live_before: DeploymentRef | None,
                           went_live: bool) -> CleanUp:
    """Only what this run made goes. Nothing served before the run: tear everything down, unless another run
    has made a model live meanwhile (then only this run's deployments go) or holds a candidate on the endpoint.
    A model served: if the new one never completed going live, traffic goes back to the old one (verified by the
    traffic map; its probe comes after the candidate is gone); either way this run's deployments without traffic
    go."""
    target = stage_target(settings)
    live_now = target.live_deployment()
    if live_now is not None and live_now.run_id not in ("", target.run_id):  # another run's model serves
        return CleanUp(removed=target.remove_deployments(keep=live_now, only_own=True).removed,
                       still_serving=live_now.deployment_name)
    if live_before is None:
        left = target.remove_deployments(keep=live_now)
        if left.kept:  # another run's candidate: the endpoint stays for it
            return CleanUp(removed=left.removed, still_serving=live_now.deployment_name if live_now else None)
        return CleanUp(removed=left.removed + target.teardown(cancel_jobs=False).removed, still_serving=None)
    if went_live:  # this run's model serves: the older ones take no traffic and go
        return CleanUp(removed=target.remove_deployments(keep=live_now).removed,
                       still_serving=live_now.deployment_name)
    live = target.go_live(live_before, restore=True)  # traffic back to the model that served before, verified
    removed = target.remove_deployments(keep=live, only_own=True).removed
    try:  # only now: whether the old model answers is reported, never a reason to keep the candidate billing
        target.ask(live, SMOKE_PROBE, 16)
    except (PipelineError, TransientError) as error:
        get_run_logger().warning("traffic is back on %s, which did not answer a probe: %s", live.deployment_name,
                                 error)
    return CleanUp(removed=removed, still_serving=live.deployment_name)
