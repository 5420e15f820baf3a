"""Azure endpoint and deployment stage logic through the real MLClient, whose transport answers from an
in-memory Resource Manager: the SDK's own long-running-operation polling runs for real, offline."""

from __future__ import annotations

import warnings

import pytest
from azure.ai.ml import MLClient

from pipeline.errors import PipelineError
from targets.azure import online
from targets.azure.entities import resource_tags
from tests.azure_fakes import AZURE, WORKSPACE, request_json

warnings.filterwarnings("ignore", message=".*experimental")
MODEL = f"{WORKSPACE}/models/phi3-custom/versions/1"
SIZE = "Standard_NC24ads_A100_v4"
TAGS = resource_tags("run-1")


def deploy(ml_client: MLClient) -> dict[str, int]:
    online.ensure_endpoint(ml_client, AZURE, "phi3-ep", TAGS)
    online.ensure_deployment(ml_client, AZURE, SIZE, "phi3-ep", "phi3-custom-v1", MODEL, TAGS)
    return online.route_all_traffic(ml_client, "phi3-ep", "phi3-custom-v1")


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
    assert online.route_all_traffic(ml_client, "phi3-ep", "phi3-custom-v2") == {"phi3-custom-v2": 100}
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
