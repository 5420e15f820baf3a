"""What a stage works on: the target of this flow run, and the cache key of a stage in its workspace."""

from __future__ import annotations

from functools import lru_cache

from prefect.runtime import flow_run

from phi3_pipeline.config.naming import content_hash
from phi3_pipeline.config.settings import PipelineSettings
from phi3_pipeline.targets import get_target
from phi3_pipeline.targets.base import Target

RUNS_REMEMBERED = 8  # a process serving deployments runs a few flows at once; older runs' targets are let go


@lru_cache(maxsize=RUNS_REMEMBERED)
def _target_of_run(run_id: str, settings_json: str) -> Target:
    return get_target(PipelineSettings.model_validate_json(settings_json), run_id=run_id)


def stage_target(settings: PipelineSettings) -> Target:
    """The target a stage works on, one per flow run (on Azure: one credential, token and workspace read for all
    of its stages); what it creates is tagged with the flow run's id. Outside a flow run (a task's logic called
    on its own), a new one."""
    if flow_run.id is None:
        return get_target(settings, run_id="cli")
    return _target_of_run(str(flow_run.id), settings.model_dump_json())


def stage_cache_key(stage: str, target: Target, inputs: dict) -> str:
    """A cached stage's key: what the stage is made of, and the workspace it ran in (asked of the target)."""
    return f"{stage}-" + content_hash({**inputs, "workspace": target.workspace_identity()})
