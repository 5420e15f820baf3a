"""Stage 4: fine-tune: adopt or submit the job named by its inputs, then poll it with backoff."""

from __future__ import annotations

import time

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from phi3_pipeline.config.errors import JobFailedError
from phi3_pipeline.config.settings import PipelineSettings
from phi3_pipeline.stages import Stage
from phi3_pipeline.targets.base import DatasetRef, JobRef, JobStatus
from tasks.retries import stage_retries
from tasks.run_target import stage_cache_key, stage_target

BACKOFF = 1.5
PROGRESS_LOG_EVERY_S = 5
TERMINAL_STATES = ("Completed", "Failed", "Lost")


def finetune_cache_key(context, parameters) -> str:
    """The job is named by everything it is made of: the same name in the same workspace is the same job."""
    settings: PipelineSettings = parameters["settings"]
    dataset: DatasetRef = parameters["dataset"]
    target = stage_target(settings)  # one target: its catalog and clients serve the name and the workspace
    return stage_cache_key("finetune", target, {"job": target.job_name(dataset.content_hash)})


def poll_job(target, name: str, timeout_s: float) -> JobStatus:
    """Poll until the job ends; the interval grows from the target's first to its maximum."""
    logger = get_run_logger()
    progress_id = create_progress_artifact(progress=0.0, key="fine-tune-progress",
                                           description=f"fine-tune job {name}")
    started = time.monotonic()
    interval, last_log = target.first_poll_interval_s, 0.0
    while True:
        status = target.job_status(name)
        elapsed = time.monotonic() - started
        loss = f", loss {status.loss:.3f}" if status.loss is not None else ""
        progress = f"{status.state} {status.phase} step {status.step}/{status.total_steps}{loss}"
        if status.total_steps:
            update_progress_artifact(progress_id, 100.0 * status.step / status.total_steps,
                                     description=f"fine-tune job {name}: {progress}")
        if status.state in TERMINAL_STATES:
            return status
        if elapsed - last_log >= PROGRESS_LOG_EVERY_S:
            logger.info("job %s: %s, %.0f s elapsed", name, progress, elapsed)
            last_log = elapsed
        if elapsed > timeout_s:
            raise JobFailedError(f"fine-tune job {name} still {status.state} after {timeout_s:.0f} s "
                                 "(job_timeout_s); it keeps running: re-run the pipeline to adopt it")
        time.sleep(interval)
        interval = min(interval * BACKOFF, target.max_poll_interval_s)


@task(name=Stage.FINE_TUNE.task_name, cache_key_fn=finetune_cache_key, **stage_retries())
def fine_tune(settings: PipelineSettings, dataset: DatasetRef) -> JobRef:
    target = stage_target(settings)
    name = target.job_name(dataset.content_hash)
    submitted = target.find_or_submit_job(name, dataset)
    get_run_logger().info("%s fine-tune job %s", "submitted" if submitted else "adopted existing", name)
    status = poll_job(target, name, settings.job_timeout_s)
    if status.state != "Completed":
        raise target.job_failure(name, status)
    job = target.job_result(name).model_copy(update={"created": submitted})
    first, last = job.metrics.get("train_loss_first"), job.metrics.get("train_loss_last")
    if first is not None and last is not None and last >= first:
        raise JobFailedError(f"fine-tune job {name} did not learn: training loss went from {first:.4f} to "
                             f"{last:.4f}; lower training.learning_rate or raise training.epochs")
    return job
