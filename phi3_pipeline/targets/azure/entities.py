"""The Azure entities of the tutorial, built from the configuration (no network, no Prefect).

Each builder returns the azure-ai-ml / management-SDK object the Azure target will send, so that the
SDK's own validation and REST serialisation can be checked offline against the tutorial's values.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from azure.ai.ml.constants import AssetTypes
from azure.ai.ml.entities import (
    AmlCompute,
    Data,
    IdentityConfiguration,
    ManagedIdentityConfiguration,
    ManagedOnlineDeployment,
    ManagedOnlineEndpoint,
    Model,
    OnlineRequestSettings,
    ProbeSettings,
    ServerlessEndpoint,
)
from azure.ai.ml.finetuning import FineTuningTaskType, create_finetuning_job
from azure.mgmt.authorization.models import RoleAssignmentCreateParameters
from azure.mgmt.msi.models import Identity

from phi3_pipeline.config.settings import AzureSettings

MANAGED_BY = "phi3-pipeline"
LIVE_SINCE = "live-since"
LEASE_UNTIL = "lease-until"  # on a deployment: until when runs going live (on any machine) leave it alone
FINETUNE_OUTPUT = "registered_model"
# azure.endpoint_auth -> the endpoint's auth_mode (azure-ai-ml: "key", "aml_token" or "aad_token")
ENDPOINT_AUTH_MODES = {"key": "key", "token": "aad_token"}
# What lets the signed-in principal score a token-auth endpoint: its wildcards include
# Microsoft.MachineLearningServices/workspaces/onlineEndpoints/score/action (how-to-authenticate-online-endpoint)
SCORING_ROLE = ("AzureML Data Scientist", "workspace")
# What lets the signed-in principal take the workspace lease (a blob lease is a blob write: Microsoft.Storage/
# storageAccounts/blobServices/containers/blobs/write), and make its blob the first time
LEASE_ROLE = ("Storage Blob Data Contributor", "storage_account")
# The roles of SEED.md's identity that something uses, and the scope of each: the online endpoint runs as the
# identity and pulls its model (storage) and image (registry) with them.
REQUIRED_ROLES = (
    ("Storage Blob Data Reader", "storage_account"),
    ("AcrPull", "container_registry"),
    # a system-assigned endpoint identity gets it from Azure, a user-assigned one does not
    # (azure-ai-docs, concept-endpoints-online-auth.md): the deployment writes its metrics with it
    ("AzureML Metrics Writer (preview)", "workspace"),
)
# SEED.md's third role, Contributor on the resource group: nothing the pipeline runs uses it (a fine-tune job
# takes no identity), so it is not granted, and one an earlier version granted is removed.
UNUSED_ROLES = (("Contributor", "resource_group"),)
# Probes (azure-ai-ml defaults: period 10 s, failure threshold 30): liveness waits out the cold start, after
# which 30 failed checks restart the container; readiness starts early and only marks it unready until the
# model answers, so the deployment is ready as soon as the model is, not after a fixed 10 minutes.
PROBE_PERIOD_S = 10
PROBE_FAILURE_THRESHOLD = 30
READINESS_INITIAL_DELAY_S = 10


MANAGED_BY_TAG = "managed-by"


def resource_tags(run_id: str, created_at: datetime | None = None) -> dict[str, str]:
    """Tags on everything the pipeline creates, set as it creates it, so a sweep can find (and age) what it made
    and a teardown can tell it from what it only adopted by name."""
    created = (created_at or datetime.now(UTC)).isoformat(timespec="seconds")
    return {MANAGED_BY_TAG: MANAGED_BY, "pipeline-run": run_id, "created-at": created}


def made_here(tags: dict[str, str] | None) -> bool:
    """Whether a resource carries the tag this pipeline sets on what it creates: only those are its to delete."""
    return (tags or {}).get(MANAGED_BY_TAG) == MANAGED_BY


def deployment_lease(run_id: str, minutes: int, now: datetime | None = None) -> dict[str, str]:
    """The tags that make a deployment this run's candidate: other runs keep off it until the lease ends."""
    until = (now or datetime.now(UTC)) + timedelta(minutes=minutes)
    return {"pipeline-run": run_id, LEASE_UNTIL: until.isoformat(timespec="seconds")}


def role_assignment_name(scope: str, role: str, principal_id: str) -> str:
    """A deterministic assignment name (a GUID), so a re-run finds the assignment it made."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{scope.lower()}|{role}|{principal_id}"))


def role_assignment(role_definition_id: str, principal_id: str,
                    principal_type: str | None = "ServicePrincipal") -> RoleAssignmentCreateParameters:
    """`principal_type` None: Azure works it out (a signed-in principal may be a user or an application)."""
    return RoleAssignmentCreateParameters(
        role_definition_id=role_definition_id, principal_id=principal_id, principal_type=principal_type
    )


def managed_identity(azure: AzureSettings, tags: dict[str, str]) -> Identity:
    return Identity(location=azure.location, tags=tags)


def identity_id(azure: AzureSettings) -> str:
    """The user-assigned identity's ARM id (its name is fixed by the settings, so no lookup is needed)."""
    return (f"/subscriptions/{azure.subscription_id}/resourceGroups/{azure.resource_group}/providers/"
            f"Microsoft.ManagedIdentity/userAssignedIdentities/{azure.identity_name}")


def user_assigned(azure: AzureSettings) -> IdentityConfiguration:
    """The pipeline's identity, holding the tutorial's three roles, as what a cluster or endpoint runs as."""
    return IdentityConfiguration(type="user_assigned",
                                 user_assigned_identities=[ManagedIdentityConfiguration(resource_id=identity_id(azure))])


def compute_cluster(azure: AzureSettings, vm_size: str, tags: dict[str, str]) -> AmlCompute:
    """SEED.md: dedicated GPU tier, min 0, max 1 node, 120 s idle before scale-down; the size from the model's
    fine-tuning computes."""
    return AmlCompute(
        name=azure.compute_name,
        size=vm_size,
        tier="dedicated",
        min_instances=azure.compute_min_nodes,
        max_instances=azure.compute_max_nodes,
        idle_time_before_scale_down=azure.compute_idle_seconds,
        tags=tags,
    )


def data_asset(name: str, local_path: str, content_hash: str, tags: dict[str, str]) -> Data:
    """A JSONL file as a uri_file asset whose version is its content hash: unchanged data uploads once."""
    return Data(name=name, version=content_hash[:16], path=local_path, type=AssetTypes.URI_FILE, tags=tags)


def finetune_job(compute: str | None, model_asset_id: str, hyperparameters: dict[str, str], job_name: str,
                 train_asset: str, test_asset: str, model_name: str, tags: dict[str, str]):
    """Model-catalog fine-tune, chat completion, of the exact (version-pinned) catalog model on the cluster, or
    serverless without one (`compute` None: the SDK then sends a serverless FineTuning job, as Microsoft's
    serverless notebook does); validation data = the test split (azure-ai-ml 1.35 fails without one); the service
    registers the output as `model_name` itself."""
    return create_finetuning_job(
        model=model_asset_id,
        task=FineTuningTaskType.CHAT_COMPLETION,
        training_data=train_asset,
        validation_data=test_asset,
        hyperparameters=hyperparameters,
        compute=compute,
        output_model_name_prefix=model_name,
        name=job_name,
        display_name=job_name,
        experiment_name=model_name,
        tags=tags,
    )


def registered_model(model_name: str, version: str, job_name: str, tags: dict[str, str]) -> Model:
    """SEED.md: register from the job's output, model type MLflow."""
    return Model(
        name=model_name,
        version=version,
        path=f"azureml://jobs/{job_name}/outputs/{FINETUNE_OUTPUT}",
        type=AssetTypes.MLFLOW_MODEL,
        tags={**tags, "job": job_name},
    )


def online_endpoint(azure: AzureSettings, name: str, tags: dict[str, str],
                    user_assigned_identity: bool = True) -> ManagedOnlineEndpoint:
    """Key or Microsoft Entra token auth (`azure.endpoint_auth`); runs as the pipeline's identity, whose Storage
    Blob Data Reader and AcrPull grants are what a deployment needs to pull its model and image. Without them (a
    workspace with no registry yet, so no AcrPull) it runs as a system-assigned identity, which Azure grants what
    it needs itself."""
    identity = user_assigned(azure) if user_assigned_identity else IdentityConfiguration(type="system_assigned")
    return ManagedOnlineEndpoint(name=name, auth_mode=ENDPOINT_AUTH_MODES[azure.endpoint_auth], identity=identity,
                                 tags=tags)


def online_deployment(azure: AzureSettings, vm_size: str, endpoint_name: str, deployment_name: str, model_id: str,
                      tags: dict[str, str]) -> ManagedOnlineDeployment:
    """SEED.md: one instance (of a size from the model's inference computes: the tutorial's NC6s_v3 is retired)."""
    return ManagedOnlineDeployment(
        name=deployment_name,
        endpoint_name=endpoint_name,
        model=model_id,
        instance_type=vm_size,
        instance_count=azure.deploy_instance_count,
        liveness_probe=ProbeSettings(initial_delay=azure.cold_start_s, period=PROBE_PERIOD_S,
                                     failure_threshold=PROBE_FAILURE_THRESHOLD),
        readiness_probe=ProbeSettings(initial_delay=READINESS_INITIAL_DELAY_S, period=PROBE_PERIOD_S,
                                      failure_threshold=PROBE_FAILURE_THRESHOLD),
        request_settings=OnlineRequestSettings(
            request_timeout_ms=azure.request_timeout_ms,
            max_concurrent_requests_per_instance=azure.max_concurrent_requests_per_instance),
        tags=tags,
    )


def serverless_endpoint(name: str, model_id: str, location: str, tags: dict[str, str]) -> ServerlessEndpoint:
    """A serverless endpoint for the fine-tuned model (key auth is the service's only mode for one; azure-ai-ml
    1.35 sends the model id, the Consumption sku, the location and the tags, nothing else)."""
    return ServerlessEndpoint(name=name, model_id=model_id, location=location, tags=tags)


def workspace_model_id(location: str, workspace_guid: str, name: str, version: int) -> str:
    """The id a serverless endpoint names a fine-tuned model by (Azure/azureml-examples, model-as-a-service
    chat-completion notebook: `azureml://locations/<region>/workspaces/<workspace GUID>/models/<name>/versions/<n>`)."""
    return f"azureml://locations/{location}/workspaces/{workspace_guid}/models/{name}/versions/{version}"


def live_now(tags: dict[str, str] | None, now: datetime | None = None, since: str = "") -> dict[str, str]:
    """The tags with `live-since` set to now (or to `since`, the time of a model that served before and serves
    again): the time the model now serving took the traffic (what the reaper ages)."""
    return {**(tags or {}), LIVE_SINCE: since or (now or datetime.now(UTC)).isoformat(timespec="seconds")}


def with_full_traffic(endpoint: ManagedOnlineEndpoint, deployment_name: str, now: datetime | None = None,
                      since: str = "") -> ManagedOnlineEndpoint:
    """SEED.md: live traffic must be 100 % on the deployment, or it cannot be tested. The `live-since` tag
    is what the reaper ages: the time the model now serving took the traffic."""
    endpoint.traffic = {deployment_name: 100}
    endpoint.tags = live_now(endpoint.tags, now, since)
    return endpoint
