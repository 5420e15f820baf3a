"""Whether requests with the same parameters are answered faster by one batched `generate` call than each by its
own call: what decided that the local scoring server batches (`local.max_batch_size`).

    python bench/batched_generate.py MODEL_DIR [--requests 96] [--max-new-tokens 32]

MODEL_DIR is a registered model (e.g. WORKSPACE/registry/phi3-custom/1) or any Hugging Face checkpoint folder.
Prints answers per second and generated tokens per second for one request per call (2 threads, each on its share
of the cores, as scoring_server.share_the_cores sets: the server with `local.max_batch_size = 1`) and for batches
of 2 to 16 requests (one call at a time on all the cores, and two at a time on a share each, as the server runs
them), same prompts, same sampling, through the server's own ChatModel.replies.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from phi3_pipeline.serving.chat_model import ChatModel  # noqa: E402

QUESTIONS = ["Who founded Microsoft?", "What is the capital of France?", "How do I fine-tune a model?",
             "Tell me about Azure.", "What is a GPU?", "Why is the sky blue?", "Write a haiku.", "What is Prefect?"]
TEMPERATURE = 0.7


def conversations(count: int) -> list[list[dict]]:
    return [[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}] for i in range(count)]


def one_per_call(chat: ChatModel, work: list[list[dict]], max_new_tokens: int) -> int:
    return sum(chat.reply(messages, TEMPERATURE, max_new_tokens).completion_tokens for messages in work)


def batched(chat: ChatModel, work: list[list[dict]], max_new_tokens: int, batch: int) -> int:
    """Generated tokens, answering `batch` conversations per call."""
    return sum(reply.completion_tokens for start in range(0, len(work), batch)
               for reply in chat.replies([chat.encode(messages, max_new_tokens)
                                          for messages in work[start:start + batch]], TEMPERATURE, max_new_tokens))


def timed(threads: int, answer) -> tuple[float, int]:
    """Seconds and tokens for `threads` threads each running `answer(share)` on its share of the work."""
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // threads))
    counts = [0] * threads

    def worker(index: int) -> None:
        counts[index] = answer(index)

    workers = [threading.Thread(target=worker, args=(index,)) for index in range(threads)]
    started = time.monotonic()
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return time.monotonic() - started, sum(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()
    chat = ChatModel(args.model_dir)
    work = conversations(args.requests)
    chat.reply(work[0], TEMPERATURE, args.max_new_tokens)  # warm up

    def report(label: str, seconds: float, tokens: int, baseline: float | None = None) -> float:
        per_s = len(work) / seconds
        ratio = f", {per_s / baseline:.2f}x unbatched" if baseline else ""
        print(f"{label:<44} {per_s:6.1f} answers/s {tokens / seconds:8.0f} tokens/s{ratio}")
        return per_s

    halves = [work[0::2], work[1::2]]
    baseline = report("2 threads, 1 request per call (no batching)",
                      *timed(2, lambda i: one_per_call(chat, halves[i], args.max_new_tokens)))
    for batch in (2, 4, 8, 16):
        report(f"1 thread, batches of {batch}",
               *timed(1, lambda i, b=batch: batched(chat, work, args.max_new_tokens, b)), baseline)
        report(f"2 threads, batches of {batch}",
               *timed(2, lambda i, b=batch: batched(chat, halves[i], args.max_new_tokens, b)), baseline)


if __name__ == "__main__":
    main()
