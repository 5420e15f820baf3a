"""Azure cluster and model registration through the real MLClient against an in-memory Resource Manager."""

from __future__ import annotations

import warnings

from phi3_pipeline.targets.azure import assets
from phi3_pipeline.targets.azure.entities import finetune_job, resource_tags
from tests.azure_fakes import AZURE, request_json

warnings.filterwarnings("ignore", message=".*experimental")
TAGS = resource_tags("run-1")


def test_the_cluster_is_created_once_with_the_tutorials_settings_and_the_chosen_size(cloud):
    ml_client, transport = cloud
    assert assets.cluster_size(ml_client, AZURE.compute_name) is None
    cluster, created = assets.ensure_cluster(ml_client, AZURE, "Standard_NC40ads_H100_v5", TAGS)
    assert created
    assert (cluster.size, cluster.min_instances, cluster.max_instances) == ("Standard_NC40ads_H100_v5", 0, 1)
    assert cluster.idle_time_before_scale_down == 120
    assert assets.ensure_cluster(ml_client, AZURE, "Standard_NC24ads_A100_v4", TAGS)[1] is False
    assert assets.cluster_size(ml_client, AZURE.compute_name) == "Standard_NC40ads_H100_v5", "a cluster keeps its size"
    assert len(transport.calls("PUT", "/computes/")) == 1


def completed_job(arm, ml_client, name: str) -> None:
    """A fine-tune job of that name, completed: the fake service registers its output as it does."""
    phi4 = "azureml://registries/azureml/models/Phi-4/versions/8"
    ml_client.jobs.create_or_update(finetune_job(AZURE.compute_name, phi4, {}, name, "azureml:t:1", "azureml:v:1",
                                                 "phi3-custom", TAGS))
    arm.job_states = ["Completed"]
    ml_client.jobs.get(name)


def test_the_services_own_registration_is_adopted_and_tagged_not_registered_again(cloud, arm):
    ml_client, transport = cloud
    completed_job(arm, ml_client, "phi3-custom-ft-aaa")
    lineage = {"train-data": "azureml:t:1"}
    model, created = assets.adopt_job_model(ml_client, "phi3-custom", "phi3-custom-ft-aaa", lineage, TAGS)
    assert (model.version, created, model.job_name) == ("1", False, "phi3-custom-ft-aaa")
    assert model.tags["job"] == "phi3-custom-ft-aaa" and model.tags["train-data"] == "azureml:t:1"
    assert model.tags["pipeline-run"] == "run-1"
    (tagging,) = transport.calls("PUT", "/models/phi3-custom/versions/1")
    assert request_json(tagging)["properties"]["modelUri"] == "azureml://jobs/phi3-custom-ft-aaa/outputs/registered_model"
    again, _ = assets.adopt_job_model(ml_client, "phi3-custom", "phi3-custom-ft-aaa", lineage, resource_tags("run-2"))
    assert len(transport.calls("PUT", "/models/")) == 1, "already tagged: a later run writes nothing"
    assert again.tags["pipeline-run"] == "run-1", "the lineage names the run that made it"
    completed_job(arm, ml_client, "phi3-custom-ft-bbb")
    second, created = assets.adopt_job_model(ml_client, "phi3-custom", "phi3-custom-ft-bbb", lineage, TAGS)
    assert (second.version, created) == ("2", False)


def test_a_job_the_service_did_not_register_is_registered_once_from_its_output(cloud):
    ml_client, transport = cloud  # no versions of the name yet: the service answers 404, as recorded
    first, created = assets.adopt_job_model(ml_client, "phi3-custom", "phi3-custom-ft-aaa", {}, TAGS)
    assert created and first.version == "1" and first.type == "mlflow_model"
    (put,) = transport.calls("PUT", "/models/phi3-custom/versions/1")
    assert request_json(put)["properties"]["modelUri"] == "azureml://jobs/phi3-custom-ft-aaa/outputs/registered_model"
    again, created = assets.adopt_job_model(ml_client, "phi3-custom", "phi3-custom-ft-aaa", {}, TAGS)
    assert (again.version, created) == ("1", False)
    assert len(transport.calls("PUT", "/models/")) == 1
