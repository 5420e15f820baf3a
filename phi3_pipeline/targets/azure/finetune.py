"""The model-catalog fine-tune job on Azure: submitted once per name, adopted by every later run.

The job's name is derived from the data hash, the model and every setting (config.naming), so a
re-run finds the job: running, it keeps being polled; completed, it is reused; failed, the run stops
with the job's studio link. Nothing here deletes or re-submits a job of the same name.
"""

from __future__ import annotations

from azure.ai.ml import MLClient
from azure.core.exceptions import ResourceNotFoundError

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


def job_status(ml_client: MLClient, job_name: str) -> JobStatus:
    """One status call; a job that ended badly carries its studio link, where its logs are."""
    try:
        job = ml_client.jobs.get(job_name)
    except ResourceNotFoundError:
        return JobStatus(state="Missing")
    azure_state = str(getattr(job.status, "value", job.status) or "NotStarted")
    state = STATES.get(azure_state, "Queued")  # NotStarted, Queued, Preparing, Provisioning, Starting
    error = f"the job ended {azure_state}; logs and details: {job.studio_url}" if state == "Failed" else None
    return JobStatus(state=state, phase=azure_state, error=error)
