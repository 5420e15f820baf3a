"""The scoring server's limits from the model it serves: how large a request may be (from the model's context
length) and how many answers it generates at once (what memory holds of their key/value caches beside the
weights). The server applies them when it starts, where it knows its device and its free memory."""

from __future__ import annotations

import json
from pathlib import Path

from phi3_pipeline.config.errors import ConfigError
from phi3_pipeline.serving.chat_model import ADAPTER_CONFIG
from phi3_pipeline.targets.local.machine import GiB, checkpoint_bytes

# A token is about 4 characters of text; JSON's escapes and the messages' fields can take 4 times that.
REQUEST_BYTES_PER_TOKEN = 16
MIN_REQUEST_BYTES = 64 * 1024
# Of the memory left beside the weights, the share the answers' key/value caches may take: the rest is for the
# activations, the allocator's slack and the server itself.
KV_CACHE_SHARE = 0.5
CHECKPOINT_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
SHAPE = ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "hidden_size", "head_dim",
         "max_position_embeddings")


def served_shape(checkpoint: Path) -> tuple[dict, int]:
    """The served model's shape (`SHAPE`, as transformers names it whatever the architecture calls it, and the
    checkpoint's `dtype`) and its weights' bytes on disk: an adapter's base's, with the adapter's."""
    adapter_config = checkpoint / ADAPTER_CONFIG
    if adapter_config.is_file():
        base = Path(json.loads(adapter_config.read_text(encoding="utf-8"))["base_model_name_or_path"])
        shape, weights = served_shape(base)
        return shape, weights + checkpoint_bytes(checkpoint)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(checkpoint)
    shape = {key: getattr(config, key, None) for key in SHAPE}
    return {**shape, "dtype": str(getattr(config, "dtype", None)).removeprefix("torch.")}, checkpoint_bytes(checkpoint)


def kv_bytes_per_token(config: dict, dtype_bytes: int) -> int:
    """Keys and values of one token in every layer."""
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    return 2 * config["num_hidden_layers"] * (config.get("num_key_value_heads") or heads) * head_dim * dtype_bytes


def fitted_limits(limits: dict, config: dict, weights_bytes: int, free_bytes: float, dtype_bytes: int,
                  where: str) -> tuple[dict, list[str]]:
    """`limits` (the spec's, from local.*) fitted to the model: the request size, when unset, from its context
    length; generations and batches cut to the full-context answers that `free_bytes` (before the weights load)
    holds. The notes say what was cut; a ConfigError when not even one answer fits. A config without the shape
    (`SHAPE`) keeps the settings' limits."""
    context = config.get("max_position_embeddings")
    fitted = dict(limits)
    if fitted["max_request_bytes"] is None:
        fitted["max_request_bytes"] = max(MIN_REQUEST_BYTES, (context or 0) * REQUEST_BYTES_PER_TOKEN)
    if not all(config.get(key) for key in ("num_hidden_layers", "num_attention_heads", "hidden_size")) or not context:
        return fitted, ["the model's config does not give its shape: generations and batches are the settings'"]
    notes = []
    saved_bytes = CHECKPOINT_DTYPE_BYTES.get(str(config.get("dtype")), 4)
    weights_in_memory = weights_bytes * dtype_bytes / saved_bytes
    per_answer = kv_bytes_per_token(config, dtype_bytes) * context
    answers = int(KV_CACHE_SHARE * (free_bytes - weights_in_memory) // per_answer)
    if answers < 1:
        need = (weights_in_memory + per_answer / KV_CACHE_SHARE) / GiB
        raise ConfigError(f"serving this model needs {need:.1f} GiB of {where} memory (its weights, and one answer "
                          f"of {context} tokens); {free_bytes / GiB:.1f} GiB are free: free memory or serve a "
                          "smaller model")
    asked = limits["max_concurrent_generations"] * limits["max_batch_size"]
    if answers < asked:
        fitted["max_concurrent_generations"] = min(limits["max_concurrent_generations"], answers)
        fitted["max_batch_size"] = max(1, min(limits["max_batch_size"],
                                              answers // fitted["max_concurrent_generations"]))
        notes.append(f"{where} memory holds {answers} answers of {context} tokens beside the weights: "
                     f"{fitted['max_concurrent_generations']} generations of up to {fitted['max_batch_size']} "
                     f"requests at once (asked for {asked})")
    return fitted, notes
