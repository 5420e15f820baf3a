"""Where the stages run. `get_target` is the one place that knows the implementations."""

from __future__ import annotations

from phi3_pipeline.chat_data.split_files import split_once
from phi3_pipeline.config.settings import PipelineSettings
from phi3_pipeline.targets.base import PlanItem, Target


def get_target(settings: PipelineSettings, run_id: str = "cli") -> Target:
    """The target the settings name; `run_id` is tagged on what it creates."""
    if settings.target == "azure" and settings.azure.mode == "serverless":
        from phi3_pipeline.targets.azure.serverless_target import ServerlessAzureTarget

        return ServerlessAzureTarget(settings, run_id)
    if settings.target == "azure":
        from phi3_pipeline.targets.azure.target import AzureTarget

        return AzureTarget(settings, run_id)
    from phi3_pipeline.targets.local.target import LocalTarget

    return LocalTarget(settings, run_id)


def plan_run(settings: PipelineSettings) -> list[PlanItem]:
    """The dry run: the split is made locally to name the data and the job; the target only reads."""
    target = get_target(settings)
    split = split_once(settings.dataset, target.local_root())
    return target.plan(split, target.job_name(split.content_hash))
