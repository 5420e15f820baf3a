"""What this machine offers the local target: the GPU training would use, a checkpoint's size, and the fine-tune
method that fits."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path
from typing import NamedTuple

from phi3_pipeline.config.errors import ConfigError

LORA, QLORA = "lora", "qlora"
GiB = 1024**3


class Gpu(NamedTuple):
    """The GPU training would use: its name, and its total and free memory in GiB."""

    name: str
    total_gib: float
    free_gib: float


def visible_gpu() -> Gpu | None:
    """The GPU the job would train on: the first that CUDA_VISIBLE_DEVICES names, else GPU 0, read with nvidia-smi
    (CUDA stays uninitialised in the pipeline's process). None without one, or where torch is a CPU build (the job
    then trains on the CPU whatever GPU there is)."""
    devices = os.environ.get("CUDA_VISIBLE_DEVICES")
    if (devices is not None and devices.strip() in ("", "-1")) or not shutil.which("nvidia-smi"):
        return None
    import torch.version  # the build's CUDA version; importing it initialises nothing

    if torch.version.cuda is None:
        return None
    device = devices.split(",")[0].strip() if devices else "0"
    try:
        query = _nvidia_smi(f"--id={device}", "--query-gpu=name,memory.total,memory.free")
        name, total_mib, free_mib = query.splitlines()[0].rsplit(",", 2)
        return Gpu(name.strip(), float(total_mib) / 1024, float(free_mib) / 1024)
    except (subprocess.SubprocessError, OSError, ValueError, IndexError):
        return None


def gpu_gib_held_by(pids: set[int]) -> float:
    """GPU memory the processes `pids` hold (nvidia-smi's compute processes), in GiB; 0 where it cannot say."""
    if not pids:
        return 0.0
    try:
        rows = [line.split(",") for line in _nvidia_smi("--query-compute-apps=pid,used_memory").splitlines()]
        return sum(float(used) for pid, used in rows if int(pid) in pids) / 1024
    except (subprocess.SubprocessError, OSError, ValueError):
        return 0.0


def _nvidia_smi(*query: str) -> str:
    return subprocess.run(["nvidia-smi", *query, "--format=csv,noheader,nounits"], capture_output=True, text=True,
                          timeout=10, check=True).stdout.strip()


WEIGHT_SUFFIXES = (".safetensors", ".bin")


def checkpoint_bytes(path: Path) -> int:
    """The weights a checkpoint folder loads: its safetensors where it has them (transformers then reads no .bin)."""
    files = [f for f in path.glob("*") if f.suffix in WEIGHT_SUFFIXES]
    loaded = [f for f in files if f.suffix == ".safetensors"] or files
    return sum(f.stat().st_size for f in loaded)


def gpu_need_gib(method: str, weights_gib: float) -> float:
    """GPU memory a fine-tune takes for weights of `weights_gib` on disk (16-bit): LoRA holds them as loaded, twice
    over at peak with activations; QLoRA holds a quarter of them in 4 bits, with room for their dequantised layer
    and the activations."""
    return 2 * weights_gib + 0.5 if method == LORA else 0.5 * weights_gib + 1.0


def fine_tune_method(asked: str, weights_gib: float, gpu: Gpu | None) -> tuple[str, str]:
    """The method (`training.method`, auto resolved against the GPU's total memory, so that a re-run while a job
    holds some of it names the same job) and why, as the quota stage says it. QLoRA needs a CUDA GPU and
    bitsandbytes: asked for without them, a ConfigError."""
    lora_gib, qlora_gib = gpu_need_gib(LORA, weights_gib), gpu_need_gib(QLORA, weights_gib)
    lora_short = gpu is not None and lora_gib > gpu.total_gib
    if asked == QLORA or (asked == "auto" and lora_short and qlora_gib <= gpu.total_gib):
        if gpu is None:
            raise ConfigError("training.method qlora needs a CUDA GPU (4-bit weights with bitsandbytes); none is "
                              "visible here: set training.method=lora")
        why = "asked for" if asked == QLORA else (f"LoRA would need {lora_gib:.1f} GiB, the GPU has "
                                                  f"{gpu.total_gib:.1f} GiB")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError(f"QLoRA ({why}) needs bitsandbytes: pip install bitsandbytes, or set "
                              "training.method=lora and free GPU memory")
        return QLORA, f"QLoRA, 4-bit ({why})"
    if asked == LORA:
        return LORA, "LoRA (asked for)"
    if gpu is None:
        return LORA, "LoRA (no GPU: on the CPU)"
    return LORA, f"LoRA ({'QLoRA would not fit either' if lora_short else 'it fits'})"


# The merged model is written twice (the job's output, the registry's copy), in the base's own dtype.
MERGED_COPIES = 2


def merge_choice(asked: str, weights_gib: float, disk_free_gib: float, other_disk_gib: float) -> tuple[bool, str]:
    """Whether the job merges the adapter into the base (`training.merge_adapter`, auto resolved against the
    workspace's free disk beside the run's `other_disk_gib`), and why, as the quota stage says it."""
    merged_gib = MERGED_COPIES * weights_gib
    if asked != "auto":
        return asked == "always", f"{'merged' if asked == 'always' else 'base + adapter'} (asked for)"
    if merged_gib + other_disk_gib <= disk_free_gib:
        return True, "merged (it fits)"
    return False, f"base + adapter (the merged copies would need {merged_gib:.1f} GiB more)"
