"""Azure endpoint and deployment stage logic through the real MLClient, whose transport answers from an
in-memory Resource Manager: the SDK's own long-running-operation polling runs for real, offline."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime, timedelta

import pytest
from azure.ai.ml import MLClient

from phi3_pipeline.config.errors import PipelineError
from phi3_pipeline.targets.azure import online
from phi3_pipeline.targets.azure.entities import LEASE_UNTIL, deployment_lease, resource_tags
from tests.azure_fakes import AZURE, WORKSPACE, request_json

warnings.filterwarnings("ignore", message=".*experimental")
MODEL = f"{WORKSPACE}/models/phi3-custom/versions/1"
SIZE = "Standard_NC24ads_A100_v4"
TAGS = resource_tags("run-1")


def deploy(ml_client: MLClient) -> dict[str, int]:
    online.ensure_endpoint(ml_client, AZURE, "phi3-ep", TAGS)
    online.ensure_deployment(ml_client, AZURE, SIZE, "phi3-ep", "phi3-custom-v1", MODEL, TAGS)
    return online.route_all_traffic(ml_client, "phi3-ep", "phi3-custom-v1")[1]


def test_deploy_creates_endpoint_and_deployment_and_puts_all_traffic_on_it(cloud, arm):
    ml_client, transport = cloud
    assert deploy(ml_client) == {"phi3-custom-v1": 100}
    endpoint = arm.resources[f"{WORKSPACE}/onlineEndpoints/phi3-ep"]
    assert endpoint["properties"]["authMode"] == "Key" and endpoint["tags"]["managed-by"] == "phi3-pipeline"
    deployment = arm.resources[f"{WORKSPACE}/onlineEndpoints/phi3-ep/deployments/phi3-custom-v1"]
    assert deployment["properties"]["instanceType"] == SIZE
    assert deployment["sku"]["capacity"] == 1
    assert deployment["properties"]["model"] == MODEL
    assert transport.calls("GET", "/operations/"), "the SDK polled the long-running operations"


def test_a_rerun_reuses_everything_and_never_recreates_the_endpoint(cloud):
    ml_client, transport = cloud
    deploy(ml_client)
    writes_before = len(transport.calls("PUT"))
    assert deploy(ml_client) == {"phi3-custom-v1": 100}
    assert len(transport.calls("PUT")) == writes_before
    assert transport.calls("DELETE") == []


def test_traffic_moves_to_a_new_deployment(cloud):
    ml_client, transport = cloud
    deploy(ml_client)
    online.ensure_deployment(ml_client, AZURE, SIZE, "phi3-ep", "phi3-custom-v2", MODEL.replace("/1", "/2"), TAGS)
    assert online.route_all_traffic(ml_client, "phi3-ep", "phi3-custom-v2") == (["phi3-custom-v1"],
                                                                                  {"phi3-custom-v2": 100})
    endpoint_writes = [r for r in transport.calls("PUT", "/onlineEndpoints/phi3-ep") if "/deployments/" not in r.url]
    traffic_writes = [request_json(r)["properties"]["traffic"] for r in endpoint_writes]
    assert traffic_writes[-1] == {"phi3-custom-v2": 100}


def test_a_failed_deployment_stops_with_the_services_message_and_where_the_logs_are(cloud, arm):
    ml_client, _ = cloud
    online.ensure_endpoint(ml_client, AZURE, "phi3-ep", TAGS)
    arm.fail_provisioning("/deployments/phi3-custom-v1", "Liveness probe failed: model still loading")
    with pytest.raises(PipelineError, match="Liveness probe failed.*get-logs -n phi3-custom-v1 -e phi3-ep"):
        online.ensure_deployment(ml_client, AZURE, SIZE, "phi3-ep", "phi3-custom-v1", MODEL, TAGS)


def test_throttled_and_unavailable_calls_are_retried(cloud, arm):
    ml_client, transport = cloud
    arm.inject("PUT", "/onlineEndpoints/phi3-ep", (429, {"error": {"code": "TooManyRequests"}}, {"Retry-After": "0"}))
    arm.inject("PUT", "/deployments/phi3-custom-v1", (503, {"error": {"code": "ServiceUnavailable"}}))
    assert deploy(ml_client) == {"phi3-custom-v1": 100}
    assert len([r for r in transport.calls("PUT", "/onlineEndpoints/phi3-ep") if "/deployments/" not in r.url]) >= 2


def test_the_key_is_read_when_used(cloud):
    ml_client, transport = cloud
    deploy(ml_client)
    assert online.endpoint_key(ml_client, "phi3-ep") == "primary-key-1"
    assert transport.calls("POST", "/onlineEndpoints/phi3-ep/listKeys")


def test_teardown_deletes_the_endpoint_and_a_second_one_finds_it_gone(cloud, arm):
    ml_client, _ = cloud
    deploy(ml_client)
    assert online.delete_endpoint(ml_client, "phi3-ep") is True
    assert f"{WORKSPACE}/onlineEndpoints/phi3-ep" not in arm.resources
    assert online.delete_endpoint(ml_client, "phi3-ep") is False


def leased(run: str, minutes_ago: int = 0) -> dict[str, str]:
    """A run's tags on its deployment, its lease taken `minutes_ago` (a 240-minute lease)."""
    return {**TAGS, **deployment_lease(run, 240, now=datetime.now(UTC) - timedelta(minutes=minutes_ago))}


def test_going_live_removes_what_it_replaced_and_ended_leases_but_not_another_runs_candidate(cloud):
    """Two machines share one endpoint: a run going live never deletes another run's candidate under lease."""
    ml_client, _ = cloud
    online.ensure_endpoint(ml_client, AZURE, "phi3-ep", TAGS)
    for name, tags in (("served", leased("run-1", minutes_ago=5)), ("other-candidate", leased("run-2")),
                       ("killed-candidate", leased("run-3", minutes_ago=300)), ("before-leases", TAGS),
                       ("mine-earlier", leased("run-5", minutes_ago=300)), ("mine", leased("run-5"))):
        online.ensure_deployment(ml_client, AZURE, SIZE, "phi3-ep", name, MODEL, tags)
    online.route_all_traffic(ml_client, "phi3-ep", "served")
    superseded, _ = online.route_all_traffic(ml_client, "phi3-ep", "mine")
    removed, kept = online.remove_other_deployments(ml_client, "phi3-ep", "mine", "run-5",
                                                    superseded=tuple(superseded))
    assert sorted(removed) == ["before-leases", "killed-candidate", "mine-earlier", "served"]
    assert kept == ["other-candidate"]
    assert sorted(d.name for d in ml_client.online_deployments.list("phi3-ep")) == ["mine", "other-candidate"]


def test_a_failed_run_removes_only_its_own_deployments_leased_or_not(cloud):
    ml_client, _ = cloud
    online.ensure_endpoint(ml_client, AZURE, "phi3-ep", TAGS)
    for name, tags in (("other", leased("run-2", minutes_ago=300)), ("mine", leased("run-5"))):
        online.ensure_deployment(ml_client, AZURE, SIZE, "phi3-ep", name, MODEL, tags)
    assert online.remove_other_deployments(ml_client, "phi3-ep", None, "run-5", only_own=True) == (["mine"],
                                                                                                    ["other"])


def test_a_run_that_adopts_a_killed_runs_candidate_renews_its_lease_and_a_live_one_is_left_as_it_is(cloud):
    ml_client, transport = cloud
    online.ensure_endpoint(ml_client, AZURE, "phi3-ep", TAGS)
    online.ensure_deployment(ml_client, AZURE, SIZE, "phi3-ep", "phi3-custom-v1", MODEL, leased("run-1", 300))
    mine = leased("run-2")
    deployment, created = online.ensure_deployment(ml_client, AZURE, SIZE, "phi3-ep", "phi3-custom-v1", MODEL, mine,
                                                   claim=True)
    assert not created and deployment.tags["pipeline-run"] == "run-2"
    assert deployment.tags[LEASE_UNTIL] == mine[LEASE_UNTIL]
    writes = len(transport.calls("PUT"))
    online.ensure_deployment(ml_client, AZURE, SIZE, "phi3-ep", "phi3-custom-v1", MODEL, leased("run-3"))
    online.ensure_deployment(ml_client, AZURE, SIZE, "phi3-ep", "phi3-custom-v1", MODEL, leased("run-2"), claim=True)
    assert len(transport.calls("PUT")) == writes, "a live deployment, or one already this run's, is not rewritten"


def test_removing_deployments_of_an_endpoint_that_was_never_made_removes_nothing(cloud):
    ml_client, _ = cloud
    assert online.remove_other_deployments(ml_client, "never-made", None, "run-1") == ([], [])
