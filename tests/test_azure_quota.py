"""VM sizes from the model's supported computes, and the GPU quota preflight, through the real MLClient over a
scripted offline transport whose usages answer has the REST spec example's shape (subscription, workspace and
compute rows under one name, and the regional total)."""

from __future__ import annotations

import warnings
from dataclasses import replace

import pytest
from azure.ai.ml import MLClient

from phi3_pipeline.config.errors import ConfigError, InsufficientResourcesError
from phi3_pipeline.targets.azure.catalog import CatalogModel
from phi3_pipeline.targets.azure.quota import plan_sizes
from phi3_pipeline.targets.base import raise_if_short
from tests.azure_fakes import AZURE, PHI4_COMPUTES, VM_SIZES, ScriptedTransport, offline_ml_client, vcpu_usages

warnings.filterwarnings("ignore", message=".*experimental")
PHI4 = CatalogModel(name="Phi-4", version="8", asset_id="azureml://registries/azureml/models/Phi-4/versions/8",
                    finetune_computes=tuple(PHI4_COMPUTES), inference_computes=tuple(PHI4_COMPUTES),
                    finetune_tasks=("chat-completion",))


def client(usage_body: dict, sizes: list[dict] = VM_SIZES) -> tuple[MLClient, ScriptedTransport]:
    def handler(request):
        if "/vmSizes" in request.url:
            return 200, {"value": sizes}
        if "/usages" in request.url:
            return 200, usage_body
        return 404, {"error": {"code": "NotFound", "message": request.url}}

    return offline_ml_client(handler)


def checks_by_family(plan) -> dict[str, tuple[float, float]]:
    return {c.resource.split()[0]: (c.needed, c.available) for c in plan.checks}


@pytest.mark.parametrize("labels", [False, True], ids=["live codes", "spec example labels"])
def test_both_sizes_come_from_the_models_lists_and_draw_on_one_family(labels):
    ml_client, transport = client(vcpu_usages(a100=(0, 96), labels=labels))
    plan = plan_sizes(ml_client, AZURE, PHI4)
    assert (plan.finetune_vm_size, plan.deploy_vm_size) == ("Standard_NC24ads_A100_v4", "Standard_NC24ads_A100_v4")
    # the cluster at max nodes (24) and the deployment twice over for a blue/green update (48), in one family
    assert checks_by_family(plan) == {"standardNCADSA100v4Family": (72, 96), "Total": (72, 400)}
    raise_if_short(plan.checks)
    assert all(r.method == "GET" for r in transport.requests)


def test_the_deployment_moves_to_the_next_size_with_quota_when_the_cluster_takes_the_family():
    ml_client, _ = client(vcpu_usages(a100=(0, 24), h100=(0, 80)))
    plan = plan_sizes(ml_client, AZURE, PHI4)
    assert (plan.finetune_vm_size, plan.deploy_vm_size) == ("Standard_NC24ads_A100_v4", "Standard_NC40ads_H100_v5")
    assert checks_by_family(plan) == {"standardNCADSA100v4Family": (24, 24), "standardNCadsH100v5Family": (80, 80),
                                      "Total": (104, 400)}


def test_workspace_and_compute_rows_of_the_same_name_are_not_the_familys_quota():
    ml_client, _ = client(vcpu_usages(a100=(0, 0), h100=(0, 0)))  # the compute rows after them allow 10,000
    with pytest.raises(InsufficientResourcesError) as short:
        raise_if_short(plan_sizes(ml_client, AZURE, PHI4).checks)
    message = str(short.value)
    assert "standardNCADSA100v4Family vCPUs in eastus2" in message and "need 72, free 0" in message
    assert "Quotas > Machine learning" in message


def test_the_regional_total_caps_the_families():
    ml_client, _ = client(vcpu_usages(total=(380, 400)))
    with pytest.raises(InsufficientResourcesError, match="Total Cluster Dedicated Regional vCPUs in eastus2 .*short "
                                                         "by 52 vCPUs"):
        raise_if_short(plan_sizes(ml_client, AZURE, PHI4).checks)


def test_an_existing_cluster_keeps_its_size():
    ml_client, _ = client(vcpu_usages())
    assert plan_sizes(ml_client, AZURE, PHI4, cluster_size="Standard_NC40ads_H100_v5").finetune_vm_size == \
        "Standard_NC40ads_H100_v5"


@pytest.mark.parametrize(("setting", "size", "model", "error"), [
    ("deploy_vm_size", "Standard_NC6s_v3", PHI4,
     "is not among Phi-4 v8's inference computes: Standard_NC24ads_A100_v4"),
    ("deploy_vm_size", "Standard_NC6s_v3", replace(PHI4, inference_computes=("Standard_NC6s_v3",
                                                                             "Standard_NC24ads_A100_v4")),
     "was retired on 2025-09-30; choose one of Standard_NC24ads_A100_v4"),
    ("finetune_vm_size", "Standard_ND96isr_H100_v5", PHI4, "is not offered in eastus2; offered there from Phi-4 v8's "
                                                           "list: Standard_NC24ads_A100_v4, Standard_NC40ads_H100_v5"),
])
def test_a_size_outside_the_models_list_retired_or_not_offered_is_refused(setting, size, model, error):
    ml_client, _ = client(vcpu_usages())
    with pytest.raises(ConfigError, match=f"azure.{setting} {size} {error}"):
        plan_sizes(ml_client, AZURE.model_copy(update={setting: size}), model)


def test_a_region_offering_none_of_the_models_sizes_is_a_clear_error():
    ml_client, _ = client(vcpu_usages(), sizes=[s for s in VM_SIZES if s["name"] == "Standard_NC6s_v3"])
    with pytest.raises(ConfigError, match="none of Phi-4 v8's fine-tuning computes .* is offered in eastus2"):
        plan_sizes(ml_client, AZURE, PHI4)


def test_the_choice_reads_quota_limits_not_usage_so_every_stage_makes_the_same_one():
    idle, busy = client(vcpu_usages(a100=(0, 96)))[0], client(vcpu_usages(a100=(90, 96)))[0]
    assert plan_sizes(idle, AZURE, PHI4).deploy_vm_size == plan_sizes(busy, AZURE, PHI4).deploy_vm_size
    with pytest.raises(InsufficientResourcesError, match="need 72, free 6"):
        raise_if_short(plan_sizes(busy, AZURE, PHI4).checks)


def test_an_existing_cluster_of_a_size_the_model_does_not_list_is_named_as_the_cause():
    ml_client, _ = client(vcpu_usages())
    with pytest.raises(ConfigError, match="cluster phi-ft-cluster exists with Standard_NC6s_v3, which is not among "
                                          "Phi-4 v8's fine-tuning computes"):
        plan_sizes(ml_client, AZURE, PHI4, cluster_size="Standard_NC6s_v3")
