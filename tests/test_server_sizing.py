"""The scoring server's limits fitted to the model it serves: request size from the context length, answers at
once from the memory their key/value caches take beside the weights."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from phi3_pipeline.config.errors import ConfigError
from phi3_pipeline.targets.local.server_sizing import MIN_REQUEST_BYTES, fitted_limits, kv_bytes_per_token

GiB = 1024**3
# shaped as microsoft/Phi-4-mini-instruct (3.8 B parameters; about 7.7 GB of bf16 weights)
PHI4_MINI = {"num_hidden_layers": 32, "num_attention_heads": 24, "num_key_value_heads": 8, "hidden_size": 3072,
             "max_position_embeddings": 131072, "dtype": "bfloat16"}
PHI4_MINI_WEIGHTS = 7_672_000_000
TINY = {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4, "hidden_size": 128,
        "max_position_embeddings": 512}
LIMITS = {"max_new_tokens": 256, "max_request_bytes": None, "generation_timeout_s": 30.0,
          "max_concurrent_generations": 2, "max_batch_size": 8, "max_queued_requests": 32, "queue_wait_s": 10.0}


def test_the_request_size_follows_the_served_context_unless_it_is_set():
    tiny, _ = fitted_limits(LIMITS, TINY, 0, 8 * GiB, 4, "CPU")
    phi4, _ = fitted_limits(LIMITS, PHI4_MINI, PHI4_MINI_WEIGHTS, 141 * GiB, 2, "GPU")
    set_by_hand, _ = fitted_limits({**LIMITS, "max_request_bytes": 4096}, PHI4_MINI, PHI4_MINI_WEIGHTS, 141 * GiB,
                                   2, "GPU")
    assert tiny["max_request_bytes"] == MIN_REQUEST_BYTES  # 512 tokens: the floor
    assert phi4["max_request_bytes"] == phi4["max_context_tokens"] * 16  # a whole served context of text
    assert set_by_hand["max_request_bytes"] == 4096


def test_the_served_context_is_cut_to_what_the_gpu_holds_beside_the_weights_before_answers_at_once_are():
    """Phi-4-mini keeps 128 KiB of keys and values per token in bf16: a full 131,072-token answer takes 16 GiB. On
    an 80 GiB GPU, beside 7.1 GiB of weights, half of the rest holds 298,413 tokens: the 16 answers asked for at
    once, of 18,650 tokens each. On a 24 GiB GPU, 69,037 tokens: 16 answers of 4,314."""
    assert kv_bytes_per_token(PHI4_MINI, 2) == 2 * 32 * 8 * 128 * 2
    fitted, notes = fitted_limits(LIMITS, PHI4_MINI, PHI4_MINI_WEIGHTS, 80 * GiB, 2, "GPU")
    assert (fitted["max_concurrent_generations"], fitted["max_batch_size"], fitted["max_context_tokens"]) == (
        2, 8, 18650)
    assert notes == ["GPU memory holds 298413 tokens of keys and values beside the weights: 2 generations of up to 8 "
                     "requests at once (asked for 16), each of at most 18650 tokens (the model has 131072)"]
    small, _ = fitted_limits(LIMITS, PHI4_MINI, PHI4_MINI_WEIGHTS, 24 * GiB, 2, "GPU")
    assert (small["max_concurrent_generations"], small["max_batch_size"], small["max_context_tokens"]) == (
        2, 8, 4314)
    on_16, _ = fitted_limits(LIMITS, PHI4_MINI, PHI4_MINI_WEIGHTS, 16 * GiB, 2, "GPU")
    assert (on_16["max_concurrent_generations"], on_16["max_batch_size"], on_16["max_context_tokens"]) == (
        2, 4, 4533), "rather than under 4,096 tokens each, fewer answers at once"
    roomy, roomy_notes = fitted_limits(LIMITS, TINY, 0, 8 * GiB, 4, "CPU")
    assert (roomy["max_concurrent_generations"], roomy["max_batch_size"], roomy["max_context_tokens"],
            roomy_notes) == (2, 8, 512, [])


def test_a_model_whose_weights_and_one_answer_of_4096_tokens_do_not_fit_is_one_config_error():
    """On the CPU the bf16 weights load in fp32: 14.3 GiB, and one answer of 4,096 tokens 2 GiB more at half the
    room."""
    with pytest.raises(ConfigError, match=r"needs 16\.3 GiB of CPU memory .* 4096 tokens\); 16\.0 GiB are free"):
        fitted_limits(LIMITS, PHI4_MINI, PHI4_MINI_WEIGHTS, 16 * GiB, 4, "CPU")


@given(free_gib=st.floats(min_value=0.01, max_value=200), generations=st.integers(1, 64),
       batch=st.integers(1, 64), context=st.sampled_from([512, 4096, 131072]))
def test_fitted_answers_at_once_and_their_context_never_exceed_what_was_asked_or_what_memory_holds(
        free_gib, generations, batch, context):
    config = {**PHI4_MINI, "max_position_embeddings": context}
    limits = {**LIMITS, "max_concurrent_generations": generations, "max_batch_size": batch}
    per_token = kv_bytes_per_token(config, 2)
    room = 0.5 * (free_gib * GiB - PHI4_MINI_WEIGHTS)
    try:
        fitted, _ = fitted_limits(limits, config, PHI4_MINI_WEIGHTS, free_gib * GiB, 2, "GPU")
    except ConfigError:
        assert room < per_token * min(context, 4096)
        return
    at_once = fitted["max_concurrent_generations"] * fitted["max_batch_size"]
    assert 1 <= at_once <= generations * batch
    assert min(context, 4096) <= fitted["max_context_tokens"] <= context
    assert at_once * fitted["max_context_tokens"] * per_token <= room


def test_the_shape_is_read_whatever_the_architecture_calls_it_and_through_an_adapter(tmp_path):
    """GPT-2 names its context n_positions: transformers' own names are read. An adapter is sized on its base, and
    a config without a shape keeps the settings' limits."""
    import json

    from transformers import GPT2Config

    from phi3_pipeline.targets.local.server_sizing import served_shape

    base = tmp_path / "base"
    GPT2Config(n_positions=1024, n_layer=3, n_head=4, n_embd=64).save_pretrained(base)
    (base / "model.safetensors").write_bytes(b"0" * 1000)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    (adapter / "adapter_model.safetensors").write_bytes(b"0" * 10)
    shape, weights = served_shape(adapter)
    assert (shape["max_position_embeddings"], shape["num_hidden_layers"], shape["hidden_size"]) == (1024, 3, 64)
    assert weights == 1010
    fitted, notes = fitted_limits(LIMITS, {"max_position_embeddings": None}, 0, 8 * GiB, 4, "CPU")
    assert (fitted["max_concurrent_generations"], fitted["max_batch_size"]) == (2, 8)
    assert fitted["max_request_bytes"] == MIN_REQUEST_BYTES and "does not give its shape" in notes[0]


def test_a_server_is_given_time_to_load_by_the_weights_it_loads_an_adapters_base_among_them(tmp_path):
    """3 minutes, and 30 s for each GiB: a 7 GiB base served with its adapter may take 6.5 minutes to answer."""
    import json

    from phi3_pipeline.targets.local.online import start_timeout_s

    base, adapter = tmp_path / "base", tmp_path / "adapter"
    for folder, config, weights in ((base, "config.json", 7 * GiB), (adapter, "adapter_config.json", 0)):
        folder.mkdir()
        (folder / config).write_text(json.dumps({"base_model_name_or_path": str(base)}))
        with (folder / "model.safetensors").open("wb") as sparse:
            sparse.truncate(weights)
    assert start_timeout_s(str(adapter)) == 180 + 7 * 30
    assert start_timeout_s(str(tmp_path / "missing")) == 180
