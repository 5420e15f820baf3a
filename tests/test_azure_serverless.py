"""Serverless mode on Azure, offline: the real SDK clients against the in-memory Resource Manager, grounded on
Microsoft's serverless notebook (job without compute, one serverless endpoint per model version) and on the
service's recorded refusal of a region (azure-sdk-assets d0dbcead, 2026-03-04)."""

from __future__ import annotations

import json
import warnings
from datetime import UTC, datetime, timedelta

import pytest

from phi3_pipeline.chat_flow import promptflow_chat
from phi3_pipeline.cli.commands import run_pipeline_cli
from phi3_pipeline.config.errors import ConfigError, PipelineError
from phi3_pipeline.config.settings import AzureSettings, PipelineSettings
from phi3_pipeline.targets import get_target
from phi3_pipeline.targets.azure import clients, serverless
from phi3_pipeline.targets.azure.entities import deployment_lease, live_now, resource_tags
from phi3_pipeline.targets.azure.serverless_target import ServerlessAzureTarget
from tests.azure_fakes import AZURE, ENDPOINT_KEY, WORKSPACES, FakeArm, puts, request_json, scoring_stub

warnings.filterwarnings("ignore", message=".*experimental")
ANSWER = "Microsoft was founded by Bill Gates and Paul Allen."
PROJECT = f"{WORKSPACES}/phi3-pipeline-project"
SERVERLESS_ARGS = ["--target", "azure", "--azure.mode", "serverless", "--azure.subscription_id", AZURE.subscription_id,
                   "--azure.resource_group", "rg", "--azure.workspace_name", "ws"]


@pytest.fixture
def settings(azure_settings) -> PipelineSettings:
    azure = {**AZURE.model_dump(exclude_defaults=True), "mode": "serverless"}
    return azure_settings.model_copy(update={"azure": AzureSettings.model_validate(azure)})


@pytest.fixture
def scoring(azure_cloud):
    """(requests answered, refusals) of a 127.0.0.1 stand-in for the serverless endpoints' inference URIs."""
    with scoring_stub(ANSWER) as (scoring_uri, answered, refusals):
        azure_cloud.arm.serverless_uri = scoring_uri.removesuffix("/score")
        azure_cloud.arm.job_states = ["Queued", "Running", "Completed"]
        yield answered, refusals


@pytest.fixture
def endpoint(scoring):
    return scoring[0]


def serverless_endpoints(arm: FakeArm) -> dict[str, dict]:
    return {path.rsplit("/", 1)[1]: body for path, body in arm.resources.items() if "/serverlessEndpoints/" in path}


def test_serverless_settings_pick_phi4_mini_and_refuse_vm_settings():
    managed = PipelineSettings(target="azure", azure=AZURE.model_dump())
    assert managed.azure.catalog_model == "Phi-4", "managed stays the default, with its own default model"
    serverless_run = {**managed.model_dump(exclude_defaults=True), "azure": {**AZURE.model_dump(exclude_defaults=True),
                                                                            "mode": "serverless"}}
    assert PipelineSettings(**serverless_run).azure.catalog_model == "Phi-4-mini-instruct", \
        "settings that come back whole from Prefect take the mode's model"
    with pytest.raises(ValueError, match=r"azure.compute_name, azure.finetune_vm_size: only managed mode has them"):
        PipelineSettings(target="azure", azure={**AZURE.model_dump(), "mode": "serverless",
                                                "finetune_vm_size": "Standard_NC24ads_A100_v4", "compute_name": "c"})


def test_serverless_pipeline_runs_in_the_foundry_project_and_a_rerun_creates_nothing(prefect_api, settings,
                                                                                   azure_cloud, endpoint):
    from flows.full_pipeline import full_pipeline

    arm, transport = azure_cloud.arm, azure_cloud.transport
    result = full_pipeline(settings)
    assert result["answer"] == ANSWER and result["model_version"] == 1
    assert ENDPOINT_KEY not in json.dumps(result)
    assert not [url for url in puts(transport) if "/computes/" in url or "/roleAssignments/" in url
                or "userAssignedIdentities" in url or "/onlineEndpoints/" in url], "no VM, identity or role"
    assert {values["kind"] for values in azure_cloud.templates.deployed} == {"hub", "project"}
    (job_put,) = transport.calls("PUT", "/jobs/")
    assert job_put.url.split("?")[0].startswith(f"{FakeArm.BASE}{PROJECT}/jobs/"), "in the hub-based project"
    job = request_json(job_put)["properties"]
    assert "computeId" not in job and job["jobType"] == "FineTuning"
    assert job["fineTuningDetails"]["model"]["uri"] == \
        "azureml://registries/azureml/models/Phi-4-mini-instruct/versions/1"
    (name, body), = serverless_endpoints(arm).items()
    assert name.startswith("sl-phi3-custom-") and name.endswith("-v1") and len(name) <= 32
    guid = arm.resources[PROJECT]["properties"]["workspaceId"]
    assert body["properties"]["modelSettings"]["modelId"] == \
        f"azureml://locations/eastus2/workspaces/{guid}/models/phi3-custom/versions/1"
    assert body["tags"]["managed-by"] == "phi3-pipeline" and "live-since" in body["tags"]
    # the gate's question and the go-live proof on /v1/chat/completions, then the smoke chat through Prompt flow
    assert [request["contract"] for request in endpoint] == ["chat_completions"] * 3
    connection = json.loads(transport.calls("PUT", "/phi3-pipeline-project/connections/")[-1].body)["properties"]
    assert connection["credentials"]["keys"]["endpoint"] == f"{arm.serverless_uri}/{name}/v1"
    assert connection["metadata"]["contract"] == "chat_completions"
    assert promptflow_chat.connection_endpoint("phi3_azure_test") == f"{arm.serverless_uri}/{name}/v1"
    assert {request["endpoint"] for request in endpoint} == {name}

    before = len(puts(transport))
    again = full_pipeline(settings)
    assert again["answer"] == ANSWER
    new_writes = puts(transport)[before:]
    assert all("/connections/" in url for url in new_writes), new_writes
    assert transport.calls("DELETE") == []


def test_serverless_retraining_gets_its_own_endpoint_moves_the_connection_and_removes_the_old(
        prefect_api, settings, azure_cloud, endpoint):
    from flows.full_pipeline import full_pipeline

    arm = azure_cloud.arm
    arm.operation_ticks = 2  # busy like the service: every operation runs a while
    full_pipeline(settings)
    (first,) = serverless_endpoints(arm)
    retrained = settings.model_copy(update={"azure": settings.azure.model_copy(update={
        "training": settings.azure.training.model_copy(update={"epochs": 2})})})
    arm.job_states = ["Running", "Completed"]
    result = full_pipeline(retrained)
    assert result["model_version"] == 2
    (second,) = serverless_endpoints(arm)
    assert second == first.removesuffix("-v1") + "-v2", "the old endpoint went once the new one answered"
    live = get_target(retrained).live_deployment()
    assert live.endpoint_name == second and live.model_version == 2
    assert endpoint[-2]["endpoint"] == second, "the go-live proof went to the new endpoint's own URI"
    assert endpoint[-1]["endpoint"] == second, "and so did the smoke chat, through the moved connection"
    assert arm.conflicts == [] and arm.polled_in_progress > 0


def test_serverless_a_new_version_that_fails_going_live_leaves_the_old_one_live_and_connected(
        prefect_api, settings, azure_cloud, scoring):
    from flows.full_pipeline import full_pipeline

    arm, (_, refusals) = azure_cloud.arm, scoring
    full_pipeline(settings)
    (first,) = serverless_endpoints(arm)
    live_since = serverless_endpoints(arm)[first]["tags"]["live-since"]
    retrained = settings.model_copy(update={"dataset": settings.dataset.model_copy(update={"sample_size": 210})})
    arm.job_states = ["Running", "Completed"]
    refusals.append(lambda request: request["endpoint"] != first and request["max_tokens"] == 16)  # its proof
    with pytest.raises(PipelineError, match="answered HTTP 400"):
        full_pipeline(retrained)
    assert list(serverless_endpoints(arm)) == [first], "the candidate went"
    assert serverless_endpoints(arm)[first]["tags"]["live-since"] == live_since, "the old one keeps its age"
    assert get_target(settings).live_deployment().endpoint_name == first
    assert promptflow_chat.connection_endpoint("phi3_azure_test") == f"{arm.serverless_uri}/{first}/v1"


def test_serverless_region_without_the_offer_is_refused_before_any_write(azure_cloud, tmp_path, capsys):
    code = run_pipeline_cli([*SERVERLESS_ARGS, "--azure.location", "westeurope", "--local.workspace_dir",
                             str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2, err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert "not offered in westeurope" in line and "eastus2, eastus, northcentralus" in line
    assert azure_cloud.transport.calls("PUT") == [] and azure_cloud.uploads == []


def test_serverless_model_without_the_offer_is_refused_naming_those_with_it(azure_cloud, settings):
    other = settings.model_copy(update={"azure": settings.azure.model_copy(update={"base_model": "Phi-legacy-test"})})
    with pytest.raises(ConfigError, match="Phi-legacy-test is not offered for serverless fine-tuning.*phi-4-mini"):
        get_target(other).check_resources()
    assert azure_cloud.transport.calls("PUT") == []


def test_serverless_the_services_own_region_refusal_is_one_clear_error(azure_cloud, settings):
    """The dated table may lag the service: the recorded 400 at submit time is named, not a raw error."""
    target = get_target(settings)
    target.ensure_identity()
    azure_cloud.arm.resources[PROJECT]["location"] = "westus2"
    target.__dict__.pop("_workspace", None)
    dataset = target.store_dataset(_split(target, settings))
    with pytest.raises(ConfigError, match="Serverless FineTuning not supported in westus2.*eastus2"):
        target.find_or_submit_job("phi3-custom-ft-0123", dataset)


def test_serverless_project_name_on_a_workspace_that_is_not_hub_based_is_refused(azure_cloud, settings):
    on_ws = settings.model_copy(update={"azure": settings.azure.model_copy(update={"project_name": "ws"})})
    with pytest.raises(ConfigError, match="azure.project_name ws is a workspace of kind workspace, not a hub-based"):
        get_target(on_ws).check_resources()


def test_serverless_an_unexpected_failure_names_the_foundry_project_not_the_ml_workspace(azure_cloud, settings,
                                                                                         monkeypatch):
    def unexpected(model, region):
        raise KeyError(region)

    monkeypatch.setattr(serverless, "offer_refusal", unexpected)
    with pytest.raises(PipelineError, match=r"Azure stage 'quota check' failed unexpectedly in Foundry project "
                                            r"phi3-pipeline-project \(resource group rg\): "):
        get_target(settings).check_resources()


def test_serverless_plan_shows_token_and_hourly_prices_or_says_unknown_and_no_vm(azure_cloud, tmp_path, capsys):
    code = run_pipeline_cli([*SERVERLESS_ARGS, "--azure.location", "eastus2", "--local.workspace_dir",
                             str(tmp_path), "--plan"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert {r.method for r in azure_cloud.transport.requests} == {"GET"}
    assert "Phi-4-mini-instruct v1" in out and "serverless fine-tune job" in out
    assert "catalog facts of Phi-4-mini-instruct v1" in out and "fine-tuning tasks from nowhere" in out
    assert "training per token: price unknown" in out and "hosting billed hourly until teardown: price unknown" in out
    assert "serverless fine-tuning of Phi-4-mini-instruct in eastus2" in out
    assert "Standard_" not in out and "compute" not in out.lower(), "no VM, cluster or VM list in serverless mode"
    assert "Phi-3" not in out


def test_serverless_teardown_removes_every_version_and_the_sweep_only_what_has_ended(azure_cloud, settings):
    target: ServerlessAzureTarget = get_target(settings)
    target.ensure_identity()
    ml = clients.connect(settings.azure).project_ml
    now = datetime.now(UTC)
    prefix, model_id = target.endpoint_name, "azureml://locations/eastus2/workspaces/g/models/phi3-custom/versions/1"
    old_live = live_now(resource_tags("run-1", now - timedelta(hours=50)), now - timedelta(hours=40))
    serverless.ensure_endpoint(ml, f"{prefix}-v1", model_id, "eastus2", old_live, claim=False)
    ended = {**resource_tags("run-2", now - timedelta(days=2)),
             **deployment_lease("run-2", 30, now - timedelta(days=1))}
    serverless.ensure_endpoint(ml, f"{prefix}-v2", model_id, "eastus2", ended, claim=False)
    leased = {**resource_tags("run-3", now), **deployment_lease("run-3", 240, now)}
    serverless.ensure_endpoint(ml, f"{prefix}-v3", model_id, "eastus2", leased, claim=False)
    ml.serverless_endpoints.begin_create_or_update(
        serverless.serverless_endpoint("not-ours-v1", model_id, "eastus2", {"owner": "someone"})).result()

    swept = target.sweep(older_than_hours=24)
    assert sorted(swept.removed) == [f"serverless endpoint {prefix}-v1", f"serverless endpoint {prefix}-v2"]
    assert sorted(serverless_endpoints(azure_cloud.arm)) == ["not-ours-v1", f"{prefix}-v3"]

    report = target.teardown()
    assert [item for item in report.removed if item.startswith("serverless")] == [f"serverless endpoint {prefix}-v3"]
    assert sorted(serverless_endpoints(azure_cloud.arm)) == ["not-ours-v1"], "never what it did not make"
    assert target.teardown().removed == []


def _split(target, settings):
    from phi3_pipeline.chat_data.split_files import split_once

    return split_once(settings.dataset, target.local_root())



def test_serverless_teardown_before_any_run_finds_everything_gone(azure_cloud, settings):
    report = get_target(settings).teardown()
    assert report.removed == [] and report.failed == []
    assert any(item.startswith("serverless endpoints sl-phi3-custom-") for item in report.already_gone)
    assert azure_cloud.transport.calls("DELETE") == []
