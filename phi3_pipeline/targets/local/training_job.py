"""The local fine-tune job: runs in its own process, like a cloud job, and reports through files.

`python -m phi3_pipeline.targets.local.training_job JOB_DIR` reads JOB_DIR/spec.json, trains with TRL's
SFTTrainer, writes JOB_DIR/status.json (atomically, after every step) and JOB_DIR/metrics.jsonl, and leaves the
LoRA adapter (JOB_DIR/output/adapter, which names its base) and, unless the spec says not to merge, the merged
model (JOB_DIR/output/model), each with the tokenizer. The default base model is a small Phi-3-architecture model
built offline (tokenizer trained on the data, then some language-model training of its own), cached by content
so that several jobs share it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

from phi3_pipeline.config.settings import BUILTIN_BASE_MODEL
from phi3_pipeline.targets.local.machine import LORA, QLORA
from phi3_pipeline.targets.workspace import write_json_atomic

SPECIAL_TOKENS = ["<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
TINY_ARCHITECTURE = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 512,
}
TINY_VOCAB_SIZE = 1024
ADAPTER_DIR, MERGED_DIR = "adapter", "model"  # under the job's output folder
# How conversations are tokenized with a base model's own chat template, part of its jobs' identity: raised when a
# change alters what they learn, so that such jobs train anew (2: Phi's templates, which end a rendering with
# end-of-text, kept whole). The built-in model's template is the project's own and its jobs keep their names.
TEMPLATE_ENCODING = 2


class JobReporter:
    """Status and metrics of one job, as the poller reads them."""

    def __init__(self, job_dir: Path, total_steps: int):
        self.job_dir = job_dir
        self.total_steps = total_steps
        self.started_at = time.time()
        self.metrics = (job_dir / "metrics.jsonl").open("w", encoding="utf-8")

    def status(self, state: str, **fields) -> None:
        payload = {"state": state, "pid": os.getpid(), "total_steps": self.total_steps,
                   "started_at": self.started_at, "updated_at": time.time(), **fields}
        write_json_atomic(self.job_dir / "status.json", payload)

    def step(self, phase: str, step: int, loss: float, learning_rate: float) -> None:
        record = {"phase": phase, "step": step, "loss": round(loss, 5), "learning_rate": learning_rate}
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()
        self.status("Running", phase=phase, step=step, loss=record["loss"])


def read_conversations(path: Path) -> list[list[dict]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line)["messages"] for line in handle if line.strip()]


def plain_text(messages: list[dict]) -> str:
    return " ".join(message["content"] for message in messages)


def build_tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<|endoftext|>", eos_token="<|end|>", pad_token="<|endoftext|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


# The attention and MLP projections of the Phi-3 architecture (Phi-3, Phi-3.5 and Phi-4-mini share it): what LoRA
# adapts; other architectures get every linear layer.
PHI3_PROJECTIONS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
# A model whose weights take more than this share of the GPU's memory trains with gradient checkpointing.
CHECKPOINTING_SHARE = 0.25


def sft_dataset(rows: list[tuple[list[int], list[int]]]):
    """Token ids and which of them the loss is computed on (TRL makes the labels from `assistant_masks`)."""
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": [ids for ids, _ in rows],
                              "assistant_masks": [[int(label != -100) for label in labels] for _, labels in rows]})


def lora_targets(model) -> list[str] | str:
    return PHI3_PROJECTIONS if getattr(model.config, "model_type", "") == "phi3" else "all-linear"


def on_this_machine() -> tuple[dict, dict]:
    """How the model is loaded and how it trains here (from_pretrained's and SFTConfig's options). On a GPU: bf16
    weights where it computes in bf16 (else fp16 mixed precision), and flash attention where installed, whose
    variable-length kernel is what makes padding-free batches pay. Elsewhere, fp32 and padded batches: with
    PyTorch's attention a padding-free batch is one long sequence whose attention grows with the square of its
    tokens (bench/README.md)."""
    import torch
    from transformers.utils import is_flash_attn_2_available

    if not torch.cuda.is_available():  # TRL's default is bf16 mixed precision, which a CPU emulates slowly
        return {"dtype": torch.float32, "attn_implementation": None}, {"use_cpu": True, "bf16": False}
    bf16 = torch.cuda.is_bf16_supported(including_emulation=False)  # a T4 or V100 emulates it
    flash = bf16 and is_flash_attn_2_available()
    return ({"dtype": torch.bfloat16 if bf16 else torch.float32,
             "attn_implementation": "flash_attention_2" if flash else None},
            {"bf16": bf16, "fp16": not bf16, "padding_free": flash})


def needs_checkpointing(model) -> bool:
    """Activation (gradient) checkpointing where the weights take more than CHECKPOINTING_SHARE of the GPU's memory."""
    import torch

    if not torch.cuda.is_available():
        return False
    weights = sum(parameter.numel() * parameter.element_size() for parameter in model.parameters())
    return weights > CHECKPOINTING_SHARE * torch.cuda.get_device_properties(0).total_memory


def sft_trainer(model, tokenizer, train, evaluation, *, phase: str, reporter: JobReporter, step_offset: int,
                output_dir: Path, seed: int, epochs: int = 1, max_steps: int = -1, **hyperparameters):
    """TRL's SFTTrainer on already tokenized conversations, batched as `on_this_machine` says (padding-free where
    flash attention runs), reporting each step's loss to the job's files."""
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    class ReportSteps(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                reporter.step(phase, step_offset + state.global_step, logs["loss"], logs.get("learning_rate", 0.0))

    config = SFTConfig(
        output_dir=str(output_dir), num_train_epochs=epochs, max_steps=max_steps, seed=seed, data_seed=seed,
        # evaluated in batches as large as the training's: a real model's logits (Phi-4-mini: 200,064 a token) are
        # what fills the GPU
        per_device_eval_batch_size=hyperparameters["per_device_train_batch_size"], weight_decay=0.0,
        max_grad_norm=1.0, logging_steps=1,
        save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True,
        max_length=None,  # conversations are truncated to max_seq_length when encoded
        dataloader_pin_memory=False, activation_checkpointing=needs_checkpointing(model), **on_this_machine()[1],
        **hyperparameters)
    return SFTTrainer(model=model, args=config, train_dataset=train, eval_dataset=evaluation,
                      processing_class=tokenizer, callbacks=[ReportSteps()])


def load_base(base_path: Path, method: str):
    """The base model to put the adapter on: as `on_this_machine` loads it, or for QLoRA in 4 bits (NF4, bf16
    compute where the GPU has it, double quantisation: the QLoRA paper's recipe), prepared for training on
    quantised weights."""
    from transformers import AutoModelForCausalLM

    options = on_this_machine()[0]
    if method != QLORA:
        return AutoModelForCausalLM.from_pretrained(base_path, **options)
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if options["dtype"] == torch.bfloat16 else torch.float16  # as the trainer computes
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=compute)
    model = AutoModelForCausalLM.from_pretrained(base_path, quantization_config=quantization, **options)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)


def merged_model(model, base_path: Path, adapter_dir: Path, method: str):
    """The base with the adapter merged in, in the base checkpoint's own dtype (a model trained in fp32 on a CPU is
    not saved at twice its base's size); a QLoRA adapter onto the base in 16 bits (4-bit weights are not merged
    into)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    saved_dtype = getattr(AutoConfig.from_pretrained(base_path), "dtype", None)
    if method != QLORA:
        merged = model.merge_and_unload()
    else:
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.bfloat16)
        merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    return merged.to(saved_dtype) if isinstance(saved_dtype, torch.dtype) and saved_dtype.is_floating_point else merged


def build_tiny_base(spec: dict, train: list[list[dict]], reporter: JobReporter, step_offset: int) -> Path:
    """Make (or reuse) the small Phi-3-architecture base model; its folder is keyed by the spec's hash."""
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    base_dir = Path(spec["base_cache_dir"])
    if (base_dir / "config.json").is_file():
        return base_dir
    texts = [plain_text(messages) for messages in train]
    tokenizer = build_tokenizer(texts)
    config = Phi3Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        attn_implementation=on_this_machine()[0]["attn_implementation"], **TINY_ARCHITECTURE)
    torch.manual_seed(spec["seed"])
    model = Phi3ForCausalLM(config)
    max_len = spec["max_seq_length"]
    encoded = [(ids, ids) for ids in (tokenizer(text + "<|end|>")["input_ids"][:max_len] for text in texts)]
    staging = base_dir.with_name(base_dir.name + f".{os.getpid()}.tmp")
    sft_trainer(model, tokenizer, sft_dataset(encoded), None, phase="base-pretrain", reporter=reporter,
                step_offset=step_offset, output_dir=staging.with_suffix(".trainer"), seed=spec["seed"],
                max_steps=spec["base_pretrain_steps"], per_device_train_batch_size=spec["batch_size"],
                learning_rate=3e-3, lr_scheduler_type="cosine", warmup_steps=0.05).train()
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    try:
        os.replace(staging, base_dir)
    except OSError:  # another job built the same base meanwhile: keep theirs
        shutil.rmtree(staging, ignore_errors=True)
    return base_dir


def encode_chat(tokenizer, messages: list[dict], max_len: int) -> tuple[list[int], list[int]]:
    """Token ids of a conversation as the chat template renders it, and labels that train on the assistant's turns
    only. A turn spans from where the template's generation prompt ends to where the conversation rendered up to
    that turn stops matching the whole: Phi's templates end a rendering with the end-of-text token, which is not
    part of a turn that another follows."""
    def rendered(upto: int, add_generation_prompt: bool = False) -> list[int]:
        return list(tokenizer.apply_chat_template(messages[:upto], add_generation_prompt=add_generation_prompt,
                                                  tokenize=True, return_dict=True)["input_ids"])

    def matching(prefix: list[int]) -> int:
        return next((index for index, (a, b) in enumerate(zip(prefix, ids)) if a != b), min(len(prefix), len(ids)))

    ids = rendered(len(messages))
    labels = [-100] * len(ids)
    for index, message in enumerate(messages):
        if message["role"] == "assistant":
            start = matching(rendered(index, add_generation_prompt=True)) if index else 0  # none to render before
            end = matching(rendered(index + 1))
            labels[start:end] = ids[start:end]
    return ids[:max_len], labels[:max_len]


def encode_chats(tokenizer, conversations: list[list[dict]], max_len: int,
                 part: str) -> tuple[list[tuple[list[int], list[int]]], int]:
    """The conversations that have assistant tokens within `max_len` (the others would teach nothing, and a batch
    of them has no loss), and how many were left out; ValueError, saying what to change, when none has any."""
    rows = [encode_chat(tokenizer, messages, max_len) for messages in conversations]
    kept = [(ids, labels) for ids, labels in rows if any(label != -100 for label in labels)]
    if not kept:
        raise ValueError(f"no {part} conversation has an assistant token within training.max_seq_length "
                         f"({max_len} tokens): raise it")
    return kept, len(rows) - len(kept)


def run(job_dir: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    spec = json.loads((job_dir / "spec.json").read_text(encoding="utf-8"))
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    train = read_conversations(Path(spec["train_file"]))
    test = read_conversations(Path(spec["test_file"]))
    builtin = spec["base_model"] == BUILTIN_BASE_MODEL
    needs_base = builtin and not (Path(spec["base_cache_dir"]) / "config.json").is_file()
    ft_steps = spec["epochs"] * math.ceil(len(train) / spec["batch_size"])
    base_steps = spec["base_pretrain_steps"] if needs_base else 0
    reporter = JobReporter(job_dir, base_steps + ft_steps)
    reporter.status("Running", phase="starting", step=0)

    base_path = build_tiny_base(spec, train, reporter, 0) if builtin else Path(spec["base_model"])
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    method = spec.get("method", LORA)
    model = load_base(base_path, method)
    train_rows, train_left_out = encode_chats(tokenizer, train, spec["max_seq_length"], "training")
    test_rows, test_left_out = encode_chats(tokenizer, test, spec["max_seq_length"], "test")
    train_ids, test_ids = sft_dataset(train_rows), sft_dataset(test_rows)
    reporter.total_steps = base_steps + spec["epochs"] * math.ceil(len(train_rows) / spec["batch_size"])
    # The built-in base never saw the chat-template tokens, so its embeddings train fully beside the
    # LoRA adapter (the usual recipe when a fine-tune introduces new special tokens).
    model = get_peft_model(model, LoraConfig(r=spec["lora_rank"], lora_alpha=spec["lora_alpha"],
                                             lora_dropout=0.0, target_modules=lora_targets(model),
                                             modules_to_save=["embed_tokens", "lm_head"] if builtin else None,
                                             task_type="CAUSAL_LM"))
    trainer = sft_trainer(model, tokenizer, train_ids, test_ids, phase="fine-tune", reporter=reporter,
                          step_offset=base_steps, output_dir=job_dir / "trainer", seed=spec["seed"],
                          epochs=spec["epochs"], per_device_train_batch_size=spec["batch_size"],
                          learning_rate=spec["learning_rate"], lr_scheduler_type=spec["lr_scheduler_type"],
                          warmup_steps=spec["warmup_ratio"])
    eval_before = trainer.evaluate()["eval_loss"]
    train_seconds = trainer.train().metrics["train_runtime"]
    losses = [record["loss"] for record in trainer.state.log_history if "loss" in record]
    eval_after = trainer.evaluate()["eval_loss"]
    model = trainer.model

    output = job_dir / "output"
    model.save_pretrained(output / ADAPTER_DIR)
    tokenizer.save_pretrained(output / ADAPTER_DIR)
    if spec.get("merge_adapter", True):
        merged_model(model, base_path, output / ADAPTER_DIR, method).save_pretrained(output / MERGED_DIR)
        tokenizer.save_pretrained(output / MERGED_DIR)
    window = max(1, min(5, len(losses) // 4))
    metrics = {
        "train_loss_first": sum(losses[:window]) / window,
        "train_loss_last": sum(losses[-window:]) / window,
        "eval_loss_before": eval_before,
        "eval_loss_after": eval_after,
        "fine_tune_steps": trainer.state.global_step,
        "train_seconds": round(train_seconds, 2),  # the fine-tune's steps alone (bench/gpu_finetune.py's tokens/s)
        "trained_tokens": sum(len(ids) for ids in train_ids["input_ids"]) * spec["epochs"],
        "peak_gpu_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
        "train_rows": len(train),
        "test_rows": len(test),
        # conversations whose assistant turns all start beyond training.max_seq_length
        "rows_left_out": train_left_out + test_left_out,
        "seconds": round(time.time() - reporter.started_at, 2),
    }
    write_json_atomic(job_dir / "job_metrics.json", metrics)
    reporter.status("Completed", phase="done", step=reporter.total_steps, loss=losses[-1] if losses else None)


OUT_OF_GPU_MEMORY = ("the GPU ran out of memory: lower training.batch_size or training.max_seq_length, or set "
                     "training.method=qlora")


def failure(error: Exception) -> str:
    """The job's error as the poller reports it: for a GPU out of memory, what to change (torch's own message is a
    paragraph on its allocator)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(error, torch.OutOfMemoryError):
        return OUT_OF_GPU_MEMORY
    return f"{type(error).__name__}: {error}"


def main() -> int:
    job_dir = Path(sys.argv[1])
    try:
        run(job_dir)
    except Exception as error:  # the job's own error is what the poller reports to the user
        write_json_atomic(job_dir / "status.json", {
            "state": "Failed", "pid": os.getpid(), "updated_at": time.time(), "error": failure(error)})
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
