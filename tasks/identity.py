"""Stage 2: identity and RBAC (local: the endpoint's key, kept owner-only; a private workspace)."""

from prefect import get_run_logger, task

from phi3_pipeline.config.settings import PipelineSettings
from phi3_pipeline.stages import Stage
from phi3_pipeline.targets.base import IdentityRef
from tasks.retries import stage_retries
from tasks.run_target import stage_target


@task(name=Stage.IDENTITY.task_name, **stage_retries())
def ensure_identity(settings: PipelineSettings) -> IdentityRef:
    identity = stage_target(settings).ensure_identity()
    logger = get_run_logger()
    logger.info("identity %s: %s", "created" if identity.created else "reused", identity.detail)
    for warning in identity.warnings:
        logger.warning(warning)
    return identity
