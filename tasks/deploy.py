"""Stage 6: deploy the model behind the endpoint and put 100 % of traffic on it (verified)."""

from prefect import get_run_logger, task

from pipeline.config import PipelineSettings
from targets.base import DeploymentRef, ModelRef
from tasks.common import stage_retries, stage_target


@task(name="deploy", **stage_retries())
def deploy(settings: PipelineSettings, model: ModelRef) -> DeploymentRef:
    deployment = stage_target(settings).deploy(model)
    get_run_logger().info("deployment %s (%s) live at %s with 100 %% of traffic", deployment.deployment_name,
                          "started" if deployment.created else "already running", deployment.scoring_uri)
    return deployment
