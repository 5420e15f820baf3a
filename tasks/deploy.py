"""Stages 6 and 8, blue/green: deploy the model beside the live one, then (after the gate, stage 7) move
100 % of traffic to it, verified by a real request, and remove the old deployment."""

from prefect import get_run_logger, task

from phi3_pipeline.config.errors import PipelineError, TransientError
from phi3_pipeline.config.settings import PipelineSettings
from phi3_pipeline.stages import Stage
from phi3_pipeline.targets.base import DeploymentRef, ModelRef, TeardownReport
from tasks.retries import stage_retries
from tasks.run_target import stage_target


@task(name=Stage.DEPLOY.task_name, **stage_retries())
def deploy(settings: PipelineSettings, model: ModelRef) -> DeploymentRef:
    deployment = stage_target(settings).deploy(model)
    logger = get_run_logger()
    logger.info("deployment %s %s at %s (traffic now: %s)", deployment.deployment_name,
                "started" if deployment.created else "already running", deployment.scoring_uri,
                deployment.traffic or "none")
    for warning in deployment.warnings:
        logger.warning(warning)
    return deployment


@task(name=Stage.GO_LIVE.task_name, **stage_retries())
def go_live(settings: PipelineSettings, deployment: DeploymentRef) -> DeploymentRef:
    target = stage_target(settings)
    live = target.go_live(deployment)
    logger = get_run_logger()
    try:  # only once the new one answers live; a removal that fails leaves the good go-live in place
        retired = target.remove_deployments(keep=live)
    except (PipelineError, TransientError) as error:
        logger.warning("%s is live, but the deployments it replaced could not be removed now (%s): they stay "
                       "(billed) until the next go-live, the reaper or teardown removes them", live.deployment_name,
                       error)
        retired = TeardownReport(removed=[], already_gone=[], failed=[str(error)])
    logger.info("deployment %s live at %s with 100 %% of traffic; removed: %s", live.deployment_name,
                live.scoring_uri, ", ".join(retired.removed) or "nothing")
    if retired.kept:
        logger.info("left to the runs whose candidates they are: %s", ", ".join(retired.kept))
    return live
