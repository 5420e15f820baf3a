"""Workspace assets on Azure: data assets, the fine-tuning cluster and the registered MLflow model
(get-or-create)."""

from __future__ import annotations

from pathlib import Path

from azure.ai.ml import MLClient
from azure.ai.ml.entities import AmlCompute, Data, Model
from azure.core.exceptions import ResourceNotFoundError

from phi3_pipeline.config.settings import AzureSettings
from phi3_pipeline.targets.azure.clients import delete_if_made_here, get_or_create
from phi3_pipeline.targets.azure.entities import (
    FINETUNE_OUTPUT,
    compute_cluster,
    data_asset,
    made_here,
    registered_model,
)


def ensure_data_asset(ml_client: MLClient, name: str, local_file: Path, content_hash: str,
                      tags: dict[str, str]) -> tuple[Data, bool]:
    """The asset version named by the content hash; uploaded (to the default datastore) only if missing."""
    entity = data_asset(name, str(local_file), content_hash, tags)
    return get_or_create(lambda: ml_client.data.get(name, entity.version),
                         lambda: ml_client.data.create_or_update(entity))


def cluster_size(ml_client: MLClient, name: str) -> str | None:
    """The VM size of the existing cluster of that name, None if there is none (a read call)."""
    try:
        return ml_client.compute.get(name).size
    except ResourceNotFoundError:
        return None


def ensure_cluster(ml_client: MLClient, azure: AzureSettings, vm_size: str,
                   tags: dict[str, str]) -> tuple[AmlCompute, bool]:
    """The cluster of that name, created (SEED.md's settings, the chosen size) only if missing; (cluster, created)."""
    return get_or_create(lambda: ml_client.compute.get(azure.compute_name),
                         lambda: ml_client.compute.begin_create_or_update(
                             compute_cluster(azure, vm_size, tags)).result())


def adopt_job_model(ml_client: MLClient, model_name: str, job_name: str, lineage: dict[str, str],
                    tags: dict[str, str]) -> tuple[Model, bool]:
    """The model version the fine-tuning service registered from the job (`output_model_name_prefix`), found by
    the job's `registered_model` output, else by its lineage (`jobName` or our `job` tag), and given the
    lineage tags; registered here (with `tags` too) only if the service made none. (model, created)."""
    made, versions = _registered_by_job_output(ml_client, model_name, job_name), []
    if made is None:
        versions = _versions(ml_client, model_name)
        made = next((v for v in versions if v.job_name == job_name or (v.tags or {}).get("job") == job_name), None)
    wanted = {**lineage, "job": job_name}
    if made is None:
        next_version = max((int(v.version) for v in versions if str(v.version).isdigit()), default=0) + 1
        return ml_client.models.create_or_update(
            registered_model(model_name, str(next_version), job_name, {**tags, **wanted})), True
    if any((made.tags or {}).get(key) != value for key, value in wanted.items()):
        made.tags = {**tags, **(made.tags or {}), **wanted}  # tags are mutable: get + create_or_update, as
        made = ml_client.models.create_or_update(made)       # `az ml model update` does
    return made, False


def _registered_by_job_output(ml_client: MLClient, model_name: str, job_name: str) -> Model | None:
    """The version the job's `registered_model` output names, if the service filled it in."""
    try:
        output = (ml_client.jobs.get(job_name).outputs or {}).get(FINETUNE_OUTPUT)
    except ResourceNotFoundError:
        return None
    version = getattr(output, "version", None)
    if version and getattr(output, "name", None) == model_name:
        return ml_client.models.get(model_name, str(version))
    return None


def _versions(ml_client: MLClient, model_name: str) -> list[Model]:
    """Every version of the model; none yet is a 404 from the service (recorded), read as an empty list."""
    try:
        return list(ml_client.models.list(name=model_name))
    except ResourceNotFoundError:
        return []


# Microsoft's cost guide (azure-ai-docs, articles/machine-learning/concept-plan-manage-cost.md): each compute
# cluster has a load balancer billed, about 0.33 USD a day, until the cluster is deleted, even at 0 nodes.
CLUSTER_IDLE_COST = "its load balancer bills about 0.33 USD a day until it is deleted, even at 0 nodes"


def cluster_note(cluster: AmlCompute) -> str:
    """What a kept cluster costs while nothing runs on it: its minimum nodes bill all the time."""
    if cluster.min_instances:
        return f"min {cluster.min_instances} nodes: {cluster.size} x{cluster.min_instances} bills all the time"
    return f"min 0 nodes; {CLUSTER_IDLE_COST}"


def delete_idle_cluster(ml_client: MLClient, name: str, other_jobs: list) -> tuple[str, str]:
    """Delete the cluster if this pipeline made it and no other job runs on it: ('removed' | 'gone' | 'kept', why
    kept and what it costs). A team's cluster adopted by name is kept (a delete would kill its jobs)."""
    try:
        cluster = ml_client.compute.get(name)
    except ResourceNotFoundError:
        return "gone", ""
    if not made_here(cluster.tags):
        return "kept", f"not made by this pipeline; {cluster_note(cluster)}"
    # a job without a compute of its own (a pipeline job, whose steps may run anywhere) may be using it too
    users = [job.name for job in other_jobs if str(job.compute or name).rsplit("/", 1)[-1] == name]
    if users:
        return "kept", f"in use by job {', '.join(users)}; {cluster_note(cluster)}"
    return delete_if_made_here(f"compute {name}", lambda: cluster,
                               lambda: ml_client.compute.begin_delete(name).result()), ""
