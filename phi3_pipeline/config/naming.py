"""Deterministic names from content, so a re-run finds what the last run made."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from phi3_pipeline.config.settings import BUILTIN_BASE_MODEL


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


def job_name(model_name: str, inputs: dict) -> str:
    """The fine-tune job's name: the model name and a hash of everything the job is made of (each target says
    what that is, so a local-only knob never names a second paid Azure job)."""
    return f"{model_name}-ft-{content_hash(inputs)[:12]}"
