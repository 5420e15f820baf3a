"""The in-memory Resource Manager held against recorded live answers, and recorded answers fed through the stage
code. The fixtures in tests/fixtures/recorded/ are trimmed from the Azure SDK's own recorded end-to-end tests
(Azure/azure-sdk-assets, python/sdk/ml/azure-ai-ml/tests/recordings/; each file names its source and commit)
and, where no recording exists (usages, vmSizes), from the REST spec examples."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest

from phi3_pipeline.targets.azure import assets, finetune, foundry, online, quota
from phi3_pipeline.targets.azure.entities import finetune_job, resource_tags
from tests.azure_fakes import AZURE, SUB, WORKSPACE, WORKSPACES, FakeArm, offline_ml_client

warnings.filterwarnings("ignore", message=".*experimental")
RECORDED = Path(__file__).parent / "fixtures" / "recorded"
TAGS = resource_tags("run-1")
LRO_HEADERS = {"azure-asyncoperation", "location", "retry-after", "x-ms-async-operation-timeout"}
PLACEHOLDERS = {"{sub}": SUB, "{rg}": "rg", "{ws}": "ws", "{loc}": "eastus2", "{wsguid}": "g", "{op}": "op1",
                "{ep}": "ep-recorded", "{dep}": "deploy-v1", "{c}": AZURE.compute_name, "{name}": "phi3-custom",
                "{job}": "phi3-custom-ft-recorded", "/versions/3": "/versions/1", "{project}": "phi3-pipeline-project"}
# Differences between the fake and the recordings that the SDK does not act on, kept on purpose:
# - the fake's operation URLs are its own (…/operations/opN), the service's are per-RP (mfeOperationsStatus,
#   computeOperationsStatus);
# - an endpoint DELETE's Location is the fake's operation URL, the service's an mfeOperationResults URL (the
#   SDK polls Azure-AsyncOperation and does no final GET for a delete);
# - bodies carry only the fields the SDK reads (no systemData, swaggerUri, egressPublicNetworkAccess, ...).
# Fixed from them: a model name with no versions answers 404 (not an empty list), a connection PUT answers 200
# without echoing its secrets, job and model PUTs answer 201 with only Location, endpoint and deployment PUTs
# point Location at the resource with a 30-minute operation time-out and no Retry-After, a compute PUT has only
# Azure-AsyncOperation.


def recording(name: str) -> dict:
    return json.loads((RECORDED / f"{name}.json").read_text())


def entry(name: str, method: str, path_end: str, nth: int = 0) -> dict:
    found = [e for e in recording(name)["entries"]
             if e["method"] == method and e["path"].split("?")[0].endswith(path_end)]
    return found[nth]


def our_answer(transport, method: str, path_end: str, nth: int = 0) -> tuple[int, dict, dict]:
    found = [(status, headers, body) for request, status, headers, body in transport.answers
             if request.method == method and request.url.split("?")[0].endswith(path_end)]
    return found[nth]


def lro_headers(headers: dict) -> set[str]:
    return {name.lower() for name in headers} & LRO_HEADERS


@pytest.fixture
def driven(cloud, arm):
    """The stage code run once against the fake: endpoint, deployment, traffic, keys, cluster, connection,
    model, then deletes; the transport keeps every answer."""
    ml_client, transport = cloud
    online.ensure_endpoint(ml_client, AZURE, "ep-recorded", TAGS)
    online.ensure_deployment(ml_client, AZURE, "Standard_NC24ads_A100_v4", "ep-recorded", "deploy-v1",
                             f"{WORKSPACE}/models/phi3-custom/versions/1", TAGS)
    online.route_all_traffic(ml_client, "ep-recorded", "deploy-v1")
    online.endpoint_key(ml_client, "ep-recorded")
    assets.ensure_cluster(ml_client, AZURE, "Standard_NC24ads_A100_v4", TAGS)
    foundry.upsert_custom_connection(ml_client, "phi3-custom", "https://x/score", "secret-key", "input_data", TAGS,
                                     owner="ep-recorded")
    finetune.submit(ml_client, finetune_job(AZURE.compute_name, "azureml://registries/azureml/models/Phi-4/versions/8",
                                            {}, "phi3-custom-ft-recorded", "azureml:t:1", "azureml:v:1",
                                            "phi3-custom", TAGS))
    assets.adopt_job_model(ml_client, "phi3-custom", "phi3-custom-ft-recorded", {}, TAGS)
    online.delete_endpoint(ml_client, "ep-recorded")
    assets.delete_idle_cluster(ml_client, AZURE.compute_name, other_jobs=[])
    project = f"{WORKSPACES}/phi3-pipeline-project"
    arm.resources[project] = {"id": project, "name": "phi3-pipeline-project", "location": "eastus2", "kind": "project",
                              "properties": {"hubResourceId": f"{WORKSPACES}/phi3-pipeline-hub"}}
    ml_client.workspaces.begin_delete("phi3-pipeline-project", delete_dependent_resources=False,
                                      permanently_delete=True).result()
    return transport


@pytest.mark.parametrize(("name", "method", "path_end", "nth", "ours_nth"), [
    ("online_endpoint_deployment", "PUT", "/onlineEndpoints/{ep}", 0, 0),
    ("online_endpoint_deployment", "PUT", "/deployments/{dep}", 0, 0),
    ("online_endpoint_deployment", "PUT", "/onlineEndpoints/{ep}", 1, 1),  # the traffic update: 201 again
    ("online_endpoint_deployment", "POST", "/listKeys", 0, 0),
    ("online_endpoint_deployment", "DELETE", "/onlineEndpoints/{ep}", 0, 0),
    ("compute_amlcompute", "PUT", "/computes/{c}", 0, 0),
    ("compute_amlcompute", "DELETE", "/computes/{c}", 0, 0),
    ("connection_crud", "PUT", "/connections/{name}", 0, 0),
    ("model_crud", "PUT", "/versions/3", 0, 0),
    ("jobs", "PUT", "/jobs/{job}", 0, 0),
    ("workspace_delete", "DELETE", "/workspaces/{project}", 0, 0),
])
def test_the_fake_answers_with_the_recorded_status_and_long_running_operation_headers(driven, name, method,
                                                                                     path_end, nth, ours_nth):
    recorded = entry(name, method, path_end, nth)
    ours_end = path_end
    for placeholder, value in PLACEHOLDERS.items():
        ours_end = ours_end.replace(placeholder, value)
    status, headers, body = our_answer(driven, method, ours_end, ours_nth)
    assert status == recorded["status"]
    assert lro_headers(headers) == lro_headers(recorded.get("headers") or {})
    recorded_body = recorded.get("body")
    if isinstance(recorded_body, dict) and "properties" in recorded_body:
        read_by_sdk = {"provisioningState", "scoringUri", "traffic", "authMode", "credentials", "modelType",
                       "modelUri", "computeType"}
        assert read_by_sdk & set(recorded_body["properties"]) <= set(body["properties"])
        if "credentials" in recorded_body["properties"]:
            assert body["properties"]["credentials"] is None, "a connection's secrets are never echoed"


def test_a_model_name_with_no_versions_is_a_404_as_recorded(cloud):
    ml_client, transport = cloud
    assets.adopt_job_model(ml_client, "phi3-custom", "phi3-custom-ft-recorded", {}, TAGS)
    recorded = entry("model_crud", "GET", "/models/{name}/versions")
    listed = next(status for request, status, _, _ in transport.answers
                  if request.method == "GET" and request.url.split("?")[0].endswith("/models/phi3-custom/versions"))
    assert listed == recorded["status"] == 404


def replay(name: str):
    """A handler answering from a recording, in its order: a request that is the next recorded one gets the
    recorded answer; any other read is answered by an empty workspace (the workspace itself, else 404: not
    there yet), any other write is an error."""
    entries = list(recording(name)["entries"])
    answered: list[dict] = []
    empty_workspace = FakeArm(WORKSPACE)

    def fill(text: str) -> str:
        for placeholder, value in PLACEHOLDERS.items():
            text = text.replace(placeholder, value)
        return text

    def handler(request):
        path = request.url.split("?")[0].removeprefix(FakeArm.BASE)
        recorded = entries[0] if entries else None
        polling = recorded is not None and recorded["path"].startswith("<") and "Status/" in path
        if recorded is None or recorded["method"] != request.method or not (
                polling or path == fill(recorded["path"].split("?")[0])):
            if request.method == "GET":
                return empty_workspace(request)
            return 500, {"error": {"code": "NotRecorded", "message": f"{request.method} {path} is not the next "
                                                                     "recorded request"}}
        entries.pop(0)
        body = recorded.get("body")
        if isinstance(body, str) and body.startswith("<same as"):
            body = answered[-1]
        headers = {k: fill(v) for k, v in (recorded.get("headers") or {}).items() if k != "Content-Length"}
        body = json.loads(fill(json.dumps(body))) if body else {}
        answered.append(body)
        return recorded["status"], body, headers

    return handler


def test_a_recorded_endpoint_creation_runs_through_the_stage_code():
    ml_client, transport = offline_ml_client(replay("online_endpoint_deployment"))
    endpoint, created = online.ensure_endpoint(ml_client, AZURE, "ep-recorded", TAGS)
    assert created and endpoint.provisioning_state == "Succeeded"
    assert re.fullmatch(r"https://.+\.inference\.ml\.azure\.com/score", endpoint.scoring_uri)
    assert [r.method for r in transport.requests].count("GET") >= 3, "404, the operation polls, the final GET"


def test_a_recorded_cluster_creation_runs_through_the_stage_code():
    ml_client, _ = offline_ml_client(replay("compute_amlcompute"))
    cluster, created = assets.ensure_cluster(ml_client, AZURE, "Standard_NC24ads_A100_v4", TAGS)
    assert created and cluster.provisioning_state == "Succeeded"


def test_a_recorded_connection_upsert_and_first_model_registration_run_through_the_stage_code():
    ml_client, _ = offline_ml_client(replay("connection_crud"))
    foundry.upsert_custom_connection(ml_client, "phi3-custom", "https://x/score", "secret-key", "input_data", TAGS,
                                     owner="ep-recorded")
    ml_client, transport = offline_ml_client(replay("model_crud"))
    model, created = assets.adopt_job_model(ml_client, "phi3-custom", "phi3-custom-ft-recorded", {}, TAGS)
    assert created, "the recorded 404 on a new name means: no version yet, register one"


def test_the_usages_example_of_the_rest_spec_is_read_by_family_and_regional_total():
    body = recording("usages_vmsizes_spec_examples")["usages_excerpt"]
    ml_client, _ = offline_ml_client(lambda request: (200, json.loads(json.dumps(body).replace("{sub}", SUB))))
    families, total = quota.usage_rows(ml_client, "eastus")
    assert families["standardncfamily"].free == 12, "the subscription row, not the workspace's (free 18)"
    assert (total.used, total.limit) == (14, 24)
    assert not any("lowpriority" in name for name in families)
