"""Bad input on the Azure target: each gets one `error:` line naming the setting, before any Azure write (through
the CLI, the real SDK clients and the in-memory Resource Manager and registry)."""

from __future__ import annotations

import time
import warnings

import pytest

from phi3_pipeline.cli.commands import run_pipeline_cli
from phi3_pipeline.targets.azure.target import AzureTarget
from tests.azure_fakes import AZURE

warnings.filterwarnings("ignore", message=".*experimental")
AZURE_ARGS = ["--target", "azure", "--azure.subscription_id", AZURE.subscription_id, "--azure.resource_group", "rg",
              "--azure.workspace_name", "ws", "--azure.location", "eastus2"]


@pytest.mark.parametrize(("flags", "expected"), [
    (["--azure.base_model", "Phi-3-mini-4k-instruct"], "Phi-3-mini-4k-instruct v14 is retired for fine-tuning"),
    (["--azure.base_model", "Phi-3-mini-4k-instruct", "--azure.base_model_version", "15"], "v15 is archived"),
    (["--azure.base_model", "Phi-9"], "azure.base_model Phi-9 in registry azureml: no such model"),
    (["--azure.base_model_version", "3"], "azure.base_model_version 3 of Phi-4 does not exist"),
    (["--azure.deploy_vm_size", "Standard_NC6s_v3"], "azure.deploy_vm_size Standard_NC6s_v3 is not among Phi-4 v8's"),
    (["--azure.finetune_vm_size", "Standard_ND96isr_H100_v5"], "is not offered in eastus2"),
    (["--azure.base_model", "Phi-legacy-test", "--azure.training.learning_rate", "0.01"],
     "azure.training.learning_rate 0.01 is outside Phi-legacy-test v2's range"),
    (["--connection_name", "a_connection_name_longer_than_33_chars"], "connection_name 'a_connection_name_longer_"
                                                                      "than_33_chars' does not fit Azure's limit"),
    (["--azure.scoring_contract", "openai"], "azure.scoring_contract: Input should be 'input_data' or "
                                             "'chat_completions'"),
    (["--azure.base_model_version", "latest"], "azure.base_model_version: String should match pattern"),
    (["--azure.mode", "serverless", "--azure.deploy_vm_size", "Standard_NC24ads_A100_v4"],
     "azure.deploy_vm_size: only managed mode has it (serverless runs on no VM of yours"),
    (["--azure.mode", "serverless", "--azure.base_model", "Phi-legacy-test"],
     "Phi-legacy-test is not offered for serverless fine-tuning (offered: phi-4, phi-4-mini-instruct"),
    (["--azure.mode", "serverless", "--azure.location", "westus2"],
     "serverless fine-tuning of Phi-4-mini-instruct is not offered in westus2; it is in eastus2, eastus"),
])
def test_bad_azure_input_is_one_error_line_before_any_write(prefect_api, azure_cloud, tmp_path, capsys, flags,
                                                            expected):
    code = run_pipeline_cli([*AZURE_ARGS, "--local.workspace_dir", str(tmp_path), *flags])
    err = capsys.readouterr().err
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], err
    assert "Traceback" not in err
    assert [r.method for r in azure_cloud.transport.requests if r.method != "GET"] == []
    assert azure_cloud.uploads == []


def test_a_size_other_than_the_existing_clusters_is_refused_before_any_write(prefect_api, azure_cloud, azure_settings,
                                                                            capsys, tmp_path):
    from phi3_pipeline.targets.azure import assets, clients

    assets.ensure_cluster(clients.connect(AZURE).ml, AZURE, "Standard_NC24ads_A100_v4", {})
    writes = len([r for r in azure_cloud.transport.requests if r.method != "GET"])
    code = run_pipeline_cli([*AZURE_ARGS, "--local.workspace_dir", str(tmp_path), "--azure.finetune_vm_size",
                             "Standard_NC40ads_H100_v5"])
    assert code == 2
    assert ("azure.finetune_vm_size is Standard_NC40ads_H100_v5 but cluster phi-ft-cluster exists with "
            "Standard_NC24ads_A100_v4") in capsys.readouterr().err
    assert len([r for r in azure_cloud.transport.requests if r.method != "GET"]) == writes


def test_help_shows_no_retired_model_or_vm_size_as_a_default(capsys):
    with pytest.raises(SystemExit):
        run_pipeline_cli(["--help"])
    out = capsys.readouterr().out
    assert "Phi-4" in out and "Phi-3-mini-4k-instruct/" not in out
    assert "NC6s_v3" not in out and "labels/latest" not in out


def test_a_workspace_without_a_registry_defers_acr_pull_with_a_warning_and_grants_it_once_one_exists(
        azure_cloud, azure_settings, monkeypatch):
    arm = azure_cloud.arm
    arm.container_registry = None
    target = AzureTarget(azure_settings)
    identity = target.ensure_identity()
    assert "AcrPull" not in identity.detail and "no container registry yet" in identity.warnings[0]
    roles = [p for p in arm.resources if "/roleAssignments/" in p]
    assert len(roles) == 3, "the identity's Storage Blob Data Reader and AzureML Metrics Writer, and your lease role"
    assert any("no container registry" in note for note in target.notices())
    plan_lines = {item.resource: item for item in target.plan(*_split_and_job(target))}
    assert plan_lines["role AcrPull"].action == "deferred"
    assert AzureTarget(azure_settings)._grant_acr_pull_once_registry_exists() is False
    arm.container_registry = "/subscriptions/x/resourceGroups/rg/providers/Microsoft.ContainerRegistry/registries/late"
    waited = []
    monkeypatch.setattr(time, "sleep", waited.append)
    assert target._grant_acr_pull_once_registry_exists() is True, "the same run's target sees the new registry"
    assert len([p for p in arm.resources if "/roleAssignments/" in p]) == 4
    assert waited == [azure_settings.azure.role_propagation_s], "a late grant is given time to take effect"
    assert target._grant_acr_pull_once_registry_exists() is True and len(waited) == 1, "held: no second wait"


def _split_and_job(target: AzureTarget):
    from phi3_pipeline.chat_data.split_files import split_and_write

    split = split_and_write(target.settings.dataset, target.scratch_dir())
    return split, target.job_name(split.content_hash)


def test_a_deprecated_model_is_a_warning_in_the_plan(azure_cloud, azure_settings):
    target = AzureTarget(azure_settings.model_copy(update={"azure": azure_settings.azure.model_copy(
        update={"base_model": "Phi-legacy-test"})}))
    warnings_ = [item.detail for item in target.plan(*_split_and_job(target)) if item.action == "warning"]
    assert warnings_ == ["Phi-legacy-test v2 is deprecated for fine-tuning since 2026-01-15, retires 2099-01-15"]


def test_an_unexpected_failure_in_a_stage_is_one_pipeline_error_naming_stage_and_workspace(azure_cloud,
                                                                                          azure_settings):
    from phi3_pipeline.config.errors import PipelineError

    azure_cloud.arm.inject("GET", "/providers/Microsoft.MachineLearningServices/workspaces/ws",
                           (200, {"id": "odd", "name": "ws", "properties": {"storageAccount": 7}}))
    with pytest.raises(PipelineError, match=r"Azure stage 'identity and RBAC' failed unexpectedly in workspace ws "
                                            r"\(resource group rg\)"):
        AzureTarget(azure_settings).ensure_identity()


def test_the_contributor_grant_an_earlier_version_made_is_removed_by_the_identity_stage(azure_cloud, azure_settings):
    from phi3_pipeline.targets.azure.entities import role_assignment_name
    from tests.azure_fakes import GROUP

    name = role_assignment_name(GROUP, "Contributor", "principal-1")
    path = f"{GROUP}/providers/Microsoft.Authorization/roleAssignments/{name}"
    azure_cloud.arm.resources[path] = {"id": path, "name": name, "properties": {"principalId": "principal-1"}}
    identity = AzureTarget(azure_settings).ensure_identity()
    assert "Contributor (removed: unused)" in identity.detail and path not in azure_cloud.arm.resources
    assert "Contributor (removed" not in AzureTarget(azure_settings).ensure_identity().detail
