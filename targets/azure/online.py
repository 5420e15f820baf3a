"""The managed online endpoint and deployment on Azure: get-or-create, traffic at 100 %, teardown.

The endpoint is never deleted and re-created by a run (that would reset its traffic and its
scoring URI); a deployment is created once per model version and waited on through the SDK's
long-running-operation poller. Keys are read when used and never returned from here but by
`endpoint_key`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from azure.ai.ml import MLClient
from azure.ai.ml.entities import ManagedOnlineDeployment, ManagedOnlineEndpoint
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from pipeline.config import AzureSettings
from pipeline.errors import PipelineError
from targets.azure.clients import found, get_or_create
from targets.azure.entities import LIVE_SINCE, MANAGED_BY, online_deployment, online_endpoint, with_full_traffic

SUCCEEDED = "succeeded"


def _succeeded(resource) -> bool:
    return str(resource.provisioning_state).lower().endswith(SUCCEEDED)


def ensure_endpoint(ml_client: MLClient, azure: AzureSettings, name: str, tags: dict[str, str],
                    user_assigned_identity: bool = True) -> tuple[ManagedOnlineEndpoint, bool]:
    """The endpoint of that name, created (key auth, the pipeline's identity, else a system-assigned one) only
    if it does not exist; (endpoint, created)."""
    endpoints = ml_client.online_endpoints
    return get_or_create(lambda: endpoints.get(name), lambda: endpoints.begin_create_or_update(
        online_endpoint(azure, name, tags, user_assigned_identity)).result())


def ensure_deployment(ml_client: MLClient, azure: AzureSettings, vm_size: str, endpoint_name: str,
                      deployment_name: str, model_id: str,
                      tags: dict[str, str]) -> tuple[ManagedOnlineDeployment, bool]:
    """The deployment of that name if it provisioned; else create it and wait (a failure says where to look)."""
    try:
        existing = ml_client.online_deployments.get(deployment_name, endpoint_name)
        if _succeeded(existing):
            return existing, False
    except ResourceNotFoundError:
        pass
    entity = online_deployment(azure, vm_size, endpoint_name, deployment_name, model_id, tags)
    try:
        deployment = ml_client.online_deployments.begin_create_or_update(entity).result()
    except HttpResponseError as error:
        if error.status_code in (408, 409, 429) or (error.status_code or 0) >= 500:
            raise  # may pass (409: an earlier run's deployment still provisioning): the stage is retried
        raise PipelineError(
            f"deployment {deployment_name} on {endpoint_name} failed: {error.message}. Its logs: "
            f"az ml online-deployment get-logs -n {deployment_name} -e {endpoint_name}"
        ) from None
    return deployment, True


def live_traffic(endpoint: ManagedOnlineEndpoint) -> dict[str, int]:
    """The endpoint's traffic split; `get` lists every deployment, those without traffic at 0: leave those out."""
    return {name: share for name, share in (endpoint.traffic or {}).items() if share}


def route_all_traffic(ml_client: MLClient, endpoint_name: str, deployment_name: str) -> dict[str, int]:
    """Put 100 % of live traffic on the deployment, then read it back (at 0 % it cannot be tested)."""
    endpoint = ml_client.online_endpoints.get(endpoint_name)
    if (endpoint.traffic or {}).get(deployment_name) != 100:
        ml_client.online_endpoints.begin_create_or_update(with_full_traffic(endpoint, deployment_name)).result()
    traffic = live_traffic(ml_client.online_endpoints.get(endpoint_name))
    if traffic.get(deployment_name) != 100:
        raise PipelineError(f"endpoint {endpoint_name} reports traffic {traffic}, not 100 % on {deployment_name}")
    return traffic


def remove_other_deployments(ml_client: MLClient, endpoint_name: str, keep: str,
                             made_by: str | None = None) -> list[str]:
    """Delete the endpoint's deployments other than `keep` (they take no traffic but bill by the hour); with
    `made_by`, only those that pipeline run made (its `pipeline-run` tag)."""
    others = [d.name for d in ml_client.online_deployments.list(endpoint_name) if d.name != keep
              and made_by in (None, (d.tags or {}).get("pipeline-run"))]
    for name in others:
        ml_client.online_deployments.begin_delete(name, endpoint_name).result()
    return others


def endpoint_key(ml_client: MLClient, endpoint_name: str) -> str:
    return ml_client.online_endpoints.get_keys(endpoint_name).primary_key


def delete_endpoint(ml_client: MLClient, endpoint_name: str) -> bool:
    """Delete the endpoint with its deployments (what costs money); False if it was already gone
    (Resource Manager answers a delete of a missing resource with success, so look first)."""
    return found(lambda: (ml_client.online_endpoints.get(endpoint_name),
                          ml_client.online_endpoints.begin_delete(endpoint_name).result()))


def _tag_time(value: str | None) -> datetime | None:
    try:
        moment = datetime.fromisoformat(value) if value else None
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment and moment.tzinfo is None else moment


def expired_endpoints(ml_client: MLClient, older_than_hours: float) -> list[str]:
    """Endpoints tagged as made by this project whose model has served (or, never routed, whose endpoint has
    existed) longer than the limit; an endpoint without a readable time is left alone."""
    cutoff = datetime.now(UTC) - timedelta(hours=older_than_hours)
    expired = []
    for endpoint in ml_client.online_endpoints.list():
        tags = endpoint.tags or {}
        since = _tag_time(tags.get(LIVE_SINCE) or tags.get("created-at"))
        if tags.get("managed-by") == MANAGED_BY and since is not None and since < cutoff:
            expired.append(endpoint.name)
    return expired
