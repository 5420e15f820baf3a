"""What this machine offers the local target: the GPU training would use and a checkpoint's size."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def visible_gpu() -> tuple[str, float] | None:
    """Name and free GiB of the GPU training would use (read with nvidia-smi, so torch stays unloaded)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "" or not shutil.which("nvidia-smi"):
        return None
    try:
        query = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.free", "--format=csv,noheader,nounits"],
                               capture_output=True, text=True, timeout=10, check=True)
        name, free_mib = query.stdout.strip().splitlines()[0].rsplit(",", 1)
        return name.strip(), float(free_mib) / 1024
    except (subprocess.SubprocessError, OSError, ValueError, IndexError):
        return None


WEIGHT_SUFFIXES = (".safetensors", ".bin")


def checkpoint_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*") if f.suffix in WEIGHT_SUFFIXES)
