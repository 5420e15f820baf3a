"""Stage 1: identity and RBAC (local: the endpoint's key, kept owner-only; a private workspace)."""

from prefect import get_run_logger, task

from pipeline.config import PipelineSettings
from targets import get_target
from targets.base import IdentityRef
from tasks.common import stage_retries


@task(name="identity-and-rbac", **stage_retries())
def ensure_identity(settings: PipelineSettings) -> IdentityRef:
    identity = get_target(settings).ensure_identity()
    get_run_logger().info(
        "%s endpoint key; kept at %s (owner-only)", "made a new" if identity.created else "reusing the",
        identity.key_location,
    )
    return identity
