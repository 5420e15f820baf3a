"""The local model registry: each registered model an MLflow model (pyfunc, loaded by serving/chat_model.py)
in `registry/<model>/<version>/`, with its lineage; one version per fine-tune job."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from phi3_pipeline.serving import CHAT_MODEL_CODE
from phi3_pipeline.targets.workspace import Workspace, read_json, write_json_atomic

LINEAGE_FILE = "lineage.json"


def model_dir(ws: Workspace, model_name: str, version: int) -> Path:
    return ws.root / "registry" / model_name / str(version)


def register(ws: Workspace, model_name: str, weights: Path, lineage: dict) -> tuple[int, bool]:
    """(version, created): the version already holding this job's model, else the next one, written whole
    under a temporary name first so a killed run leaves no half-made version."""
    import mlflow.pyfunc  # heavy import, only when a model is registered

    folder = ws.dir("registry", model_name)
    with ws.lock(f"registry-{model_name}"):
        versions = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())
        for version in versions:
            if (read_json(folder / str(version) / LINEAGE_FILE) or {}).get("job_name") == lineage["job_name"]:
                return version, False
        version = (versions[-1] + 1) if versions else 1
        staging = folder / f".{version}.{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            mlflow.pyfunc.save_model(
                path=str(staging),
                loader_module="chat_model",
                data_path=str(weights),
                code_paths=[str(CHAT_MODEL_CODE)],
                pip_requirements=["torch", "transformers", "tokenizers", "safetensors", "peft"],
                metadata={"job_name": lineage["job_name"], "data_hash": lineage["data_hash"]},
            )
            write_json_atomic(staging / LINEAGE_FILE, {**lineage, "registered_at": time.time()})
            os.replace(staging, folder / str(version))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return version, True
