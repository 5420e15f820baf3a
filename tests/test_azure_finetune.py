"""Azure fine-tune submit/adopt/status through the real MLClient against an in-memory Resource Manager."""

from __future__ import annotations

import warnings

import pytest
from azure.ai.ml import MLClient

from phi3_pipeline.targets.azure import finetune
from phi3_pipeline.targets.azure.entities import finetune_job, resource_tags
from tests.azure_fakes import AZURE, WORKSPACE, request_json

warnings.filterwarnings("ignore", message=".*experimental")
JOB = "phi3-custom-ft-0123456789ab"
JOB_PATH = f"{WORKSPACE}/jobs/{JOB}"
PHI4 = "azureml://registries/azureml/models/Phi-4/versions/8"


def submit(ml_client: MLClient) -> bool:
    return finetune.submit(ml_client, finetune_job(AZURE.compute_name, PHI4, {"learning_rate": "5e-6"}, JOB,
                                                   "azureml:phi3-train:0123", "azureml:phi3-test:0123", "phi3-custom",
                                                   resource_tags("run-1")))


def test_the_job_is_submitted_once_and_adopted_by_every_rerun(cloud, arm):
    ml_client, transport = cloud
    assert submit(ml_client) is True
    (put,) = transport.calls("PUT", f"/jobs/{JOB}")
    assert request_json(put)["properties"]["fineTuningDetails"]["taskType"] == "chatCompletion"
    for azure_state in ("Running", "Completed", "Failed"):
        arm.resources[JOB_PATH]["properties"]["status"] = azure_state
        assert submit(ml_client) is False
    assert len(transport.calls("PUT", f"/jobs/{JOB}")) == 1


@pytest.mark.parametrize(("azure_state", "state"), [("NotStarted", "Queued"), ("Provisioning", "Queued"),
                                                    ("Running", "Running"), ("Finalizing", "Running"),
                                                    ("Completed", "Completed"), ("Canceled", "Failed")])
def test_azure_job_states_map_onto_the_stage_states(cloud, arm, azure_state, state):
    ml_client, _ = cloud
    submit(ml_client)
    arm.resources[JOB_PATH]["properties"]["status"] = azure_state
    assert finetune.job_status(ml_client, JOB).state == state


def test_a_failed_job_points_at_its_studio_page(cloud, arm):
    ml_client, _ = cloud
    submit(ml_client)
    arm.resources[JOB_PATH]["properties"]["status"] = "Failed"
    status = finetune.job_status(ml_client, JOB)
    assert status.state == "Failed" and "ml.azure.com/runs/" + JOB in status.error


def test_a_job_nobody_submitted_is_missing_and_throttled_submits_are_retried(cloud, arm):
    ml_client, transport = cloud
    assert finetune.job_status(ml_client, JOB).state == "Missing"
    arm.inject("PUT", f"/jobs/{JOB}", (429, {"error": {"code": "TooManyRequests"}}, {"Retry-After": "0"}))
    assert submit(ml_client) is True
    assert len(transport.calls("PUT", f"/jobs/{JOB}")) == 2
