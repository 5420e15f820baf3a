"""Stage 9: the Prompt flow custom connection (endpoint, key marked secret)."""

from prefect import get_run_logger, task

from phi3_pipeline.config.settings import PipelineSettings
from phi3_pipeline.stages import Stage
from phi3_pipeline.targets.base import ConnectionRef, DeploymentRef
from tasks.retries import stage_retries
from tasks.run_target import stage_target


@task(name=Stage.CONNECTION.task_name, **stage_retries())
def create_connection(settings: PipelineSettings, deployment: DeploymentRef) -> ConnectionRef:
    connection = stage_target(settings).create_connection(deployment)
    get_run_logger().info("Prompt flow connection %s -> %s (key stored as secret)", connection.name,
                          connection.endpoint)
    return connection
