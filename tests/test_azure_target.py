"""The whole pipeline on the Azure target, offline: the real SDK clients against the in-memory Resource
Manager (tests/azure_fakes.py), a 127.0.0.1 stand-in for the endpoint's scoring URI, real Prefect and
Prompt flow. Checks what a subscription would end up holding, and that a re-run creates nothing."""

from __future__ import annotations

import json
import warnings
from datetime import UTC, datetime, timedelta

import pytest
import requests
from azure.identity import CredentialUnavailableError

from phi3_pipeline.chat_flow import promptflow_chat
from phi3_pipeline.cli.commands import run_chat_cli, run_pipeline_cli
from phi3_pipeline.config.errors import ConfigError, JobFailedError, PipelineError, TransientError
from phi3_pipeline.config.settings import PipelineSettings
from phi3_pipeline.targets.azure import clients
from phi3_pipeline.targets.azure.target import AzureTarget
from tests.azure_fakes import (
    AZURE,
    SIGNED_IN_OBJECT_ID,
    ENDPOINT_KEY,
    GROUP,
    REGISTRY,
    WORKSPACE,
    WORKSPACES,
    FakeArm,
    phi4_entry,
    puts,
    request_json,
    scoring_stub,
    vcpu_usages,
)

warnings.filterwarnings("ignore", message=".*experimental")
ANSWER = "Microsoft was founded by Bill Gates and Paul Allen."
AZURE_ARGS = ["--target", "azure", "--azure.subscription_id", AZURE.subscription_id, "--azure.resource_group", "rg",
              "--azure.workspace_name", "ws", "--azure.location", "eastus2"]


@pytest.fixture
def settings(azure_settings) -> PipelineSettings:
    return azure_settings


@pytest.fixture
def scoring(azure_cloud):
    """(requests the endpoint answered, refusals) of a 127.0.0.1 stand-in for the endpoint's scoring URI."""
    with scoring_stub(ANSWER) as (scoring_uri, answered, refusals):
        azure_cloud.arm.scoring_uri = scoring_uri
        azure_cloud.arm.job_states = ["Queued", "Running", "Completed"]
        yield answered, refusals


@pytest.fixture
def endpoint(scoring):
    return scoring[0]


def test_the_pipeline_does_every_step_in_azure_and_a_rerun_creates_nothing(prefect_api, settings,
                                                                            azure_cloud, endpoint):
    from flows.full_pipeline import full_pipeline

    arm, transport = azure_cloud.arm, azure_cloud.transport
    result = full_pipeline(settings)
    assert result["answer"] == ANSWER and result["model_version"] == 1
    assert ENDPOINT_KEY not in json.dumps(result)

    identity = arm.resources[f"{GROUP}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/"
                             "phi3-pipeline-identity"]
    assert identity["tags"]["managed-by"] == "phi3-pipeline" and identity["tags"]["pipeline-run"] != "cli"
    grants = sorted((path.split("/providers/Microsoft.Authorization")[0].rsplit("/", 1)[-1],
                     body["properties"]["roleDefinitionId"].rsplit("/", 1)[-1],
                     "you" if body["properties"]["principalId"] == SIGNED_IN_OBJECT_ID else "identity")
                    for path, body in arm.resources.items() if "/roleAssignments/" in path)
    assert grants == [("ws", "azureml-metrics-writer-(preview)", "identity"), ("wsregistry", "acrpull", "identity"),
                      ("wsstorage", "storage-blob-data-contributor", "you"),
                      ("wsstorage", "storage-blob-data-reader", "identity")], "the lease's role is the signed-in user's"
    assert sorted(name for _, name, _ in azure_cloud.uploads) == ["phi3-custom-test", "phi3-custom-train"]
    compute = arm.resources[f"{WORKSPACE}/computes/phi-ft-cluster"]
    cluster = compute["properties"]["properties"]
    assert cluster["vmSize"] == "Standard_NC24ads_A100_v4" and cluster["scaleSettings"]["maxNodeCount"] == 1
    uai = f"{GROUP}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/phi3-pipeline-identity"
    (job_put,) = transport.calls("PUT", "/jobs/")
    assert job_put.url.split("?")[0].endswith(result["job"])
    details = request_json(job_put)["properties"]["fineTuningDetails"]
    assert details["model"]["uri"] == "azureml://registries/azureml/models/Phi-4/versions/8", "version-pinned"
    assert details["hyperParameters"] == {"learning_rate": "5e-6", "lr_scheduler_type": "cosine",
                                          "num_train_epochs": "1", "per_device_train_batch_size": "1"}
    assert puts(transport, "/models/") == [f"{FakeArm.BASE}{WORKSPACE}/models/phi3-custom/versions/1"], \
        "the service's own registration is adopted and only tagged: no second version"
    model_tags = arm.resources[f"{WORKSPACE}/models/phi3-custom/versions/1"]["properties"]["tags"]
    assert model_tags["job"] == result["job"] and model_tags["base-model"].endswith("/Phi-4/versions/8")
    endpoint_path = next(p for p in arm.resources if "/onlineEndpoints/" in p and "/deployments/" not in p)
    assert arm.resources[endpoint_path]["properties"]["traffic"] == {"deploy-v1": 100}
    assert list(arm.resources[endpoint_path]["identity"]["userAssignedIdentities"]) == [uai]
    deployment = arm.resources[endpoint_path + "/deployments/deploy-v1"]["properties"]
    assert deployment["instanceType"] == "Standard_NC24ads_A100_v4", "from Phi-4's inference computes"
    # the gate's smoke question and the proof of traffic to deploy-v1, then the smoke chat through Prompt flow
    assert [request["deployment"] for request in endpoint] == ["deploy-v1", "deploy-v1", None]
    kinds = {values["kind"]: values for values in azure_cloud.templates.deployed}
    assert kinds["hub"]["storageAccountOption"] == "existing"  # the hub adds no storage account of its own
    assert kinds["project"]["workspace_hub"] == f"{WORKSPACES}/phi3-pipeline-hub"
    (connection_put,) = transport.calls("PUT", "/workspaces/phi3-pipeline-project/connections/phi3_azure_test")
    connection = json.loads(connection_put.body)["properties"]
    assert connection["authType"] == "CustomKeys" and connection["category"] == "CustomKeys"
    assert connection["credentials"]["keys"] == {"endpoint": endpoint_path and arm.scoring_uri, "key": ENDPOINT_KEY}
    assert connection["metadata"]["contract"] == "input_data"
    assert promptflow_chat.connection_endpoint("phi3_azure_test") == arm.scoring_uri

    writes_before = puts(transport)
    again = full_pipeline(settings)
    assert again["answer"] == ANSWER
    new_writes = puts(transport)[len(writes_before):]
    assert all("/roleAssignments/" in url or "/connections/" in url for url in new_writes), new_writes
    assert transport.calls("DELETE") == []
    assert {row["stage"]: row["outcome"] for row in again["stages"]}["fine-tune"] == "reused (cached)"


def test_teardown_deletes_the_endpoint_and_a_second_teardown_finds_it_gone(prefect_api, settings,
                                                                           azure_cloud, endpoint):
    from flows.full_pipeline import full_pipeline
    from flows.teardown import teardown

    full_pipeline(settings)
    report = teardown(settings)
    assert any(item.startswith("endpoint ep-phi3-custom-") for item in report.removed)
    assert not [p for p in azure_cloud.arm.resources if "/onlineEndpoints/" in p]
    assert promptflow_chat.connection_endpoint("phi3_azure_test") is None
    again = teardown(settings)
    assert again.removed == [] and any(item.startswith("endpoint ") for item in again.already_gone)


def test_a_failed_job_stops_the_run_with_its_studio_link_and_deploys_nothing(prefect_api, settings,
                                                                              azure_cloud):
    from flows.full_pipeline import full_pipeline

    azure_cloud.arm.job_states = ["Running", "Failed"]
    with pytest.raises(JobFailedError, match="ended Failed; logs and details: .*ml.azure.com"):
        full_pipeline(settings)
    assert puts(azure_cloud.transport, "/onlineEndpoints/") == []


def test_a_deployment_that_fails_is_torn_down_so_nothing_keeps_billing(prefect_api, settings, azure_cloud,
                                                                       endpoint):
    from flows.full_pipeline import full_pipeline

    azure_cloud.arm.fail_provisioning("/deployments/deploy-v1", "Liveness probe failed")
    with pytest.raises(PipelineError, match="Liveness probe failed"):
        full_pipeline(settings)
    assert puts(azure_cloud.transport, "/onlineEndpoints/"), "the endpoint was made"
    assert not [p for p in azure_cloud.arm.resources if "/onlineEndpoints/" in p], "and removed after the failure"


def test_no_sign_in_is_one_clear_error_before_any_request(monkeypatch, tmp_path, capsys):
    class NoSignIn:
        def __init__(self, **kwargs):
            pass

        def get_token(self, *scopes, **kwargs):
            raise CredentialUnavailableError("DefaultAzureCredential failed to retrieve a token")

    monkeypatch.setattr(clients, "DefaultAzureCredential", NoSignIn)
    code = run_pipeline_cli([*AZURE_ARGS, "--local.workspace_dir", str(tmp_path)])
    assert code == 2
    assert "error: no Azure sign-in works on this machine: run `az login`" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="service principal"):
        clients.sign_in(AZURE, NoSignIn())


def test_short_quota_stops_before_anything_is_created(azure_cloud, tmp_path, capsys):
    azure_cloud.arm.usages = vcpu_usages(a100=(0, 0), h100=(0, 0))
    code = run_pipeline_cli([*AZURE_ARGS, "--local.workspace_dir", str(tmp_path)])
    assert code == 1
    assert "standardNCADSA100v4Family vCPUs in eastus2" in capsys.readouterr().err
    assert puts(azure_cloud.transport) == [] and azure_cloud.uploads == []


@pytest.mark.parametrize("shape", ["system_metadata", "catalog_properties"])
def test_plan_reads_only_and_prices_what_the_run_would_start(shape, prefect_api, azure_cloud, tmp_path, capsys):
    """In either shape of Phi-4 v8's registry entry (catalog_properties: no system metadata in the body, no compute
    tags), the plan names the model's facts with where each came from."""
    if shape == "catalog_properties":
        azure_cloud.arm.registry.add("Phi-4", "8", phi4_entry("properties"))
    code = run_pipeline_cli([*AZURE_ARGS, "--local.workspace_dir", str(tmp_path), "--plan"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert {r.method for r in azure_cloud.transport.requests} == {"GET"} and azure_cloud.uploads == []
    assert len(azure_cloud.transport.calls("GET", "/workspaces/ws?")) == 1, "the workspace is read once"
    lines = {line.split()[0] + " " + line.split()[1]: line for line in out.splitlines() if len(line.split()) > 2}
    assert "create" in lines["managed identity"] and "submit" in lines["fine-tune job"]
    assert "Phi-4 v8" in lines["catalog model"] and "learning_rate 5e-6" in lines["catalog model"]
    source = "system metadata (supportedComputes" if shape == "system_metadata" else "properties (finetune-recommended"
    assert f"finetune computes from {source}" in lines["catalog facts"]
    assert "3.67" in lines["fine-tune job"]
    assert "Standard_NC24ads_A100_v4 x1" in lines["deployment (Standard_NC24ads_A100_v4"]
    assert "up to 7.34 USD/hour" in out and "2026-11-25" in out
    assert "NC6s_v3" not in out and "Phi-3" not in out, "no retired size or model in a default plan"


def test_token_auth_plan_shows_the_scoring_role_granted_to_the_signed_in_principal(prefect_api, azure_cloud, tmp_path,
                                                                                    capsys):
    assert run_pipeline_cli([*AZURE_ARGS, "--local.workspace_dir", str(tmp_path), "--plan"]) == 0
    assert "AzureML Data Scientist" not in capsys.readouterr().out, "key auth grants no scoring role"
    code = run_pipeline_cli([*AZURE_ARGS, "--local.workspace_dir", str(tmp_path), "--plan",
                             "--azure.endpoint_auth", "token"])
    out = capsys.readouterr().out
    assert code == 0, out
    (line,) = [line for line in out.splitlines() if "AzureML Data Scientist" in line]
    assert "on ws for you" in line and "get or create" in line and "no key is read" in line
    assert {r.method for r in azure_cloud.transport.requests} == {"GET"}


def test_the_sweep_removes_only_this_projects_endpoints_past_their_age(azure_cloud, settings):
    from azure.ai.ml.entities import ManagedOnlineEndpoint

    from phi3_pipeline.targets.azure import online
    from phi3_pipeline.targets.azure.entities import deployment_lease, resource_tags
    from tests.azure_fakes import WORKSPACE

    ml_client = clients.connect(AZURE).ml
    now = datetime.now(UTC)
    online.ensure_endpoint(ml_client, AZURE, "ep-old", resource_tags("run-1", now - timedelta(hours=30)))
    online.ensure_endpoint(ml_client, AZURE, "ep-fresh", resource_tags("run-2", now - timedelta(hours=1)))
    ml_client.online_endpoints.begin_create_or_update(ManagedOnlineEndpoint(name="ep-not-ours", auth_mode="key",
                                                                            tags={"owner": "someone"})).result()
    online.ensure_endpoint(ml_client, AZURE, "ep-odd-tag", {"managed-by": "phi3-pipeline", "created-at": "yesterday"})
    for name, minutes_ago in (("killed-candidate", 300), ("running-candidate", 5)):
        online.ensure_deployment(ml_client, AZURE, "Standard_NC24ads_A100_v4", "ep-fresh", name,
                                 f"{WORKSPACE}/models/phi3-custom/versions/1",
                                 deployment_lease("run-3", 240, now - timedelta(minutes=minutes_ago)))
    report = AzureTarget(settings).sweep(older_than_hours=24)
    assert report.removed == ["endpoint ep-old", "deployment killed-candidate of ep-fresh (lease ended)"]
    assert [d.name for d in ml_client.online_deployments.list("ep-fresh")] == ["running-candidate"]
    assert sorted(endpoint.name for endpoint in ml_client.online_endpoints.list()) == [
        "ep-fresh", "ep-not-ours", "ep-odd-tag"]


BUSY = (409, {"error": {"code": "Conflict", "message": "An operation is in progress on this endpoint"}})


@pytest.fixture
def quick_busy_retries(monkeypatch):
    monkeypatch.setattr(clients, "BUSY_RETRY", {"first_wait_s": 0.01, "max_wait_s": 0.01, "total_s": 1.0})


def test_busy_a_delete_refused_while_an_operation_runs_is_retried_until_it_goes(azure_cloud, quick_busy_retries):
    from phi3_pipeline.targets.azure import online
    from phi3_pipeline.targets.azure.entities import resource_tags

    ml_client = clients.connect(AZURE).ml
    online.ensure_endpoint(ml_client, AZURE, "ep-busy", resource_tags("run-1"))
    for _ in range(2):
        azure_cloud.arm.inject("DELETE", "/onlineEndpoints/ep-busy", BUSY)
    assert online.delete_endpoint(ml_client, "ep-busy") is True
    assert len(azure_cloud.transport.calls("DELETE", "/onlineEndpoints/ep-busy")) == 3
    assert [e.name for e in ml_client.online_endpoints.list()] == []


def test_busy_past_the_bound_a_delete_names_the_resource_and_what_to_run(azure_cloud, quick_busy_retries):
    from phi3_pipeline.targets.azure import online
    from phi3_pipeline.targets.azure.entities import resource_tags

    ml_client = clients.connect(AZURE).ml
    online.ensure_endpoint(ml_client, AZURE, "ep-stuck", resource_tags("run-1"))
    for _ in range(500):
        azure_cloud.arm.inject("DELETE", "/onlineEndpoints/ep-stuck", BUSY)
    with pytest.raises(PipelineError, match="endpoint ep-stuck is still busy after 1 s .*operation is in progress.*"
                                            r"run the teardown again later \(python -m flows.teardown\)"):
        online.delete_endpoint(ml_client, "ep-stuck")


def test_busy_an_operation_that_ended_failed_or_canceled_is_tried_again(quick_busy_retries):
    from azure.core.exceptions import HttpResponseError
    from azure.core.polling.base_polling import OperationFailed

    answers = iter(["first", "second"])

    def delete():
        if next(answers) == "first":
            try:
                raise OperationFailed("Operation failed or canceled")
            except OperationFailed as failed:
                raise HttpResponseError(message="(200) Canceled") from failed
        return "deleted"

    assert clients.when_not_busy("endpoint ep", delete) == "deleted"


def test_busy_one_stuck_endpoint_never_stops_the_sweep_and_the_teardown_then_fails_naming_it(
        prefect_api, azure_cloud, settings, quick_busy_retries):
    from flows.teardown import teardown
    from phi3_pipeline.targets.azure import online
    from phi3_pipeline.targets.azure.entities import resource_tags

    ml_client = clients.connect(AZURE).ml
    old = datetime.now(UTC) - timedelta(hours=30)
    for name in ("ep-a-stuck", "ep-b-old"):
        online.ensure_endpoint(ml_client, AZURE, name, resource_tags("run-1", old))
    for _ in range(500):
        azure_cloud.arm.inject("DELETE", "/onlineEndpoints/ep-a-stuck", BUSY)
    report = AzureTarget(settings).sweep(older_than_hours=24)
    assert report.removed == ["endpoint ep-b-old"] and report.failed[0].startswith("endpoint ep-a-stuck: endpoint "
                                                                                    "ep-a-stuck is still busy")
    with pytest.raises(PipelineError, match="teardown could not remove endpoint ep-a-stuck"):
        teardown(settings, older_than_hours=24)


def test_busy_a_deployment_already_gone_counts_as_removed(azure_cloud):
    from phi3_pipeline.targets.azure import online
    from phi3_pipeline.targets.azure.entities import deployment_lease, resource_tags
    from tests.azure_fakes import WORKSPACE

    ml_client = clients.connect(AZURE).ml
    online.ensure_endpoint(ml_client, AZURE, "ep-x", resource_tags("run-1"))
    online.ensure_deployment(ml_client, AZURE, "Standard_NC24ads_A100_v4", "ep-x", "gone-meanwhile",
                             f"{WORKSPACE}/models/phi3-custom/versions/1", deployment_lease("run-1", 240))
    azure_cloud.arm.inject("DELETE", "/deployments/gone-meanwhile",
                           (404, {"error": {"code": "NotFound", "message": "not found"}}))
    assert online.remove_other_deployments(ml_client, "ep-x", keep=None, run_id="run-1") == (["gone-meanwhile"], [])


def test_azure_errors_that_may_pass_are_retried_and_refusals_say_what_to_do(azure_cloud, settings):
    arm, target = azure_cloud.arm, AzureTarget(settings)
    for _ in range(12):
        arm.inject("GET", "/vmSizes", (503, {"error": {"code": "ServiceUnavailable", "message": "busy"}}))
    with pytest.raises(TransientError, match="503"):
        target.check_resources()
    arm.faults.clear()
    arm.inject("GET", "/vmSizes", (403, {"error": {"code": "AuthorizationFailed", "message": "may not read"}}))
    with pytest.raises(PipelineError, match="may not read.*User Access Administrator") as refused:
        target.check_resources()
    assert not isinstance(refused.value, TransientError)


def test_retraining_on_azure_is_blue_green_under_one_endpoint(prefect_api, settings, azure_cloud, endpoint,
                                                               monkeypatch):
    from phi3_pipeline.chat_data import split_files
    from flows.full_pipeline import full_pipeline

    splits = []
    real_split = split_files.split_and_write
    monkeypatch.setattr(split_files, "split_and_write", lambda *args: splits.append(args) or real_split(*args))
    arm, transport = azure_cloud.arm, azure_cloud.transport
    full_pipeline(settings)
    requests_before = len(transport.requests)
    unchanged = full_pipeline(settings.model_copy(update={"skip_unchanged": True}))
    assert unchanged["unchanged"].startswith("live: deploy-v1")
    assert {r.method for r in transport.requests[requests_before:]} == {"GET"}, "no cloud write when unchanged"
    assert len(splits) == 1, "the re-run's live-model stage reads the first run's split back"
    retrained = settings.model_copy(update={"dataset": settings.dataset.model_copy(update={"sample_size": 210}),
                                            "skip_unchanged": True})
    endpoint.clear()
    result = full_pipeline(retrained)
    assert result["model_version"] == 2
    assert len(splits) == 2, "one split for the live-model stage, the dataset stage and the gate together"
    asked = {request["deployment"] for request in endpoint if request["input_data"]["parameters"]["temperature"] == 0}
    assert asked == {"deploy-v1", "deploy-v2"}, "the gate asked both deployments, each by name"
    endpoint_path = next(p for p in arm.resources if p.endswith("/onlineEndpoints/" + p.rsplit("/", 1)[1])
                         and "/deployments/" not in p)
    assert arm.resources[endpoint_path]["properties"]["traffic"] == {"deploy-v2": 100}
    assert [p.rsplit("/", 1)[1] for p in arm.resources if "/deployments/" in p] == ["deploy-v2"]
    assert len([u for u in puts(transport, "/onlineEndpoints/") if "/deployments/" not in u]) == 3, \
        "the endpoint was created once and only its traffic changed (v1, then v2)"


def test_a_new_model_that_fails_going_live_hands_the_traffic_back_to_the_old_one(
        prefect_api, settings, azure_cloud, scoring):
    from flows.full_pipeline import full_pipeline

    """The old model is restored by the traffic map alone (verified), with its own live-since, and the candidate
    goes even though the old model does not answer a probe now: that is reported, never a reason to keep it."""
    answered, refusals = scoring
    full_pipeline(settings)
    arm = azure_cloud.arm
    endpoint_path = next(p for p in arm.resources if "/onlineEndpoints/" in p and "/deployments/" not in p)
    live_since = arm.resources[endpoint_path]["tags"]["live-since"]
    retrained = settings.model_copy(update={"dataset": settings.dataset.model_copy(update={"sample_size": 210})})
    going_live_probe = 16  # max_new_tokens of the request that proves traffic after it moved
    refusals.append(lambda request: request["input_data"]["parameters"]["max_new_tokens"] == going_live_probe)
    with pytest.raises(PipelineError, match="deploy-v2 answered HTTP 400"):
        full_pipeline(retrained)
    assert arm.resources[endpoint_path]["properties"]["traffic"] == {"deploy-v1": 100}
    assert arm.resources[endpoint_path]["tags"]["live-since"] == live_since, "the model that served keeps its age"
    assert [p.rsplit("/", 1)[1] for p in arm.resources if "/deployments/" in p] == ["deploy-v1"]
    notice = requests.post(f"{prefect_api}/artifacts/filter", timeout=10, json={
        "artifacts": {"key": {"any_": ["failure-notice"]}}, "sort": "CREATED_DESC", "limit": 1}).json()[0]["data"]
    assert "failed at stage: go live" in notice and "Still running: deployment deploy-v1" in notice
    assert "Cleaned up: deploy-v2" in notice


def test_a_run_cancelled_while_its_candidate_deploys_removes_it_and_the_old_model_keeps_the_traffic(
        prefect_api, settings, azure_cloud, endpoint, monkeypatch):
    """Prefect cancels a run with SIGTERM, which its engine raises (TerminationSignal) from the stage's task call
    itself, with no state to read: the failure path still knows the deploy stage started and removes the
    candidate, which would otherwise bill."""
    import signal

    from prefect.exceptions import TerminationSignal

    from flows.full_pipeline import full_pipeline

    full_pipeline(settings)
    real_deploy = AzureTarget.deploy

    def cancelled_while_deploying(self, model):
        real_deploy(self, model)
        raise TerminationSignal(signal.SIGTERM)

    monkeypatch.setattr(AzureTarget, "deploy", cancelled_while_deploying)
    retrained = settings.model_copy(update={"dataset": settings.dataset.model_copy(update={"sample_size": 210})})
    before = signal.signal(signal.SIGTERM, signal.SIG_IGN)  # Prefect's engine then sends SIGTERM to pytest
    try:
        with pytest.raises(TerminationSignal):
            full_pipeline(retrained)
    finally:
        signal.signal(signal.SIGTERM, before)
    arm = azure_cloud.arm
    endpoint_path = next(p for p in arm.resources if "/onlineEndpoints/" in p and "/deployments/" not in p)
    assert arm.resources[endpoint_path]["properties"]["traffic"] == {"deploy-v1": 100}
    assert [p.rsplit("/", 1)[1] for p in arm.resources if "/deployments/" in p] == ["deploy-v1"]
    notice = requests.post(f"{prefect_api}/artifacts/filter", timeout=10, json={
        "artifacts": {"key": {"any_": ["failure-notice"]}}, "sort": "CREATED_DESC", "limit": 1}).json()[0]["data"]
    assert "failed at stage: deploy" in notice and "Cleaned up: deploy-v2" in notice


def test_a_good_go_live_stays_when_the_old_deployment_cannot_be_removed(prefect_api, settings, azure_cloud,
                                                                         endpoint):
    from flows.full_pipeline import full_pipeline

    full_pipeline(settings)
    arm = azure_cloud.arm
    arm.inject("DELETE", "/deployments/deploy-v1", (400, {"error": {"code": "BadRequest", "message": "refused"}}))
    retrained = settings.model_copy(update={"dataset": settings.dataset.model_copy(update={"sample_size": 210})})
    assert full_pipeline(retrained)["model_version"] == 2, "the run succeeds: its model serves, verified"
    endpoint_path = next(p for p in arm.resources if "/onlineEndpoints/" in p and "/deployments/" not in p)
    assert arm.resources[endpoint_path]["properties"]["traffic"] == {"deploy-v2": 100}
    assert sorted(p.rsplit("/", 1)[1] for p in arm.resources if "/deployments/" in p) == ["deploy-v1", "deploy-v2"]


def test_teardown_everything_also_removes_the_cluster_and_the_foundry_resources(prefect_api, settings,
                                                                                azure_cloud, endpoint):
    from flows.full_pipeline import full_pipeline
    from flows.teardown import teardown

    full_pipeline(settings)
    report = teardown(everything(settings))
    assert [" ".join(item.split()[:2]) for item in report.removed] == [
        "endpoint ep-phi3-custom-c157d689", "compute phi-ft-cluster", "Foundry connection", "local connection",
        "Foundry project", "Foundry hub"]
    left = [p for p in azure_cloud.arm.resources if "/computes/" in p or "/connections/" in p
            or p.endswith(("/phi3-pipeline-hub", "/phi3-pipeline-project"))]
    assert left == []
    deletes = [r.url for r in azure_cloud.transport.calls("DELETE", "/workspaces/phi3-pipeline-")]
    assert deletes and all("forceToPurge=false" in url for url in deletes if "/connections/" not in url), \
        "soft-deleted: recoverable for 14 days"


def make_foundry_and_cluster(tags: dict[str, str], owner: str):
    """A cluster, hub, project and Foundry connection (for the endpoint `owner`) of the configured names, made
    with `tags`."""
    from phi3_pipeline.targets.azure import assets, foundry

    made = clients.connect(AZURE)
    assets.ensure_cluster(made.ml, AZURE, "Standard_NC24ads_A100_v4", tags)
    foundry.ensure_project(made.resource_group_ml, AZURE, tags)
    foundry.upsert_custom_connection(made.project_ml, "phi3_azure_test", "https://x/score", "k", "input_data", tags,
                                     owner=owner)


def everything(settings: PipelineSettings, **azure) -> PipelineSettings:
    return settings.model_copy(update={"azure": settings.azure.model_copy(
        update={"teardown_everything": True, **azure})})


def test_not_ours_an_adopted_hub_project_cluster_and_connection_are_left_in_place_and_named(azure_cloud, settings):
    """A team's cluster, hub, project and connection that carry the configured names (no managed-by tag) are left
    in place by a teardown of everything, which names each, even when asked to purge."""
    make_foundry_and_cluster({"owner": "data-science-team"}, owner=AzureTarget(settings).endpoint_name)
    before = set(azure_cloud.arm.resources)
    report = AzureTarget(everything(settings, purge_foundry=True)).teardown()
    assert sorted(" ".join(item.split()[:2]) for item in report.kept) == [
        "Foundry connection", "Foundry hub", "Foundry project", "compute phi-ft-cluster"]
    assert set(azure_cloud.arm.resources) == before
    assert azure_cloud.transport.calls("DELETE") == [], "nothing of theirs is even asked to go"


def test_not_ours_a_foundry_connection_made_for_another_models_endpoint_is_kept(azure_cloud, settings):
    from phi3_pipeline.targets.azure.entities import resource_tags

    make_foundry_and_cluster(resource_tags("run-1"), owner="ep-another-model-0123abcd")
    report = AzureTarget(settings).teardown()
    assert "Foundry connection phi3_azure_test" in report.kept
    assert clients.connect(AZURE).project_ml.connections.get("phi3_azure_test")


def test_teardown_purges_the_foundry_resources_it_made_only_when_asked(azure_cloud, settings):
    from phi3_pipeline.targets.azure.entities import resource_tags

    make_foundry_and_cluster(resource_tags("run-1"), owner=AzureTarget(settings).endpoint_name)
    report = AzureTarget(everything(settings, purge_foundry=True)).teardown()
    assert sorted(" ".join(item.split()[:2]) for item in report.removed) == [
        "Foundry connection", "Foundry hub", "Foundry project", "compute phi-ft-cluster"]
    deletes = [r.url for r in azure_cloud.transport.calls("DELETE", "/workspaces/phi3-pipeline-")
               if "/connections/" not in r.url]
    assert len(deletes) == 2 and all("forceToPurge=true" in url for url in deletes)


def test_a_plan_asked_for_from_the_ui_creates_nothing(prefect_api, settings, azure_cloud):
    from flows.full_pipeline import full_pipeline

    result = full_pipeline(settings.model_copy(update={"plan": True}))
    assert "fine-tune job" in " ".join(item["resource"] for item in result["plan"])
    assert {r.method for r in azure_cloud.transport.requests} == {"GET"} and azure_cloud.uploads == []


def test_a_deployment_asked_in_chat_completions_gets_openai_style_requests_with_max_tokens(prefect_api, settings,
                                                                                         azure_cloud, endpoint):
    from flows.full_pipeline import full_pipeline

    chat = settings.model_copy(update={"azure": settings.azure.model_copy(update={"scoring_contract":
                                                                                  "chat_completions"})})
    assert full_pipeline(chat)["answer"] == ANSWER
    assert {request["contract"] for request in endpoint} == {"chat_completions"}, "gate, go-live probe and chat flow"
    assert all("max_tokens" in request and "input_data" not in request for request in endpoint)


def test_a_deployment_that_does_not_speak_the_contract_stops_the_run_naming_both(prefect_api, settings,
                                                                                azure_cloud):
    from flows.full_pipeline import full_pipeline

    with scoring_stub(ANSWER, speaks=("input_data",)) as (scoring_uri, _, _):
        azure_cloud.arm.scoring_uri = scoring_uri
        azure_cloud.arm.job_states = ["Completed"]
        chat = settings.model_copy(update={"azure": settings.azure.model_copy(update={"scoring_contract":
                                                                                      "chat_completions"})})
        with pytest.raises(PipelineError, match="does not answer the chat_completions contract .* set the scoring "
                                                "contract to input_data"):
            full_pipeline(chat)
    assert not [p for p in azure_cloud.arm.resources if "/onlineEndpoints/" in p], "a failed first run tears down"


def test_a_deployment_answering_an_error_body_stops_the_run_naming_the_servers_error(prefect_api, settings,
                                                                                     azure_cloud):
    """error_body: HTTP 200 `{"output": null, "error": ...}` (foundation-model-serve) is never taken for an answer."""
    from flows.full_pipeline import full_pipeline

    refused = {"output": None, "error": {"status_code": 400, "body": {"message": "maximum context length"}}}
    with scoring_stub(ANSWER, body=refused) as (scoring_uri, _, _):
        azure_cloud.arm.scoring_uri = scoring_uri
        azure_cloud.arm.job_states = ["Completed"]
        with pytest.raises(PipelineError, match="the inference server answered an error: .*maximum context length"):
            full_pipeline(settings)
    assert not [p for p in azure_cloud.arm.resources if "/onlineEndpoints/" in p], "a failed first run tears down"


def test_a_deprecated_model_runs_with_its_warning_in_the_run_summary(prefect_api, settings, azure_cloud, endpoint):
    from flows.full_pipeline import full_pipeline

    legacy = settings.model_copy(update={"azure": settings.azure.model_copy(update={"base_model": "Phi-legacy-test"})})
    result = full_pipeline(legacy)
    quota_row = next(row for row in result["stages"] if row["stage"] == "quota check")
    assert quota_row["detail"] == ("warning: Phi-legacy-test v2 is deprecated for fine-tuning since 2026-01-15, "
                                   "retires 2099-01-15")
    (job_put,) = azure_cloud.transport.calls("PUT", "/jobs/")
    details = request_json(job_put)["properties"]["fineTuningDetails"]
    assert details["model"]["uri"].endswith("/Phi-legacy-test/versions/2")
    assert details["hyperParameters"] == {"learning_rate": "2e-5"}, "only what the model publishes or the user sets"


def test_an_endpoint_made_while_the_workspace_has_no_registry_runs_as_a_system_identity(prefect_api, settings,
                                                                                       azure_cloud, endpoint):
    from flows.full_pipeline import full_pipeline

    arm = azure_cloud.arm
    arm.container_registry = None
    result = full_pipeline(settings)
    assert result["answer"] == ANSWER
    endpoint_path = next(p for p in arm.resources if "/onlineEndpoints/" in p and "/deployments/" not in p)
    assert arm.resources[endpoint_path]["identity"]["type"] == "SystemAssigned"
    assert not [p for p in arm.resources if "/roleAssignments/" in p and "acrpull" in str(arm.resources[p])]
    assert "no container registry yet" in next(row["detail"] for row in result["stages"]
                                               if row["stage"] == "quota check")


def test_a_registry_azure_makes_during_the_run_gets_acr_pull_before_the_deployment(prefect_api, settings,
                                                                                    azure_cloud, endpoint,
                                                                                    monkeypatch):
    """The identity stage finds no registry; Azure makes one before the deploy stage, which grants AcrPull then
    and deploys with the pipeline's identity (the run's one target reads the workspace again for it)."""
    from flows.full_pipeline import full_pipeline
    from phi3_pipeline.targets.azure.target import AzureTarget

    arm = azure_cloud.arm
    arm.container_registry, ensure_identity = None, AzureTarget.ensure_identity

    def identity_then_a_registry(target):
        made = ensure_identity(target)
        arm.container_registry = REGISTRY
        return made

    monkeypatch.setattr(AzureTarget, "ensure_identity", identity_then_a_registry)
    quick = settings.model_copy(update={"azure": settings.azure.model_copy(update={"role_propagation_s": 0})})
    assert full_pipeline(quick)["answer"] == ANSWER
    endpoint_path = next(p for p in arm.resources if "/onlineEndpoints/" in p and "/deployments/" not in p)
    assert arm.resources[endpoint_path]["identity"]["type"] == "UserAssigned"
    assert any("/roleAssignments/" in p and p.startswith(REGISTRY) for p in arm.resources)


def test_a_failed_runs_clean_up_never_removes_what_another_run_made_live(azure_cloud, settings, monkeypatch):
    from azure.ai.ml.entities import ManagedOnlineDeployment

    from phi3_pipeline.targets.azure import online
    from tasks import teardown as teardown_tasks
    from tests.azure_fakes import WORKSPACE

    ml_client = clients.connect(AZURE).ml
    target_b, target_a = AzureTarget(settings, run_id="run-b"), AzureTarget(settings, run_id="run-a")
    online.ensure_endpoint(ml_client, AZURE, target_b.endpoint_name, target_b.tags)
    model = f"{WORKSPACE}/models/phi3-custom/versions/1"
    for name, run in (("deploy-v1", "run-b"), ("deploy-v2", "run-a")):
        ml_client.online_deployments.begin_create_or_update(ManagedOnlineDeployment(
            name=name, endpoint_name=target_b.endpoint_name, model=model, instance_type="Standard_NC24ads_A100_v4",
            instance_count=1, tags={"pipeline-run": run})).result()
    online.route_all_traffic(ml_client, target_b.endpoint_name, "deploy-v1")  # run B's model went live meanwhile
    monkeypatch.setattr(teardown_tasks, "stage_target", lambda _settings: target_a)
    result = teardown_tasks.clean_up_after_failure.fn(settings, None, False)  # run A: nothing served before it
    assert (result.removed, result.still_serving) == (["deploy-v2"], "deploy-v1")
    deployments = [p.rsplit("/", 1)[1] for p in azure_cloud.arm.resources if "/deployments/" in p]
    assert deployments == ["deploy-v1"], "run B's live deployment and its endpoint stay"


def test_a_failed_run_with_nothing_live_leaves_the_endpoint_to_another_machines_candidate(azure_cloud, settings,
                                                                                          monkeypatch):
    """Run B, on another machine, is deploying beside run A: A's failure removes its own candidate only."""
    from azure.ai.ml.entities import ManagedOnlineDeployment

    from phi3_pipeline.targets.azure import online
    from phi3_pipeline.targets.azure.entities import deployment_lease
    from tasks import teardown as teardown_tasks
    from tests.azure_fakes import WORKSPACE

    ml_client = clients.connect(AZURE).ml
    target_a = AzureTarget(settings, run_id="run-a")
    online.ensure_endpoint(ml_client, AZURE, target_a.endpoint_name, target_a.tags)
    for name, run in (("deploy-v1", "run-b"), ("deploy-v2", "run-a")):
        ml_client.online_deployments.begin_create_or_update(ManagedOnlineDeployment(
            name=name, endpoint_name=target_a.endpoint_name, model=f"{WORKSPACE}/models/phi3-custom/versions/1",
            instance_type="Standard_NC24ads_A100_v4", instance_count=1,
            tags=deployment_lease(run, settings.azure.deployment_lease_minutes))).result()
    monkeypatch.setattr(teardown_tasks, "stage_target", lambda _settings: target_a)
    result = teardown_tasks.clean_up_after_failure.fn(settings, None, False)
    assert (result.removed, result.still_serving) == (["deploy-v2"], None)
    assert [d.name for d in ml_client.online_deployments.list(target_a.endpoint_name)] == ["deploy-v1"]


def test_stops_the_bill_teardown_cancels_the_models_running_job_and_keeps_a_cluster_another_job_uses(
        azure_cloud, settings):
    from phi3_pipeline.targets.azure import assets, finetune
    from phi3_pipeline.targets.azure.entities import finetune_job, resource_tags

    arm, made, ours = azure_cloud.arm, clients.connect(AZURE), resource_tags("run-1")
    assets.ensure_cluster(made.ml, AZURE, "Standard_NC24ads_A100_v4", ours)

    def running_job(name: str, experiment: str, tags: dict[str, str]) -> dict:
        phi4 = "azureml://registries/azureml/models/Phi-4/versions/8"
        finetune.submit(made.ml, finetune_job(AZURE.compute_name, phi4, {}, name, "azureml:t:1", "azureml:v:1",
                                              experiment, tags))
        properties = arm.resources[f"{WORKSPACE}/jobs/{name}"]["properties"]
        properties["status"] = "Running"
        return properties

    mine = running_job("phi3-custom-ft-a", "phi3-custom", ours)
    theirs = running_job("team-job", "team-model", {"owner": "team"})
    report = AzureTarget(settings).teardown()
    assert "fine-tune job phi3-custom-ft-a (cancelled)" in report.removed
    assert (mine["status"], theirs["status"]) == ("Canceled", "Running"), "only this model's job of this project"
    (cluster,) = [item for item in report.kept if item.startswith("compute")]
    assert "in use by job team-job" in cluster and "0.33 USD a day" in cluster
    theirs["status"] = "Completed"
    assert "compute phi-ft-cluster" in AzureTarget(settings).teardown().removed, "idle and ours: deleted"


def test_stops_the_bill_an_adopted_cluster_with_nodes_always_on_is_named_in_the_plan_and_kept(azure_cloud, settings,
                                                                                              tmp_path, capsys):
    from azure.ai.ml.entities import AmlCompute

    made = clients.connect(AZURE)
    made.ml.compute.begin_create_or_update(AmlCompute(
        name=AZURE.compute_name, size="Standard_NC24ads_A100_v4", min_instances=2, max_instances=2,
        tags={"owner": "team"})).result()
    assert run_pipeline_cli([*AZURE_ARGS, "--local.workspace_dir", str(tmp_path), "--plan"]) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("compute phi-ft-cluster")]
    assert "min 2 nodes: Standard_NC24ads_A100_v4 x2 bills all the time" in line and "7.34" in line
    assert "not made by this pipeline: kept" in line
    report = AzureTarget(settings).teardown()
    kept = "compute phi-ft-cluster (not made by this pipeline; min 2 nodes"
    assert any(item.startswith(kept) for item in report.kept)
    assert f"{WORKSPACE}/computes/phi-ft-cluster" in azure_cloud.arm.resources


def test_busy_a_whole_run_and_its_teardown_wait_out_operations_in_progress(prefect_api, settings, azure_cloud,
                                                                           endpoint):
    """Every write's operation runs for a while (the resource Creating, Updating or Deleting, writes to it 409):
    the SDK's pollers wait it out, and nothing writes to a resource while its operation runs."""
    from flows.full_pipeline import full_pipeline
    from flows.teardown import teardown

    arm = azure_cloud.arm
    arm.operation_ticks = 3
    assert full_pipeline(settings)["answer"] == ANSWER
    report = teardown(settings)
    assert any(item.startswith("endpoint ep-phi3-custom-") for item in report.removed)
    assert not [p for p in arm.resources if "/onlineEndpoints/" in p or "/computes/" in p]
    assert arm.polled_in_progress >= len(arm.operations), "the operations were waited on while in progress"
    assert arm.conflicts == [], "nothing wrote to a resource while its operation ran"


def test_busy_a_teardown_right_after_a_crash_waits_for_the_deployment_still_creating(azure_cloud,
                                                                                     quick_busy_retries):
    from phi3_pipeline.targets.azure import online
    from phi3_pipeline.targets.azure.entities import deployment_lease, resource_tags

    arm, ml_client = azure_cloud.arm, clients.connect(AZURE).ml
    online.ensure_endpoint(ml_client, AZURE, "ep-crash", resource_tags("run-1"))
    online.ensure_deployment(ml_client, AZURE, "Standard_NC24ads_A100_v4", "ep-crash", "deploy-v1",
                             f"{WORKSPACE}/models/m/versions/1", deployment_lease("run-1", 240))
    # the run was killed while its deployment was still Creating: nobody polls its operation
    arm.left_running(f"{WORKSPACE}/onlineEndpoints/ep-crash/deployments/deploy-v1", ticks=6)
    assert online.delete_endpoint(ml_client, "ep-crash") is True
    assert arm.conflicts[0] == f"DELETE {WORKSPACE}/onlineEndpoints/ep-crash", "refused while Creating, retried"
    assert not [p for p in arm.resources if "/onlineEndpoints/" in p]


def test_busy_a_delete_whose_operation_ends_canceled_or_failed_is_tried_again(azure_cloud, quick_busy_retries):
    from phi3_pipeline.targets.azure import online
    from phi3_pipeline.targets.azure.entities import resource_tags

    arm, ml_client = azure_cloud.arm, clients.connect(AZURE).ml
    for status in ("Canceled", "Failed"):
        online.ensure_endpoint(ml_client, AZURE, f"ep-{status.lower()}", resource_tags("run-1"))
        arm.end_next("DELETE", f"/onlineEndpoints/ep-{status.lower()}", status)
        assert online.delete_endpoint(ml_client, f"ep-{status.lower()}") is True
        assert len(azure_cloud.transport.calls("DELETE", f"/onlineEndpoints/ep-{status.lower()}")) == 2
    assert not [p for p in arm.resources if "/onlineEndpoints/" in p]


def test_busy_a_deployment_that_takes_traffic_is_never_asked_to_go(azure_cloud):
    from azure.core.exceptions import HttpResponseError

    from phi3_pipeline.targets.azure import online
    from phi3_pipeline.targets.azure.entities import deployment_lease, resource_tags

    ml_client = clients.connect(AZURE).ml
    online.ensure_endpoint(ml_client, AZURE, "ep-live", resource_tags("run-1"))
    online.ensure_deployment(ml_client, AZURE, "Standard_NC24ads_A100_v4", "ep-live", "deploy-v1",
                             f"{WORKSPACE}/models/m/versions/1", deployment_lease("run-1", 240))
    online.route_all_traffic(ml_client, "ep-live", "deploy-v1")
    assert online.remove_other_deployments(ml_client, "ep-live", keep=None, run_id="run-1") == ([], ["deploy-v1"])
    assert azure_cloud.transport.calls("DELETE") == []
    with pytest.raises(HttpResponseError, match="traffic cannot be deleted"):  # as Azure refuses it
        ml_client.online_deployments.begin_delete("deploy-v1", "ep-live").result()


def test_agent_asks_the_azure_deployment_in_both_contracts_addressed_to_it(prefect_api, settings, azure_cloud,
                                                                           endpoint):
    from flows.full_pipeline import full_pipeline
    from phi3_pipeline import chat_agent
    from tests.conftest import ROOT

    full_pipeline(settings)
    target = AzureTarget(settings)
    live = target.live_deployment()
    endpoint.clear()
    for contract in ("input_data", "chat_completions"):
        config = target.agent_config(live.model_copy(update={"contract": contract}), "Who founded Microsoft?")
        assert chat_agent.ask(ROOT / ".venv-agent", config, 60) == ANSWER
    assert [(request["contract"], request["deployment"]) for request in endpoint] == [
        ("input_data", "deploy-v1"), ("chat_completions", "deploy-v1")]
    # a terminal chat in chat_completions streams, as vLLM on Azure does: the reply is shown as its chunks come
    endpoint.clear()
    chat = chat_agent._agent(ROOT / ".venv-agent", config, input="Who founded Microsoft?\nexit\n",
                             capture_output=True, text=True, timeout=60)
    assert chat.returncode == 0, chat.stderr
    assert f"model> {ANSWER}\n" in chat.stdout
    assert [request.get("stream") for request in endpoint] == [True]


def test_token_auth_pipeline_reads_no_key_and_no_key_or_token_lands_anywhere(prefect_api, session_home, settings,
                                                                            azure_cloud, monkeypatch, capfd):
    """azure.endpoint_auth=token: the endpoint takes Microsoft Entra tokens, the signed-in principal is granted
    the scoring role, every caller (gate, go-live probe, Prompt flow's tool, the agent) brings a token for
    https://ml.azure.com, and neither a key nor a token is in any file, log, artifact or connection the run makes."""
    import time

    import azure.identity
    from prefect.client.orchestration import get_client

    from flows.full_pipeline import full_pipeline
    from phi3_pipeline import chat_agent
    from phi3_pipeline.chat_flow.scoring_contract import SCORING_TOKEN_SCOPE
    from tests.azure_fakes import SIGNED_IN_OBJECT_ID, OfflineCredential, offline_token
    from tests.conftest import ROOT

    started = time.time()
    token = offline_token(SCORING_TOKEN_SCOPE)
    CHAT_ARGS = [*AZURE_ARGS, "--azure.endpoint_auth", "token", "--connection_name", "phi3_azure_test",
                 "--local.workspace_dir", str(settings.local.workspace_dir), "--question", "Who founded Microsoft?"]
    monkeypatch.setattr(azure.identity, "DefaultAzureCredential", OfflineCredential)  # Prompt flow's tool signs in
    settings = settings.model_copy(update={"azure": AZURE.model_copy(update={"endpoint_auth": "token"}),
                                           "chat_front_end": "both"})
    arm, transport = azure_cloud.arm, azure_cloud.transport
    with scoring_stub(ANSWER, bearer=token) as (live_uri, answered, _):
        arm.scoring_uri, arm.job_states = live_uri, ["Completed"]
        result = full_pipeline(settings)
        assert result["answer"] == ANSWER
        # the gate's question, the go-live probe, then the smoke chat through Prompt flow and through the agent
        assert len(answered) == 4
        target = AzureTarget(settings)
        live = target.live_deployment()
        for contract in ("input_data", "chat_completions"):
            config = target.agent_config(live.model_copy(update={"contract": contract}), "Who founded Microsoft?")
            assert chat_agent.ask(ROOT / ".venv-agent", config, 60) == ANSWER
    console = "".join(capfd.readouterr())
    assert run_chat_cli(CHAT_ARGS) == 2, "the endpoint is gone"
    assert capfd.readouterr().err.strip().startswith(f"error: {live.deployment_name} (input_data): ")
    endpoint_path = next(path for path in arm.resources if "/onlineEndpoints/" in path and "/deployments/" not in path)
    with scoring_stub(ANSWER, bearer="a-token-the-endpoint-refuses") as (scoring_uri, _, _):
        arm.resources[endpoint_path]["properties"]["scoringUri"] = scoring_uri  # up again, refusing our token
        assert run_chat_cli(CHAT_ARGS) == 2, "the token is refused"
    refused = capfd.readouterr().err.strip()
    assert refused.startswith(f"error: {live.deployment_name} (input_data): ") and "401" in refused \
        and len(refused.splitlines()) == 1

    assert transport.calls("POST", "/listKeys") == [], "no key is read"
    assert arm.resources[endpoint_path]["properties"]["authMode"] == "AADToken"
    yours = [body["properties"] for path, body in arm.resources.items() if "/roleAssignments/" in path
             and body["properties"]["principalId"] == SIGNED_IN_OBJECT_ID]
    assert sorted((grant["roleDefinitionId"].rsplit("/", 1)[-1], grant.get("principalType")) for grant in yours) == [
        ("azureml-data-scientist", "User"), ("storage-blob-data-contributor", "User")]
    assert "AzureML Data Scientist (granted, to score with a token)" in json.dumps(result)
    (connection_put,) = transport.calls("PUT", "/connections/phi3_azure_test")
    assert json.loads(connection_put.body)["properties"]["credentials"]["keys"] == {"endpoint": live_uri}
    local = promptflow_chat._client().connections.get("phi3_azure_test")
    assert dict(local.secrets) == {"token_scope": SCORING_TOKEN_SCOPE}

    secrets = (ENDPOINT_KEY, "secondary-key-1", token, offline_token("https://management.azure.com/.default"))
    written = [path for path in session_home.rglob("*") if path.is_file() and path.stat().st_mtime >= started]
    assert written, "the run wrote its results, connections and logs under the session's home"
    for path in written:
        content = path.read_bytes()
        assert not any(secret.encode() in content for secret in secrets), path
    with get_client(sync_client=True) as client:
        shown = json.dumps([artifact.data for artifact in client.read_artifacts()], default=str) + "".join(
            log.message for log in client.read_logs())
    shown += json.dumps(result) + console + refused
    assert not any(secret in shown for secret in secrets)


def test_token_auth_is_refused_on_serverless_endpoints_and_on_the_local_target():
    with pytest.raises(ValueError, match="serverless endpoints take their keys only"):
        type(AZURE).model_validate({**AZURE.model_dump(), "mode": "serverless", "endpoint_auth": "token"})
    with pytest.raises(ValueError, match="local target's server takes its own key only"):
        PipelineSettings(azure={"endpoint_auth": "token"})
    with pytest.raises(ValueError, match="endpoint_auth"):
        PipelineSettings(azure={"endpoint_auth": "certificate"})


def test_token_auth_scope_is_the_sdks_own_audience_for_aad_token_endpoints():
    """The token the callers bring is for the audience azure-ai-ml itself asks for an aad_token endpoint."""
    from azure.ai.ml.constants._common import AAD_TOKEN_RESOURCE_ENDPOINT

    from phi3_pipeline.chat_flow.scoring_contract import SCORING_TOKEN_SCOPE

    assert SCORING_TOKEN_SCOPE == f"{AAD_TOKEN_RESOURCE_ENDPOINT}/.default"


def test_token_auth_run_on_a_key_endpoint_is_refused_in_one_line_naming_both(azure_cloud):
    from phi3_pipeline.targets.azure import online
    from phi3_pipeline.targets.azure.entities import resource_tags

    ml_client = clients.connect(AZURE).ml
    online.ensure_endpoint(ml_client, AZURE, "ep-key", resource_tags("run-1"))
    token_auth = AZURE.model_copy(update={"endpoint_auth": "token"})
    with pytest.raises(ConfigError, match="endpoint ep-key takes auth mode key, but azure.endpoint_auth=token asks "
                                          "for aad_token"):
        online.ensure_endpoint(ml_client, token_auth, "ep-key", resource_tags("run-2"))
