"""Workspace assets on Azure: data assets, the fine-tuning cluster and the registered MLflow model
(get-or-create)."""

from __future__ import annotations

from pathlib import Path

from azure.ai.ml import MLClient
from azure.ai.ml.entities import AmlCompute, Data, Model

from pipeline.config import AzureSettings
from targets.azure.clients import found, get_or_create
from targets.azure.entities import compute_cluster, data_asset, registered_model


def ensure_data_asset(ml_client: MLClient, name: str, local_file: Path, content_hash: str,
                      tags: dict[str, str]) -> tuple[Data, bool]:
    """The asset version named by the content hash; uploaded (to the default datastore) only if missing."""
    entity = data_asset(name, str(local_file), content_hash, tags)
    return get_or_create(lambda: ml_client.data.get(name, entity.version),
                         lambda: ml_client.data.create_or_update(entity))


def ensure_cluster(ml_client: MLClient, azure: AzureSettings, tags: dict[str, str]) -> tuple[AmlCompute, bool]:
    """The cluster of that name, created (SEED.md's A100 settings) only if missing; (cluster, created)."""
    return get_or_create(lambda: ml_client.compute.get(azure.compute_name),
                         lambda: ml_client.compute.begin_create_or_update(compute_cluster(azure, tags)).result())


def register_job_output(ml_client: MLClient, model_name: str, job_name: str,
                        tags: dict[str, str]) -> tuple[Model, bool]:
    """The version registered from this job if there is one, else the next version; (model, created)."""
    versions = list(ml_client.models.list(name=model_name))
    for version in versions:
        if (version.tags or {}).get("job") == job_name:
            return version, False
    next_version = max((int(v.version) for v in versions if str(v.version).isdigit()), default=0) + 1
    return ml_client.models.create_or_update(registered_model(model_name, str(next_version), job_name, tags)), True


def delete_cluster(ml_client: MLClient, name: str) -> bool:
    """Delete the cluster; False if it was already gone."""
    return found(lambda: (ml_client.compute.get(name), ml_client.compute.begin_delete(name).result()))
