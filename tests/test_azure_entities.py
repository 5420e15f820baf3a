"""Azure test layer 1: the entities the Azure target will send pass the SDK's own validation and
serialise to the REST shape with the tutorial's values (SEED.md), field by field. No network."""

import uuid
import warnings

import pytest

from phi3_pipeline.targets.azure import entities
from tests.azure_fakes import AZURE

warnings.filterwarnings("ignore", message=".*experimental")
TAGS = entities.resource_tags("run-1")


def test_tags_name_the_project_the_run_and_the_time():
    assert set(TAGS) == {"managed-by", "pipeline-run", "created-at"}
    assert TAGS["managed-by"] == "phi3-pipeline" and TAGS["pipeline-run"] == "run-1"


UAI = ("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/"
       "Microsoft.ManagedIdentity/userAssignedIdentities/phi3-pipeline-identity")
PHI4 = "azureml://registries/azureml/models/Phi-4/versions/8"


def test_compute_cluster_is_the_tutorials_cluster_on_the_chosen_size():
    compute = entities.compute_cluster(AZURE, "Standard_NC40ads_H100_v5", TAGS)._to_rest_object()
    rest = compute.as_dict()
    props = rest["properties"]["properties"]
    assert rest["properties"]["computeType"] == "AmlCompute"
    assert props["vmSize"] == "Standard_NC40ads_H100_v5"
    assert props["vmPriority"] == "Dedicated"
    assert props["scaleSettings"] == {"minNodeCount": 0, "maxNodeCount": 1, "nodeIdleTimeBeforeScaleDown": "PT2M"}
    assert rest["tags"] == TAGS


def test_finetune_job_is_a_chat_completion_of_the_pinned_catalog_model_with_validation_data():
    hyperparameters = {"learning_rate": "5e-6", "lr_scheduler_type": "cosine", "num_train_epochs": "1",
                       "per_device_train_batch_size": "1"}
    job = entities.finetune_job(AZURE.compute_name, PHI4, hyperparameters, "phi3-custom-ft-abc",
                                "azureml:phi3-train:0123", "azureml:phi3-test:0123", "phi3-custom", TAGS)
    rest = job._to_rest_object().as_dict()["properties"]
    details = rest["fineTuningDetails"]
    assert rest["jobType"] == "FineTuning"
    assert details["taskType"] == "chatCompletion"
    assert details["model"] == {"uri": PHI4, "jobInputType": "mlflow_model"}
    assert details["trainingData"] == {"uri": "azureml:phi3-train:0123", "jobInputType": "uri_file"}
    assert details["validationData"] == {"uri": "azureml:phi3-test:0123", "jobInputType": "uri_file"}
    assert details["hyperParameters"] == hyperparameters
    assert rest["computeId"] == "phi-ft-cluster"
    assert rest["outputs"]["registered_model"] == {"assetName": "phi3-custom", "jobOutputType": "mlflow_model"}
    assert job.name == "phi3-custom-ft-abc" and rest["tags"] == TAGS


def test_data_asset_version_is_the_content_hash():
    rest = entities.data_asset("phi3-train", "/tmp/train_data.jsonl", "ab" * 32, TAGS)
    assert rest.version == "ab" * 8
    assert rest._to_rest_object().as_dict()["properties"]["dataType"] == "uri_file"


def test_registered_model_is_mlflow_from_the_job_output():
    model = entities.registered_model("phi3-custom", "3", "phi3-custom-ft-abc", TAGS)
    props = model._to_rest_object().as_dict()["properties"]
    assert props["modelType"] == "mlflow_model"
    assert props["modelUri"] == "azureml://jobs/phi3-custom-ft-abc/outputs/registered_model"
    assert props["tags"]["job"] == "phi3-custom-ft-abc"


def test_endpoint_uses_key_auth_the_identity_and_full_traffic_on_the_deployment():
    endpoint = entities.with_full_traffic(entities.online_endpoint(AZURE, "phi3-ep", TAGS), "phi3-custom-v3")
    rest = endpoint._to_rest_online_endpoint(location="eastus2").as_dict()
    assert rest["properties"]["authMode"] == "Key"
    assert rest["properties"]["traffic"] == {"phi3-custom-v3": 100}
    assert rest["identity"]["type"] == "UserAssigned" and list(rest["identity"]["userAssignedIdentities"]) == [UAI]
    without_registry = entities.online_endpoint(AZURE, "phi3-ep", TAGS, user_assigned_identity=False)
    assert without_registry._to_rest_online_endpoint(location="eastus2").as_dict()["identity"]["type"] == \
        "SystemAssigned"


def test_deployment_is_one_instance_whose_readiness_is_checked_from_the_start():
    deployment = entities.online_deployment(AZURE, "Standard_NC24ads_A100_v4", "phi3-ep", "phi3-custom-v3",
                                            "azureml:phi3-custom:3", TAGS)
    rest = deployment._to_rest_object(location="eastus2").as_dict()
    props = rest["properties"]
    assert props["instanceType"] == "Standard_NC24ads_A100_v4"
    assert rest["sku"]["capacity"] == 1
    assert props["model"] == "azureml:phi3-custom:3"
    assert props["livenessProbe"]["initialDelay"] == "PT10M", "the cold start is waited out before restarts"
    assert props["readinessProbe"]["initialDelay"] == "PT10S", "ready as soon as the model answers"
    assert props["livenessProbe"]["failureThreshold"] == props["readinessProbe"]["failureThreshold"] == 30
    assert props["requestSettings"]["requestTimeout"] == "PT1M30S"
    assert props["requestSettings"]["maxConcurrentRequestsPerInstance"] == 128, "vLLM batches: not Azure's 1"
    assert props["endpointComputeType"] == "Managed"


def test_the_roles_the_endpoint_uses_and_the_tutorials_unused_contributor():
    assert entities.REQUIRED_ROLES == (("Storage Blob Data Reader", "storage_account"),
                                       ("AcrPull", "container_registry"),
                                       ("AzureML Metrics Writer (preview)", "workspace"))
    assert entities.UNUSED_ROLES == (("Contributor", "resource_group"),)


@pytest.mark.parametrize("other", [("/subscriptions/x/resourceGroups/other", "Contributor", "p1"),
                                   ("/subscriptions/x/resourceGroups/rg", "AcrPull", "p1"),
                                   ("/subscriptions/x/resourceGroups/rg", "Contributor", "p2")])
def test_role_assignment_names_are_deterministic_guids(other):
    name = entities.role_assignment_name("/subscriptions/x/resourceGroups/rg", "Contributor", "p1")
    assert name == entities.role_assignment_name("/subscriptions/X/resourceGroups/RG", "Contributor", "p1")
    assert uuid.UUID(name).version == 5
    assert entities.role_assignment_name(*other) != name


def test_role_assignment_is_for_the_identitys_service_principal():
    body = entities.role_assignment("/subscriptions/x/providers/Microsoft.Authorization/roleDefinitions/r1",
                                    "11111111-1111-1111-1111-111111111111").serialize()
    assert body["properties"] == {
        "roleDefinitionId": "/subscriptions/x/providers/Microsoft.Authorization/roleDefinitions/r1",
        "principalId": "11111111-1111-1111-1111-111111111111", "principalType": "ServicePrincipal"}


def test_managed_identity_in_the_workspace_region():
    assert entities.managed_identity(AZURE, TAGS).serialize() == {"location": "eastus2", "tags": TAGS}
