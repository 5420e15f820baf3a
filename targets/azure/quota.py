"""GPU quota preflight on Azure: free vCPUs of the VM families the fine-tune and the deployment use.

Read calls only (`compute.list_sizes`, `compute.list_usage`), so it runs before anything is created.
azure-ai-ml 1.35's `Usage` and `VmSize` entities keep the service's camelCase fields (`currentValue`,
`vCPUs`) and leave their snake_case attributes empty: the helpers below read what the service sent.
"""

from __future__ import annotations

from collections import defaultdict

from azure.ai.ml import MLClient

from pipeline.config import AzureSettings
from pipeline.errors import PipelineError
from targets.base import ResourceCheck

QUOTA_HELP = "ask for more in the Azure portal: Quotas > Machine learning > {family} in {region}"


def _vcpus(size) -> int:
    return int(getattr(size, "vCPUs", None) or size.v_cpus)


def _current(usage) -> int:
    return int(vars(usage).get("currentValue", usage.current_value) or 0)


def _family(usage) -> str:
    return (usage.name["value"] if isinstance(usage.name, dict) else usage.name).lower()


def vcpu_needs(azure: AzureSettings, update_headroom: bool = True) -> list[tuple[str, int, str]]:
    """(VM size, instances, purpose): the cluster at max nodes, the deployment twice over when it is
    updated beside the live one (an update runs old and new instances side by side)."""
    deployment_instances = azure.deploy_instance_count * (2 if update_headroom else 1)
    return [(azure.finetune_vm_size, azure.compute_max_nodes, "fine-tuning cluster"),
            (azure.deploy_vm_size, deployment_instances, "online deployment")]


def vcpu_checks(ml_client: MLClient, azure: AzureSettings) -> list[ResourceCheck]:
    """One check per VM family: vCPUs needed by the run against the family's free quota in the region."""
    region = azure.location
    sizes = {size.name.lower(): size for size in ml_client.compute.list_sizes(location=region)}
    usages = {_family(usage): usage for usage in ml_client.compute.list_usage(location=region)}
    needed: dict[str, int] = defaultdict(int)
    purposes: dict[str, list[str]] = defaultdict(list)
    for vm_size, instances, purpose in vcpu_needs(azure):
        size = sizes.get(vm_size.lower())
        if size is None:
            raise PipelineError(f"VM size {vm_size} is not offered in {region}: choose another region or size")
        needed[size.family] += _vcpus(size) * instances
        purposes[size.family].append(f"{purpose} {vm_size} x{instances}")
    checks = []
    for family, vcpus in needed.items():
        usage = usages.get(family.lower())
        free = (usage.limit - _current(usage)) if usage is not None else 0
        checks.append(ResourceCheck(
            resource=f"{family} vCPUs in {region} ({', '.join(purposes[family])})", needed=vcpus,
            available=free, unit="vCPUs", advice=QUOTA_HELP.format(family=family, region=region)))
    return checks
