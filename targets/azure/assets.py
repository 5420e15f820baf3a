"""Workspace assets on Azure: the fine-tuning cluster and the registered MLflow model (get-or-create)."""

from __future__ import annotations

from azure.ai.ml import MLClient
from azure.ai.ml.entities import AmlCompute, Model
from azure.core.exceptions import ResourceNotFoundError

from pipeline.config import AzureSettings
from targets.azure.entities import compute_cluster, registered_model


def ensure_cluster(ml_client: MLClient, azure: AzureSettings, tags: dict[str, str]) -> tuple[AmlCompute, bool]:
    """The cluster of that name, created (SEED.md's A100 settings) only if missing; (cluster, created)."""
    try:
        return ml_client.compute.get(azure.compute_name), False
    except ResourceNotFoundError:
        return ml_client.compute.begin_create_or_update(compute_cluster(azure, tags)).result(), True


def register_job_output(ml_client: MLClient, model_name: str, job_name: str,
                        tags: dict[str, str]) -> tuple[Model, bool]:
    """The version registered from this job if there is one, else the next version; (model, created)."""
    versions = list(ml_client.models.list(name=model_name))
    for version in versions:
        if (version.tags or {}).get("job") == job_name:
            return version, False
    next_version = max((int(v.version) for v in versions if str(v.version).isdigit()), default=0) + 1
    return ml_client.models.create_or_update(registered_model(model_name, str(next_version), job_name, tags)), True
