"""The managed online endpoint and deployment on Azure: get-or-create, traffic at 100 %, teardown.

The endpoint is never deleted and re-created by a run (that would reset its traffic and its
scoring URI); a deployment is created once per model version and waited on through the SDK's
long-running-operation poller. Keys are read when used and never returned from here but by
`endpoint_key`, for the target's own use.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from azure.ai.ml import MLClient
from azure.ai.ml.entities import ManagedOnlineDeployment, ManagedOnlineEndpoint
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from phi3_pipeline.config.errors import ConfigError, PipelineError
from phi3_pipeline.config.settings import AzureSettings
from phi3_pipeline.targets.azure.clients import found, get_or_create, when_not_busy
from phi3_pipeline.targets.azure.entities import (
    ENDPOINT_AUTH_MODES,
    LEASE_UNTIL,
    LIVE_SINCE,
    made_here,
    online_deployment,
    online_endpoint,
    with_full_traffic,
)

SUCCEEDED = "succeeded"


def succeeded(resource) -> bool:
    return str(resource.provisioning_state).lower().endswith(SUCCEEDED)


def ensure_endpoint(ml_client: MLClient, azure: AzureSettings, name: str, tags: dict[str, str],
                    user_assigned_identity: bool = True) -> tuple[ManagedOnlineEndpoint, bool]:
    """The endpoint of that name, created (`azure.endpoint_auth`, the pipeline's identity, else a system-assigned
    one) only if it does not exist; (endpoint, created). One that takes other callers than `azure.endpoint_auth`
    says is refused: its deployments would be scored the wrong way."""
    endpoints = ml_client.online_endpoints
    endpoint, created = get_or_create(lambda: endpoints.get(name), lambda: endpoints.begin_create_or_update(
        online_endpoint(azure, name, tags, user_assigned_identity)).result())
    wanted = ENDPOINT_AUTH_MODES[azure.endpoint_auth]
    if str(endpoint.auth_mode).lower() != wanted:
        raise ConfigError(f"endpoint {name} takes auth mode {endpoint.auth_mode}, but azure.endpoint_auth="
                          f"{azure.endpoint_auth} asks for {wanted}: set azure.endpoint_auth back, or remove the "
                          "endpoint first (python -m flows.teardown) so that the next run makes it anew")
    return endpoint, created


def ensure_deployment(ml_client: MLClient, azure: AzureSettings, vm_size: str, endpoint_name: str,
                      deployment_name: str, model_id: str, tags: dict[str, str],
                      claim: bool = False) -> tuple[ManagedOnlineDeployment, bool]:
    """The deployment of that name if it provisioned (with `claim`, re-tagged as this run's candidate: a resumed
    run renews a killed run's lease); else create it and wait (a failure says where to look)."""
    try:
        existing = ml_client.online_deployments.get(deployment_name, endpoint_name)
        if succeeded(existing):
            if claim and (existing.tags or {}).get("pipeline-run") != tags["pipeline-run"]:
                existing.tags = {**(existing.tags or {}), "pipeline-run": tags["pipeline-run"],
                                 LEASE_UNTIL: tags[LEASE_UNTIL]}
                existing = ml_client.online_deployments.begin_create_or_update(existing).result()
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


def route_all_traffic(ml_client: MLClient, endpoint_name: str, deployment_name: str,
                      since: str = "") -> tuple[list[str], dict]:
    """Put 100 % of live traffic on the deployment (`live-since` now, or `since`), then read it back (at 0 % it
    cannot be tested); (the deployments that served until now, the traffic now)."""
    endpoint = ml_client.online_endpoints.get(endpoint_name)
    superseded = [name for name in live_traffic(endpoint) if name != deployment_name]
    if (endpoint.traffic or {}).get(deployment_name) != 100:
        ml_client.online_endpoints.begin_create_or_update(with_full_traffic(endpoint, deployment_name,
                                                                            since=since)).result()
    traffic = live_traffic(ml_client.online_endpoints.get(endpoint_name))
    if traffic.get(deployment_name) != 100:
        raise PipelineError(f"endpoint {endpoint_name} reports traffic {traffic}, not 100 % on {deployment_name}")
    return superseded, traffic


def remove_other_deployments(ml_client: MLClient, endpoint_name: str, keep: str | None, run_id: str,
                             only_own: bool = False, superseded: tuple[str, ...] = (),
                             now: datetime | None = None) -> tuple[list[str], list[str]]:
    """Delete the endpoint's deployments other than `keep` (they take no traffic but bill by the hour): this
    run's, those `keep` has just replaced, and those whose lease has run out (a killed run's candidate, or one
    from before leases); with `only_own`, only this run's. Another run's leased candidate stays, whichever
    machine that run is on, and so does one that takes traffic (Azure refuses to delete it). (removed, kept)."""
    removed, kept = [], []
    try:
        routed = live_traffic(ml_client.online_endpoints.get(endpoint_name))
        deployments = list(ml_client.online_deployments.list(endpoint_name))
    except ResourceNotFoundError:  # no endpoint yet: nothing to remove
        return removed, kept
    for deployment in deployments:
        if deployment.name == keep:
            continue
        if deployment.name not in routed and removable(deployment, run_id, only_own, superseded, now):
            when_not_busy(f"deployment {deployment.name} of {endpoint_name}", lambda name=deployment.name: found(
                lambda: ml_client.online_deployments.begin_delete(name, endpoint_name).result()))  # 404: gone
            removed.append(deployment.name)
        else:
            kept.append(deployment.name)
    return removed, kept


def removable(candidate, run_id: str, only_own: bool, superseded: tuple[str, ...] = (),
              now: datetime | None = None) -> bool:
    """Whether a model's deployment (or serverless endpoint) that is not to be kept may go: this run's; or, unless
    `only_own`, one just replaced or one whose lease has run out (a killed run's, or one from before leases)."""
    tags = candidate.tags or {}
    leased = (tag_time(tags.get(LEASE_UNTIL)) or datetime.min.replace(tzinfo=UTC)) > (now or datetime.now(UTC))
    return tags.get("pipeline-run") == run_id or not only_own and (candidate.name in superseded or not leased)


def endpoint_key(ml_client: MLClient, endpoint_name: str) -> str:
    return ml_client.online_endpoints.get_keys(endpoint_name).primary_key


def delete_endpoint(ml_client: MLClient, endpoint_name: str) -> bool:
    """Delete the endpoint with its deployments (what costs money); False if it was already gone
    (Resource Manager answers a delete of a missing resource with success, so look first)."""
    endpoints = ml_client.online_endpoints
    return when_not_busy(f"endpoint {endpoint_name}", lambda: found(lambda: (
        endpoints.get(endpoint_name), endpoints.begin_delete(endpoint_name).result())))


def tag_time(value: str | None) -> datetime | None:
    try:
        moment = datetime.fromisoformat(value) if value else None
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment and moment.tzinfo is None else moment


def managed_endpoints(ml_client: MLClient) -> list[ManagedOnlineEndpoint]:
    """The workspace's endpoints that this project made (its `managed-by` tag)."""
    return [e for e in ml_client.online_endpoints.list() if made_here(e.tags)]


def expired(endpoint: ManagedOnlineEndpoint, older_than_hours: float) -> bool:
    """Whether its model has served (or, never routed, the endpoint has existed) longer than the limit; an
    endpoint without a readable time is left alone."""
    tags = endpoint.tags or {}
    since = tag_time(tags.get(LIVE_SINCE) or tags.get("created-at"))
    return since is not None and since < datetime.now(UTC) - timedelta(hours=older_than_hours)


def remove_ended_candidates(ml_client: MLClient, endpoint: ManagedOnlineEndpoint) -> list[str]:
    """The reaper's part for an endpoint it keeps: candidates whose lease has ended (a killed run's) go; an
    endpoint whose traffic is split by hand is left alone."""
    live = list(live_traffic(endpoint))
    if len(live) > 1:
        return []
    return remove_other_deployments(ml_client, endpoint.name, live[0] if live else None, run_id="")[0]
