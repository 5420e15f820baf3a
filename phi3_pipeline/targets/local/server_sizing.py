"""The scoring server's limits from the model it serves: how many tokens of context an answer may hold and how
many answers it generates at once (what memory holds of their key/value caches beside the weights), and how large
a request may be (from that context). The server applies them when it starts, where it knows its device and its
free memory."""

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
# The context an answer may hold at least, where the model has it: served contexts are cut to what memory holds
# (Phi-4-mini's 131,072 tokens take 16 GiB of keys and values each) before answers at once are.
SERVED_CONTEXT_FLOOR = 4096
CHECKPOINT_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
SHAPE = ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "hidden_size", "head_dim",
         "max_position_embeddings")


def adapter_base(checkpoint: Path) -> Path | None:
    """The base model an adapter names, None for a model."""
    adapter_config = checkpoint / ADAPTER_CONFIG
    if not adapter_config.is_file():
        return None
    return Path(json.loads(adapter_config.read_text(encoding="utf-8"))["base_model_name_or_path"])


def served_weight_bytes(checkpoint: Path) -> int:
    """The weights' bytes on disk the server loads: an adapter's, with its base's."""
    base = adapter_base(checkpoint)
    return checkpoint_bytes(checkpoint) + (served_weight_bytes(base) if base else 0)


def served_shape(checkpoint: Path) -> tuple[dict, int]:
    """The served model's shape (`SHAPE`, as transformers names it whatever the architecture calls it, and the
    checkpoint's `dtype`; an adapter's base's) and `served_weight_bytes`."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(adapter_base(checkpoint) or checkpoint)
    shape = {key: getattr(config, key, None) for key in SHAPE}
    return ({**shape, "dtype": str(getattr(config, "dtype", None)).removeprefix("torch.")},
            served_weight_bytes(checkpoint))


def kv_bytes_per_token(config: dict, dtype_bytes: int) -> int:
    """Keys and values of one token in every layer."""
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    return 2 * config["num_hidden_layers"] * (config.get("num_key_value_heads") or heads) * head_dim * dtype_bytes


def fitted_limits(limits: dict, config: dict, weights_bytes: int, free_bytes: float, dtype_bytes: int,
                  where: str) -> tuple[dict, list[str]]:
    """`limits` (the spec's, from local.*) fitted to the model and to `free_bytes` (before the weights load): the
    context an answer may hold (`max_context_tokens`: the model's, or what memory holds of the answers asked for at
    once, but at least SERVED_CONTEXT_FLOOR tokens), generations and batches cut where even that does not fit, and
    the request size, when unset, from the served context. The notes say what was cut; a ConfigError when not one
    answer fits. A config without the shape (`SHAPE`) keeps the settings' limits."""
    context = config.get("max_position_embeddings")
    fitted, notes = {**limits, "max_context_tokens": context}, []
    if all(config.get(key) for key in ("num_hidden_layers", "num_attention_heads", "hidden_size")) and context:
        saved_bytes = CHECKPOINT_DTYPE_BYTES.get(str(config.get("dtype")), 4)
        weights_in_memory = weights_bytes * dtype_bytes / saved_bytes
        per_token = kv_bytes_per_token(config, dtype_bytes)
        tokens_held = int(KV_CACHE_SHARE * (free_bytes - weights_in_memory) // per_token)
        floor = min(context, SERVED_CONTEXT_FLOOR)
        if tokens_held < floor:
            need = (weights_in_memory + per_token * floor / KV_CACHE_SHARE) / GiB
            raise ConfigError(f"serving this model needs {need:.1f} GiB of {where} memory (its weights, and one "
                              f"answer of {floor} tokens); {free_bytes / GiB:.1f} GiB are free: free memory or serve "
                              "a smaller model")
        asked = limits["max_concurrent_generations"] * limits["max_batch_size"]
        answers = min(asked, tokens_held // floor)
        fitted["max_context_tokens"] = min(context, tokens_held // answers)
        if answers < asked:
            fitted["max_concurrent_generations"] = min(limits["max_concurrent_generations"], answers)
            fitted["max_batch_size"] = max(1, min(limits["max_batch_size"],
                                                  answers // fitted["max_concurrent_generations"]))
        if fitted["max_context_tokens"] < context or answers < asked:
            notes.append(f"{where} memory holds {tokens_held} tokens of keys and values beside the weights: "
                         f"{fitted['max_concurrent_generations']} generations of up to {fitted['max_batch_size']} "
                         f"requests at once (asked for {asked}), each of at most {fitted['max_context_tokens']} "
                         f"tokens (the model has {context})")
    else:
        notes.append("the model's config does not give its shape: generations and batches are the settings'")
    if fitted["max_request_bytes"] is None:
        fitted["max_request_bytes"] = max(MIN_REQUEST_BYTES, (fitted["max_context_tokens"] or 0)
                                          * REQUEST_BYTES_PER_TOKEN)
    return fitted, notes
