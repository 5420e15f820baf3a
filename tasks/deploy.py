"""Stage 6: deploy the model behind the endpoint and put 100 % of traffic on it (verified)."""

from prefect import get_run_logger, task

from pipeline.config import PipelineSettings
from pipeline.errors import PipelineError
from targets import get_target
from targets.base import DeploymentRef, ModelRef
from tasks.common import stage_retries


@task(name="deploy", **stage_retries())
def deploy(settings: PipelineSettings, model: ModelRef) -> DeploymentRef:
    deployment = get_target(settings).deploy(model)
    if deployment.traffic.get(deployment.deployment_name) != 100:
        raise PipelineError(f"traffic on {deployment.deployment_name} is {deployment.traffic}, not 100 %")
    get_run_logger().info("deployment %s (%s) live at %s with 100 %% of traffic", deployment.deployment_name,
                          "started" if deployment.created else "already running", deployment.scoring_uri)
    return deployment
