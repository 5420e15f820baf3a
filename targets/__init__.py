"""Where the stages run. `get_target` is the one place that knows the implementations."""

from __future__ import annotations

from pipeline.config import PipelineSettings
from targets.base import Target


def get_target(settings: PipelineSettings, run_id: str = "cli") -> Target:
    """The target the settings name; `run_id` is tagged on what it creates."""
    if settings.target == "azure":
        from targets.azure.target import AzureTarget

        return AzureTarget(settings, run_id)
    from targets.local.target import LocalTarget

    return LocalTarget(settings, run_id)
