"""Deterministic names from content, so a re-run finds what the last run made."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pipeline.config import BUILTIN_BASE_MODEL, PipelineSettings


def content_hash(value: object) -> str:
    """sha256 of a JSON-serialisable value, independent of key order."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def base_model_identity(base_model: str) -> str:
    """The built-in name, or the checkpoint's config.json hash (a moved folder is the same model)."""
    if base_model == BUILTIN_BASE_MODEL:
        return base_model
    config = (Path(base_model).expanduser() / "config.json").read_bytes()
    return "checkpoint-" + hashlib.sha256(config).hexdigest()[:16]


def job_name(settings: PipelineSettings, data_hash: str) -> str:
    """The fine-tune job's name: a hash of the data, the base model and every training setting."""
    inputs = {
        "data": data_hash,
        "base_model": base_model_identity(settings.training.base_model),
        "training": settings.training.model_dump(exclude={"base_model"}),
        "seed": settings.dataset.seed,
    }
    return f"{settings.model_name}-ft-{content_hash(inputs)[:12]}"
