"""Deterministic names from content, so a re-run finds what the last run made."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pipeline.config import AZURE_TRAINING_FIELDS, BUILTIN_BASE_MODEL, PipelineSettings


def content_hash(value: object) -> str:
    """sha256 of a JSON-serialisable value, independent of key order."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json")
SAMPLED_BYTES = 1 << 16


def base_model_identity(base_model: str) -> str:
    """The built-in name, or a hash of the checkpoint's config, index and weight files (names, sizes, first
    and last bytes): a moved folder is the same model, other weights are not. Reads 128 KiB a file."""
    if base_model == BUILTIN_BASE_MODEL:
        return base_model
    folder = Path(base_model).expanduser()
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES):
        size = path.stat().st_size
        with path.open("rb") as handle:
            digest.update(f"{path.name}:{size}:".encode() + handle.read(SAMPLED_BYTES))
            handle.seek(max(0, size - SAMPLED_BYTES))
            digest.update(handle.read(SAMPLED_BYTES))
    return "checkpoint-" + digest.hexdigest()[:16]


def job_name(settings: PipelineSettings, data_hash: str) -> str:
    """The fine-tune job's name: a hash of the data, the base model and every setting the job uses
    (on Azure only the catalog model and the advanced settings it takes: a local-only knob must not
    start a second paid job)."""
    if settings.target == "azure":
        inputs = {
            "data": data_hash,
            "catalog_model": settings.azure.finetune_model,
            "training": settings.training.model_dump(include=set(AZURE_TRAINING_FIELDS)),
            "cluster": [settings.azure.compute_name, settings.azure.finetune_vm_size],
        }
    else:
        inputs = {
            "data": data_hash,
            "base_model": base_model_identity(settings.training.base_model),
            "training": settings.training.model_dump(exclude={"base_model"}),
            "seed": settings.dataset.seed,
        }
    return f"{settings.model_name}-ft-{content_hash(inputs)[:12]}"
