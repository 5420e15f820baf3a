"""What a stage works on: the target of this flow run, and the cache key of a stage in its workspace."""

from __future__ import annotations

from prefect.runtime import flow_run

from config.naming import content_hash
from config.settings import PipelineSettings
from targets import get_target
from targets.base import Target


def stage_target(settings: PipelineSettings) -> Target:
    """The target a stage works on; what it creates is tagged with this flow run's id."""
    return get_target(settings, run_id=str(flow_run.id or "cli"))


def stage_cache_key(stage: str, target: Target, inputs: dict) -> str:
    """A cached stage's key: what the stage is made of, and the workspace it ran in (asked of the target)."""
    return f"{stage}-" + content_hash({**inputs, "workspace": target.workspace_identity()})
