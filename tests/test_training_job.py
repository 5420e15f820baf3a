"""The local fine-tune's trainer (phi3_pipeline/targets/local/training_job.py): what TRL's SFTTrainer is given to
learn from, which layers LoRA adapts, and when QLoRA is chosen (targets/local/machine.py)."""

from __future__ import annotations

import importlib.util

import pytest

from phi3_pipeline.config.errors import ConfigError
from phi3_pipeline.targets.local.machine import Gpu, fine_tune_method, merge_choice
from phi3_pipeline.targets.local.training_job import (
    PHI3_PROJECTIONS,
    JobReporter,
    encode_chat,
    lora_targets,
    sft_dataset,
    sft_trainer,
)
from tests.conftest import fake_nvidia_smi
from tests.hub_fakes import FIRST_COMMIT, REPO_ID, fake_hub, make_checkpoint, model_info

def without_bitsandbytes_but(monkeypatch, present: bool) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: (object() if present else None)
                        if name == "bitsandbytes" else find_spec(name, *args))


CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who founded Microsoft?"},
                {"role": "assistant", "content": "Bill Gates and Paul Allen."},
                {"role": "user", "content": "Where is Paris?"}, {"role": "assistant", "content": "In France."}]


def test_the_trainer_learns_from_the_assistants_turns_only_in_the_models_own_template(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    checkpoint = make_checkpoint(tmp_path / "model")
    tokenizer, model = AutoTokenizer.from_pretrained(checkpoint), AutoModelForCausalLM.from_pretrained(checkpoint)
    ids, labels = encode_chat(tokenizer, CONVERSATION, max_len=512)
    assert ids == tokenizer.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True)["input_ids"]
    trainer = sft_trainer(model, tokenizer, sft_dataset([(ids, labels)]), None, phase="fine-tune",
                          reporter=JobReporter(tmp_path, 1), step_offset=0, output_dir=tmp_path / "trainer", seed=1,
                          per_device_train_batch_size=1)
    batch = next(iter(trainer.get_train_dataloader()))
    learned = [token for token in batch["labels"][0].tolist() if token != -100]
    answers = [tokenizer.apply_chat_template(CONVERSATION[:end], add_generation_prompt=end in (2, 4), tokenize=True,
                                             return_dict=True)["input_ids"] for end in (2, 3, 4, 5)]
    first_answer, second_answer = answers[1][len(answers[0]):], answers[3][len(answers[2]):]
    assert learned == first_answer + second_answer, "the assistant's answers (after the prompt), and nothing else"
    assert tokenizer.decode(learned) == "Bill Gates and Paul Allen.<|end|>\nIn France.<|end|>\n"
    assert tokenizer.decode(learned).count("Bill Gates") == 1 and "Who founded" not in tokenizer.decode(learned)


# The chat templates of microsoft/Phi-4-mini-instruct and microsoft/Phi-3-mini-4k-instruct (tokenizer_config.json):
# each ends a rendering that asks for no generation prompt with the end-of-text token.
PHI4_MINI_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' and 'tools' in message and message['tools'] is "
    "not none %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|tool|>' + message['tools'] + '<|/tool|>' "
    "+ '<|end|>' }}{% else %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}")
PHI3_MINI_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\\n' + message['content'] + "
    "'<|end|>\\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}")


@pytest.mark.parametrize("template, learned_text", [
    (PHI4_MINI_TEMPLATE, "Bill Gates and Paul Allen.<|end|>In France.<|end|><|endoftext|>"),
    (PHI3_MINI_TEMPLATE, "Bill Gates and Paul Allen.<|end|>\nIn France.<|end|>\n<|endoftext|>"),
])
def test_a_phi_template_that_ends_with_end_of_text_keeps_every_role_token_and_trains_on_the_answers(
        tmp_path, template, learned_text):
    """Phi's own templates: the conversation is trained on exactly as the template renders it (every role token
    in place, end-of-text only at the end), and the loss falls on the assistant's answers."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(make_checkpoint(tmp_path / "model"))
    tokenizer.chat_template, tokenizer.eos_token = template, "<|endoftext|>"
    ids, labels = encode_chat(tokenizer, CONVERSATION, max_len=512)
    assert tokenizer.decode(ids) == tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert tokenizer.decode(ids).count("<|endoftext|>") == 1 and tokenizer.decode(ids).count("<|assistant|>") == 2
    assert tokenizer.decode([label for label in labels if label != -100]) == learned_text


def test_a_conversation_that_opens_with_the_assistant_trains_on_every_answer(tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(make_checkpoint(tmp_path / "model"))
    greeting_first = [{"role": "assistant", "content": "Hello."}, *CONVERSATION[1:3]]
    ids, labels = encode_chat(tokenizer, greeting_first, max_len=512)
    assert tokenizer.decode(ids) == tokenizer.apply_chat_template(greeting_first, tokenize=False)
    assert tokenizer.decode([label for label in labels if label != -100]) == (
        "<|assistant|>\nHello.<|end|>\nBill Gates and Paul Allen.<|end|>\n")


def test_conversations_whose_answers_all_lie_beyond_the_length_limit_are_left_out_or_refused(tmp_path):
    """A first question longer than training.max_seq_length leaves nothing to learn: such conversations are left
    out (a batch of them has no loss), and where none is left the job says what to change."""
    from transformers import AutoTokenizer

    from phi3_pipeline.targets.local.training_job import encode_chats

    tokenizer = AutoTokenizer.from_pretrained(make_checkpoint(tmp_path / "model"))
    long_question = [{"role": "user", "content": "Who founded Microsoft? " * 20},
                     {"role": "assistant", "content": "Bill Gates and Paul Allen."}]
    rows, left_out = encode_chats(tokenizer, [CONVERSATION, long_question], 64, "training")
    assert left_out == 1 and rows == [encode_chat(tokenizer, CONVERSATION, 64)]
    with pytest.raises(ValueError, match=r"no training conversation has an assistant token within "
                                         r"training.max_seq_length \(64 tokens\): raise it"):
        encode_chats(tokenizer, [long_question], 64, "training")


def lora_steps(checkpoint, tmp_path, rows, *, padding_free: bool, checkpointing: bool, monkeypatch):
    """Losses of a held-out evaluation and of three LoRA steps, batched as a GPU would batch them."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from phi3_pipeline.targets.local import training_job

    monkeypatch.setattr(training_job, "on_this_machine", lambda: ({}, {"use_cpu": True, "padding_free": padding_free}))
    monkeypatch.setattr(training_job, "needs_checkpointing", lambda model: checkpointing)
    tmp_path.mkdir()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=lora_targets(model),
                                             task_type="CAUSAL_LM"))
    trainer = sft_trainer(model, AutoTokenizer.from_pretrained(checkpoint), sft_dataset(rows), sft_dataset(rows),
                          phase="fine-tune", reporter=JobReporter(tmp_path, 3), step_offset=0,
                          output_dir=tmp_path / "trainer", seed=1, per_device_train_batch_size=len(rows),
                          learning_rate=1e-2, max_steps=3)
    batch = next(iter(trainer.get_train_dataloader()))
    assert ("attention_mask" not in batch) == padding_free, "padding-free batches are one row, told apart by position"
    evaluated = trainer.evaluate()["eval_loss"]
    trainer.train()
    assert model.base_model.model.is_activation_checkpointing == checkpointing
    return [evaluated] + [record["loss"] for record in trainer.state.log_history if "loss" in record]


@pytest.mark.parametrize("padding_free, checkpointing", [(True, False), (False, True)])
def test_the_gpus_padding_free_batches_and_checkpointing_learn_what_padded_batches_learn(
        tmp_path, monkeypatch, padding_free, checkpointing):
    """A GPU trains in padding-free batches (with flash attention) and with activation checkpointing (a large
    model): conversations of different lengths give the same losses as padded batches, step after step."""
    from transformers import AutoTokenizer

    checkpoint = make_checkpoint(tmp_path / "model")
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    short = [{"role": "user", "content": "Where is Paris?"}, {"role": "assistant", "content": "In France."}]
    rows = [encode_chat(tokenizer, conversation, max_len=512) for conversation in (CONVERSATION, short, short[:1]
            + [{"role": "assistant", "content": "Paris is the capital of France, on the Seine."}])]
    padded = lora_steps(checkpoint, tmp_path / "padded", rows, padding_free=False, checkpointing=False,
                        monkeypatch=monkeypatch)
    as_on_a_gpu = lora_steps(checkpoint, tmp_path / "gpu", rows, padding_free=padding_free,
                             checkpointing=checkpointing, monkeypatch=monkeypatch)
    assert len(padded) == 4 and padded[-1] < padded[1], "three steps, and they learn"
    assert as_on_a_gpu == pytest.approx(padded, rel=1e-3)


def test_lora_adapts_the_phi_attention_and_mlp_projections(tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(make_checkpoint(tmp_path / "model"))
    assert lora_targets(model) == PHI3_PROJECTIONS
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    assert set(PHI3_PROJECTIONS) <= names, "the projections LoRA targets exist in the Phi-3 architecture"


@pytest.mark.parametrize("asked, gpu, bitsandbytes, expected", [
    ("auto", None, False, ("lora", "LoRA (no GPU: on the CPU)")),
    ("auto", Gpu("H100", 80.0, 40.0), False, ("lora", "LoRA (it fits)")),
    ("auto", Gpu("L4", 22.0, 4.0), False, ("lora", "LoRA (it fits)")),
    ("auto", Gpu("T4", 15.0, 15.0), True, ("qlora", "QLoRA, 4-bit (LoRA would need 16.5 GiB, the GPU has 15.0 GiB)")),
    ("auto", Gpu("small", 3.0, 3.0), True, ("lora", "LoRA (QLoRA would not fit either)")),
    ("lora", Gpu("T4", 15.0, 15.0), True, ("lora", "LoRA (asked for)")),
    ("qlora", Gpu("H100", 80.0, 40.0), True, ("qlora", "QLoRA, 4-bit (asked for)")),
])
def test_the_fine_tune_method_is_lora_unless_the_gpu_is_short_for_it_and_qlora_fits(monkeypatch, asked, gpu,
                                                                                     bitsandbytes, expected):
    """8 GiB of 16-bit weights: LoRA needs 16.5 GiB of GPU memory, QLoRA 5 GiB. The GPU's total memory decides,
    not what is free now: a re-run while the job it adopts holds most of an L4 names the same job."""
    without_bitsandbytes_but(monkeypatch, present=bitsandbytes)
    assert fine_tune_method(asked, 8.0, gpu) == expected


@pytest.mark.parametrize("gpu, expected", [
    (None, "training.method qlora needs a CUDA GPU"),
    (Gpu("T4", 15.0, 15.0), "needs bitsandbytes: pip install bitsandbytes"),
])
def test_qlora_without_a_gpu_or_bitsandbytes_is_one_config_error(monkeypatch, gpu, expected):
    without_bitsandbytes_but(monkeypatch, present=False)
    with pytest.raises(ConfigError, match=expected):
        fine_tune_method("qlora", 8.0, gpu)


def test_the_gpu_torch_trains_on_is_the_one_cuda_visible_devices_names_and_none_on_a_cpu_build(
        tmp_path, monkeypatch):
    import torch.version

    from phi3_pipeline.targets.local.machine import visible_gpu

    fake_nvidia_smi(tmp_path, monkeypatch)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_gpu() == Gpu("Tesla T4 --id=0", 15.0, 3.0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    assert visible_gpu().name == "Tesla T4 --id=1"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpu() is None, "no device visible: the CPU"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(torch.version, "cuda", None)
    assert visible_gpu() is None, "a CPU build of torch trains on the CPU"


def test_the_quota_stage_says_the_method_counts_what_its_own_job_holds_and_a_qlora_job_is_another_job(
        monkeypatch, tmp_path):
    """A Hub model of 8 GiB and a 15 GiB T4, short for LoRA: the GPU check names QLoRA and why, and is sized for
    it; the 10 GiB a job of this workspace holds (which the run adopts) count as free. The job QLoRA trains has a
    name of its own."""
    import subprocess
    import sys

    import huggingface_hub.constants

    from phi3_pipeline.config.settings import PipelineSettings
    from phi3_pipeline.targets.local.target import LocalTarget
    from phi3_pipeline.targets.workspace import write_json_atomic

    without_bitsandbytes_but(monkeypatch, present=True)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    settings = PipelineSettings(local={"workspace_dir": tmp_path / "ws"}, training={"base_model": REPO_ID})
    job = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                            "phi3_pipeline.targets.local.training_job"])
    try:
        with fake_hub({REPO_ID: model_info(REPO_ID, FIRST_COMMIT, 8 * 2**30)}) as url:
            monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", url)
            lora_job = LocalTarget(settings).job_name("data")  # no GPU here: LoRA
            fake_nvidia_smi(tmp_path / "bin", monkeypatch, held_by=job.pid)
            target = LocalTarget(settings)
            (target.ws.root / "jobs" / "running").mkdir(parents=True)
            write_json_atomic(target.ws.root / "jobs" / "running" / "status.json", {"state": "Running",
                                                                                    "pid": job.pid})
            gpu_check = next(check for check in target.check_resources() if check.resource.startswith("GPU memory"))
            qlora_job = target.job_name("data")
    finally:
        job.kill()
        job.wait()
    assert gpu_check.resource == ("GPU memory (Tesla T4 --id=0) for QLoRA, 4-bit (LoRA would need 16.5 GiB, the GPU "
                                  "has 15.0 GiB)")
    assert (gpu_check.needed, gpu_check.available, gpu_check.short_by) == (5.0, 13.0, 0)
    assert qlora_job != lora_job


@pytest.mark.parametrize("asked, free_gib, expected", [
    ("auto", 100.0, (True, "merged (it fits)")),
    ("auto", 16.2, (True, "merged (it fits)")),
    ("auto", 16.0, (False, "base + adapter (the merged copies would need 16.0 GiB more)")),
    ("always", 1.0, (True, "merged (asked for)")),
    ("never", 100.0, (False, "base + adapter (asked for)")),
])
def test_the_adapter_is_merged_unless_the_merged_copies_do_not_fit_on_disk(asked, free_gib, expected):
    """8 GiB of 16-bit weights, 0.2 GiB of the job's other files: merging writes 16 GiB more (the job's output and
    the registry's copy)."""
    assert merge_choice(asked, 8.0, free_gib, 0.2) == expected


def test_a_checkpoint_with_safetensors_and_bin_weights_is_sized_by_the_safetensors_it_loads(tmp_path):
    from phi3_pipeline.targets.local.machine import checkpoint_bytes

    (tmp_path / "model.safetensors").write_bytes(b"0" * 100)
    (tmp_path / "pytorch_model.bin").write_bytes(b"0" * 120)
    assert checkpoint_bytes(tmp_path) == 100
    (tmp_path / "model.safetensors").unlink()
    assert checkpoint_bytes(tmp_path) == 120


def test_a_job_out_of_gpu_memory_fails_saying_what_to_change(tmp_path, monkeypatch):
    import json
    import sys

    import torch

    from phi3_pipeline.targets.local import training_job

    def out_of_memory(job_dir):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of "
                                     "23.57 GiB of which 1.2 GiB is free. Of the allocated memory ...")

    monkeypatch.setattr(training_job, "run", out_of_memory)
    monkeypatch.setattr(sys, "argv", ["training_job", str(tmp_path)])
    assert training_job.main() == 1
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["state"] == "Failed" and status["error"] == (
        "the GPU ran out of memory: lower training.batch_size or training.max_seq_length, or set training.method=qlora")
