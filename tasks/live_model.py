"""Stage 0: what serves now, and whether this run would train anything new (read calls only).

A scheduled retraining run with `skip_unchanged` ends here when the live model was trained on the
same data and settings: no training, no cloud write. The live deployment is also what a failed
run must leave serving, and what a retrained candidate is compared with.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from pydantic import BaseModel

from phi3_pipeline.chat_data.split_files import split_once
from phi3_pipeline.config.settings import PipelineSettings
from phi3_pipeline.stages import Stage
from phi3_pipeline.targets.base import DeploymentRef
from tasks.retries import stage_retries
from tasks.run_target import stage_target


class LiveModel(BaseModel):
    deployment: DeploymentRef | None
    planned_job: str | None  # the job this run needs; worked out only when asked to skip an unchanged run

    @property
    def unchanged(self) -> bool:
        return self.deployment is not None and self.deployment.job_name == self.planned_job

    @property
    def label(self) -> str:
        if self.deployment is None:
            return "nothing live yet"
        live = f"live: {self.deployment.deployment_name} (job {self.deployment.job_name})"
        if self.planned_job is None:
            return live
        return f"{live}; {'unchanged' if self.unchanged else 'new data or settings'}"


@task(name=Stage.LIVE_MODEL.task_name, **stage_retries())
def find_live_model(settings: PipelineSettings) -> LiveModel:
    target = stage_target(settings)
    planned_job = None
    if settings.skip_unchanged:
        planned_job = target.job_name(split_once(settings.dataset, target.local_root()).content_hash)
    live = LiveModel(deployment=target.live_deployment(), planned_job=planned_job)
    get_run_logger().info(live.label)
    return live
