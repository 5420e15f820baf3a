"""GPU quota preflight on Azure, and the choice of VM sizes it depends on.

Read calls only (`compute.list_sizes`, `compute.list_usage`), so it runs before anything is created. The
fine-tuning cluster's size comes from the model's fine-tuning computes and the deployment's from its inference
computes (targets/azure/catalog.py); by default the first size offered in the region with free quota.

The usages list holds, under one `name.value`, a subscription-level row per VM family and rows per workspace
and per compute (REST spec example `Usage/list.json`); only the subscription-level dedicated rows count, and
the regional total ("Total Cluster Dedicated Regional vCPUs", live `TotalDedicatedCores`) caps them all.
Live answers name families by code (`standardNCADSA100v4Family`), the spec example by label ("Standard
NCADSA100v4 Family Cluster Dedicated vCPUs"): both match. azure-ai-ml 1.35's `Usage` and `VmSize` keep the
service's camelCase fields (`currentValue`, `vCPUs`) and leave their snake_case attributes empty.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from azure.ai.ml import MLClient

from phi3_pipeline.config.errors import ConfigError
from phi3_pipeline.config.settings import AzureSettings
from phi3_pipeline.targets.azure.catalog import CatalogModel, choose_size
from phi3_pipeline.targets.base import ResourceCheck

QUOTA_HELP = "ask for more in the Azure portal: Quotas > Machine learning > {family} in {region}"
REGIONAL_TOTAL = "Total Cluster Dedicated Regional vCPUs"
REGIONAL_TOTAL_NAMES = {"totaldedicatedcores", "totalclusterdedicatedregionalvcpus"}
DEDICATED_SUFFIX = "clusterdedicatedvcpus"
UNLIMITED = -1
UNLIMITED_SHOWN = 1e9
UPGRADE_RESERVE = 1.2


def _key(text: str) -> str:
    return "".join(ch for ch in str(text) if ch.isalnum()).lower()


def _vcpus(size) -> int:
    return int(getattr(size, "vCPUs", None) or size.v_cpus)


@dataclass(frozen=True)
class Row:
    """One subscription-level usage row: vCPUs in use and the limit (None: unlimited)."""

    names: tuple[str, ...]
    used: int
    limit: int | None

    @property
    def cap(self) -> float:
        return float("inf") if self.limit is None else self.limit

    @property
    def free(self) -> float:
        return self.cap - self.used


def _row(usage) -> Row | None:
    """The row if it is a subscription-level dedicated-vCPU row (not a workspace's or a compute's)."""
    fields = vars(usage)
    row_id, kind = str(fields.get("id") or usage.id or ""), str(fields.get("type") or usage.type or "")
    name = usage.name if isinstance(usage.name, dict) else {"value": usage.name}
    names = tuple(_key(n) for n in (name.get("value"), name.get("localizedValue")) if n)
    if "/workspaces/" in row_id.lower() or "/workspace" in kind.lower() or "lowpriority" in " ".join(names + (
            _key(kind),)):
        return None
    limit = fields.get("limit", usage.limit)
    used = fields.get("currentValue", usage.current_value)
    return Row(names=names, used=int(used or 0), limit=None if limit in (None, UNLIMITED) else int(limit))


def usage_rows(ml_client: MLClient, region: str) -> tuple[dict[str, Row], Row | None]:
    """(subscription-level family rows by family key, the regional dedicated total)."""
    families, total = {}, None
    for usage in ml_client.compute.list_usage(location=region):
        row = _row(usage)
        if row is None:
            continue
        if REGIONAL_TOTAL_NAMES & set(row.names):
            total = row
            continue
        for name in row.names:
            families[name.removesuffix(DEDICATED_SUFFIX)] = row
    return families, total


@dataclass(frozen=True)
class Need:
    size: str
    family: str
    vcpus: int
    purpose: str


@dataclass(frozen=True)
class SizePlan:
    """The VM sizes a run uses and the quota checks that follow from them."""

    finetune_vm_size: str
    deploy_vm_size: str
    checks: list[ResourceCheck]


def deployment_instances(azure: AzureSettings) -> int:
    """Instances whose vCPUs a deployment holds: Azure ML reserves 20 % more for upgrades, rounded up (Azure ML
    docs, "Manage and increase quotas", managed online endpoints), so one instance needs the quota of two."""
    return math.ceil(azure.deploy_instance_count * UPGRADE_RESERVE)


def plan_sizes(ml_client: MLClient, azure: AzureSettings, model: CatalogModel,
               cluster_size: str | None = None) -> SizePlan:
    """Choose the cluster's size (an existing cluster keeps its own) and the deployment's, each the first of the
    model's sizes offered in the region whose family's quota limit covers it (the two may share a family), then
    check every family's free vCPUs and the regional total: the cluster at max nodes, the deployment with
    Azure's upgrade reserve. The choice reads limits, not usage, so every stage of a run makes the same one."""
    region = azure.location
    offered = {size.name.lower(): size for size in ml_client.compute.list_sizes(location=region)}
    families, total = usage_rows(ml_client, region)
    drawn: dict[str, int] = defaultdict(int)

    def limit(family: str) -> float:
        row = families.get(_key(family))
        return (row.cap if row else 0) - drawn[_key(family)]

    def choose(setting: str, configured: str, allowed: tuple[str, ...], instances: int, purpose: str) -> Need:
        size = choose_size(setting, configured, allowed, model, region, offered,
                           lambda s: limit(s.family) >= _vcpus(s) * instances)
        vm = offered[size.lower()]
        drawn[_key(vm.family)] += _vcpus(vm) * instances
        return Need(size=size, family=vm.family, vcpus=_vcpus(vm) * instances, purpose=f"{purpose} {size} x{instances}")

    configured = azure.finetune_vm_size
    if cluster_size and configured and cluster_size.lower() != configured.lower():
        raise ConfigError(f"azure.finetune_vm_size is {configured} but cluster {azure.compute_name} exists with "
                          f"{cluster_size}: leave the setting empty, or choose another azure.compute_name")
    if cluster_size and cluster_size.lower() not in {size.lower() for size in model.finetune_computes}:
        raise ConfigError(f"cluster {azure.compute_name} exists with {cluster_size}, which is not among "
                          f"{model.label}'s fine-tuning computes ({', '.join(model.finetune_computes)}): delete it "
                          "(the teardown does, once idle, if this pipeline made it; else az ml compute delete) or set "
                          "another azure.compute_name")
    cluster = choose("finetune_vm_size", cluster_size or configured, model.finetune_computes,
                     azure.compute_max_nodes, "fine-tuning cluster")
    deployment = choose("deploy_vm_size", azure.deploy_vm_size, model.inference_computes,
                        deployment_instances(azure), "online deployment")
    needed: dict[str, list[Need]] = defaultdict(list)
    for need in (cluster, deployment):
        needed[need.family].append(need)
    checks = [ResourceCheck(resource=f"{family} vCPUs in {region} ({', '.join(n.purpose for n in needs)})",
                            needed=sum(n.vcpus for n in needs), available=_free(families.get(_key(family))),
                            unit="vCPUs", advice=QUOTA_HELP.format(family=family, region=region))
              for family, needs in needed.items()]
    if total is not None:
        checks.append(ResourceCheck(resource=f"{REGIONAL_TOTAL} in {region}", needed=cluster.vcpus + deployment.vcpus,
                                    available=_free(total),
                                    unit="vCPUs", advice=QUOTA_HELP.format(family=REGIONAL_TOTAL, region=region)))
    return SizePlan(finetune_vm_size=cluster.size, deploy_vm_size=deployment.size, checks=checks)


def _free(row: Row | None) -> float:
    """Free vCPUs of a row; none is 0, unlimited is shown as a large number."""
    return 0 if row is None else min(row.free, UNLIMITED_SHOWN)
