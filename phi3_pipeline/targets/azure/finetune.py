"""The model-catalog fine-tune job on Azure: submitted once per name, adopted by every later run.

The job's name is derived from the data hash, the model and every setting (config.naming), so a
re-run finds the job: running, it keeps being polled; completed, it is reused; failed, the run stops
with the job's studio link. Nothing here deletes or re-submits a job of the same name.
"""

from __future__ import annotations

from azure.ai.ml import MLClient
from azure.core.exceptions import ResourceNotFoundError

from phi3_pipeline.targets.azure.clients import when_not_busy
from phi3_pipeline.targets.azure.entities import made_here
from phi3_pipeline.targets.base import JobStatus

# Azure ML job states (azure.ai.ml.constants.JobStatus) mapped onto the stage interface's states.
STATES = {
    "Completed": "Completed",
    "Failed": "Failed", "Canceled": "Failed", "NotResponding": "Failed",
    "Running": "Running", "Finalizing": "Running", "CancelRequested": "Running",
}


def submit(ml_client: MLClient, job) -> bool:
    """Submit the fine-tune unless a job of that name exists (in any state); True if submitted now."""
    try:
        ml_client.jobs.get(job.name)
        return False
    except ResourceNotFoundError:
        pass
    ml_client.jobs.create_or_update(job)
    return True


def _azure_state(job) -> str:
    return str(getattr(job.status, "value", job.status) or "NotStarted")


def active_jobs(ml_client: MLClient) -> list:
    """The workspace's jobs that have not ended (queued, starting, running: what bills); none in a workspace that
    does not exist. azure-ai-ml lists a job it cannot read as None: left out."""
    try:
        listed = [job for job in ml_client.jobs.list() if job is not None]
    except ResourceNotFoundError:
        return []
    return [job for job in listed if STATES.get(_azure_state(job), "Queued") in ("Queued", "Running")
            and _azure_state(job) != "CancelRequested"]


def cancel_running(ml_client: MLClient, model_name: str, active: list) -> list[str]:
    """Cancel, of the `active` jobs, the model's fine-tune jobs that this project started: a job bills its cluster
    (or, serverless, its tokens) while it runs, and a re-run with other data or settings names a new one."""
    mine = [job for job in active if made_here(job.tags) and job.experiment_name == model_name]
    for job in mine:
        when_not_busy(f"fine-tune job {job.name}", lambda name=job.name: ml_client.jobs.begin_cancel(name).result())
    return [job.name for job in mine]


def job_status(ml_client: MLClient, job_name: str) -> JobStatus:
    """One status call; a job that ended badly carries its studio link, where its logs are."""
    try:
        job = ml_client.jobs.get(job_name)
    except ResourceNotFoundError:
        return JobStatus(state="Missing")
    azure_state = _azure_state(job)
    state = STATES.get(azure_state, "Queued")  # NotStarted, Queued, Preparing, Provisioning, Starting
    error = f"the job ended {azure_state}; logs and details: {job.studio_url}" if state == "Failed" else None
    return JobStatus(state=state, phase=azure_state, error=error)
