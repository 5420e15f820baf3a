"""Issue 23 §4: the local target's fine-tune of a Phi-4-mini-sized model on a GPU, against a plain TRL script
with the same settings, in the same run: tokens per second, model FLOPs utilisation, peak GPU memory, and (of a
real checkpoint) the gate's token F1 before and after.

    python bench/gpu_finetune.py prepare DIR [--model CHECKPOINT] [--shape tiny] [--rows 2000]   # project venv
    bash DIR/run.sh PYTHON [PEAK_TFLOPS]                # on the GPU machine: PYTHON with torch, transformers,
                                                        # peft, trl, datasets (and flash-attn, if installed)

Without `--model` (the GPU machines lent to this project reach no network), run.sh first builds a model of
Phi-4-mini-instruct's shape (3.8 B parameters) with random weights and a tokenizer trained on the data:
throughput, FLOPs utilisation and memory are those of the real model's shape; its F1 means nothing and is not
reported. `--model` names a local checkpoint on the GPU machine, e.g. from `hf download
microsoft/Phi-4-mini-instruct --local-dir ...`. `--shape tiny` makes a small model, to try the bench on a CPU.

The data are ultrachat-shaped synthetic conversations (bench/dataset_scale.py: 4 to 8 turns, about 5 KB, about
1,200 tokens each); both runs train one epoch of `--rows` of them, LoRA r 16 on the Phi projections, batches of
8, 2,048 tokens at most, learning rate 2e-4 with a cosine schedule. Model FLOPs per trained token are 4 N + 6 L s d
(N the weights of every matrix product, lm_head included; the backward pass computes no gradients of the frozen
weights; L layers of width d, attention over s tokens on average, causal), divided by the GPU's dense bf16 peak
(PEAK_TFLOPS, or the table below by the GPU's name).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Dense bf16 peak TFLOP/s by GPU name (NVIDIA's data sheets; SXM parts).
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}
PHI4_MINI_SHAPE = {"hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 32, "num_attention_heads": 24,
                   "num_key_value_heads": 8, "max_position_embeddings": 131072, "vocab_size": 200064,
                   "tie_word_embeddings": True, "partial_rotary_factor": 0.75}
TINY_SHAPE = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 4,
              "num_key_value_heads": 2, "max_position_embeddings": 4096, "vocab_size": 2048}
SETTINGS = {"epochs": 1, "batch_size": 8, "max_seq_length": 2048, "learning_rate": 2e-4, "lr_scheduler_type": "cosine",
            "warmup_ratio": 0.05, "lora_rank": 16, "lora_alpha": 32, "seed": 42, "method": "lora",
            "merge_adapter": False}
F1_QUESTIONS, F1_NEW_TOKENS = 50, 48

RUN_SH = r'''#!/usr/bin/env bash
set -euo pipefail
PY=$1; PEAK=${2:-}; cd "$(dirname "$0")"; HERE=$PWD
[ -f model/config.json ] || [ "@MODEL@" != model ] || "$PY" gpu_finetune.py make-model @SHAPE@
rm -rf job plain; mkdir -p job
sed "s#@HERE@#$HERE#g" job.json > job/spec.json
"$PY" -m phi3_pipeline.targets.local.training_job job > job/job.log 2>&1 || { tail -20 job/job.log; exit 1; }
"$PY" gpu_finetune.py plain > plain.log 2>&1 || { tail -20 plain.log; exit 1; }
"$PY" gpu_finetune.py report $PEAK
'''


def prepare(folder: Path, model: str | None, shape: str, rows: int) -> None:
    """DIR: the data, the job's spec, the job's modules in a package of their own, this script and run.sh."""
    sys.path[:0] = [str(HERE.parent), str(HERE)]
    from dataset_scale import generate
    from training_job import JOB_MODULES, write_job_package

    folder.mkdir(parents=True, exist_ok=True)
    generate(folder / "all.jsonl", rows + F1_QUESTIONS)
    lines = (folder / "all.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (folder / "train.jsonl").write_text("".join(lines[:rows]), encoding="utf-8")
    (folder / "test.jsonl").write_text("".join(lines[rows:]), encoding="utf-8")
    (folder / "all.jsonl").unlink()
    spec = {**SETTINGS, "base_model": model or "@HERE@/model", "base_pretrain_steps": 0, "shape": shape,
            "train_file": "@HERE@/train.jsonl", "test_file": "@HERE@/test.jsonl", "base_cache_dir": "@HERE@/unused",
            "real_model": model is not None}
    (folder / "job.json").write_text(json.dumps(spec, indent=1))
    write_job_package(folder, JOB_MODULES + ("serving/chat_model.py", "chat_data/evaluation.py"))
    shutil.copy(__file__, folder / "gpu_finetune.py")
    (folder / "run.sh").write_text(RUN_SH.replace("@MODEL@", "model" if model is None else "given")
                                   .replace("@SHAPE@", shape))
    print(f"prepared {folder}: copy it to the GPU machine and run `bash {folder.name}/run.sh PYTHON`")


def spec() -> dict:
    return json.loads(Path("job/spec.json").read_text(encoding="utf-8"))


def make_model(shape: str) -> None:
    """A model of the shape with random weights (bf16 on a GPU) and a tokenizer trained on the data, in model/."""
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    from phi3_pipeline.targets.local.training_job import build_tokenizer, plain_text, read_conversations

    tokenizer = build_tokenizer([plain_text(m) for m in read_conversations(Path("train.jsonl"))])
    config = Phi3Config(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id,
                        **(PHI4_MINI_SHAPE if shape == "phi-4-mini" else TINY_SHAPE))
    cuda = torch.cuda.is_available()
    torch.manual_seed(0)
    with torch.device("cuda" if cuda else "cpu"):
        model = Phi3ForCausalLM(config).to(torch.bfloat16 if cuda else torch.float32)
    model.save_pretrained("model")
    tokenizer.save_pretrained("model")


def plain() -> None:
    """The plain TRL script: SFTTrainer's own tokenization and defaults, with the job's settings."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import is_flash_attn_2_available
    from trl import SFTConfig, SFTTrainer

    from phi3_pipeline.targets.local.training_job import PHI3_PROJECTIONS, read_conversations

    job = spec()
    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported(including_emulation=False)
    tokenizer = AutoTokenizer.from_pretrained(job["base_model"])
    model = AutoModelForCausalLM.from_pretrained(
        job["base_model"], dtype=torch.bfloat16 if bf16 else torch.float32,
        attn_implementation="flash_attention_2" if bf16 and is_flash_attn_2_available() else None)
    conversations = read_conversations(Path(job["train_file"]))
    trainer = SFTTrainer(
        model=model, processing_class=tokenizer, train_dataset=Dataset.from_list([{"messages": m} for m in conversations]),
        peft_config=LoraConfig(r=job["lora_rank"], lora_alpha=job["lora_alpha"], lora_dropout=0.0,
                               target_modules=PHI3_PROJECTIONS, task_type="CAUSAL_LM"),
        args=SFTConfig(output_dir="plain", num_train_epochs=job["epochs"], per_device_train_batch_size=job["batch_size"],
                       learning_rate=job["learning_rate"], lr_scheduler_type=job["lr_scheduler_type"],
                       warmup_steps=job["warmup_ratio"], max_length=job["max_seq_length"], seed=job["seed"],
                       bf16=bf16, fp16=cuda and not bf16, use_cpu=not cuda, logging_steps=10, save_strategy="no",
                       report_to="none"))
    seconds = trainer.train().metrics["train_runtime"]
    lengths = [min(len(tokenizer.apply_chat_template(m, tokenize=True, return_dict=True)["input_ids"]),
                   job["max_seq_length"]) for m in conversations]
    Path("plain/metrics.json").write_text(json.dumps({
        "train_seconds": seconds, "trained_tokens": sum(lengths) * job["epochs"],
        "peak_gpu_bytes": torch.cuda.max_memory_allocated() if cuda else None}))


def flops_per_token(config: dict, mean_context: float) -> float:
    """4 N + 6 L s d: N the weights of every matrix product (lm_head included), L layers, d wide."""
    d, layers, heads = config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"]
    kv_width = config.get("num_key_value_heads", heads) * d // heads
    per_layer = d * (d + 2 * kv_width) + d * d + 3 * d * config["intermediate_size"]
    matmul_weights = layers * per_layer + d * config["vocab_size"]
    return 4 * matmul_weights + 6 * layers * mean_context * d


def gate_f1(checkpoint: Path) -> float:
    """The gate's mean token F1 on the held-out conversations' first questions, greedy."""
    from phi3_pipeline.chat_data.evaluation import gate_questions, mean_f1
    from phi3_pipeline.serving.chat_model import ChatModel

    chat = ChatModel(checkpoint)
    pairs = gate_questions(Path(spec()["test_file"]), F1_QUESTIONS)
    prompts = [chat.encode([{"role": "user", "content": question}], F1_NEW_TOKENS) for question, _ in pairs]
    answers = [reply.text for start in range(0, len(prompts), 8)
               for reply in chat.replies(prompts[start:start + 8], 0.0, F1_NEW_TOKENS)]
    return round(mean_f1(answers, pairs), 4)


def report(peak_tflops: float | None) -> None:
    import torch
    from transformers import AutoTokenizer

    from phi3_pipeline.targets.local.training_job import encode_chat, read_conversations

    job = spec()
    config = json.loads((Path(job["base_model"]) / "config.json").read_text(encoding="utf-8"))
    tokenizer = AutoTokenizer.from_pretrained(job["base_model"])
    lengths = [len(encode_chat(tokenizer, m, job["max_seq_length"])[0])
               for m in read_conversations(Path(job["train_file"]))]
    mean_context = sum(n * n for n in lengths) / sum(lengths)  # the context a trained token attends over, on average
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    peak = peak_tflops or next((v for name, v in PEAK_TFLOPS.items() if gpu and name in gpu), None)
    figures = {}
    for run, metrics_file in (("project", Path("job/job_metrics.json")), ("plain_trl", Path("plain/metrics.json"))):
        metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
        per_second = metrics["trained_tokens"] / metrics["train_seconds"]
        figures[run] = {"tokens_per_s": round(per_second), "train_s": round(metrics["train_seconds"], 1),
                        "mfu": round(per_second * flops_per_token(config, mean_context) / (peak * 1e12), 3)
                        if peak else None,
                        "peak_gpu_gib": round(metrics["peak_gpu_bytes"] / 2**30, 2) if metrics["peak_gpu_bytes"]
                        else None}
    figures["throughput_ratio"] = round(figures["project"]["tokens_per_s"] / figures["plain_trl"]["tokens_per_s"], 3)
    if job["real_model"]:
        figures["gate_f1"] = {"before": gate_f1(Path(job["base_model"])), "after": gate_f1(Path("job/output/adapter"))}
    print(json.dumps({"gpu": gpu, "peak_tflops": peak, "shape": job["shape"] if not job["real_model"] else "real",
                      "rows": len(lengths), "mean_tokens": round(sum(lengths) / len(lengths)), **figures}))


if __name__ == "__main__":
    command, arguments = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    if command == "prepare" and arguments:
        import argparse

        parser = argparse.ArgumentParser(prog="gpu_finetune.py prepare")
        parser.add_argument("dir", type=Path)
        parser.add_argument("--model")
        parser.add_argument("--shape", choices=("phi-4-mini", "tiny"), default="phi-4-mini")
        parser.add_argument("--rows", type=int, default=2000)
        options = parser.parse_args(arguments)
        prepare(options.dir, options.model, options.shape, options.rows)
    elif command == "make-model":
        make_model(arguments[0])
    elif command == "plain":
        plain()
    elif command == "report":
        report(float(arguments[0]) if arguments else None)
    else:
        sys.exit(__doc__)
