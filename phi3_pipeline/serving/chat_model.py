"""Chat with a causal language model saved in Hugging Face format: the merged fine-tuned model, or a LoRA adapter
whose `adapter_config.json` names its base.

Shared by score.py (the scoring script of the local deployment) and by the MLflow pyfunc
flavour of the registered model, so the registry and the server load the model the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

DEFAULT_PARAMETERS = {"temperature": 0.7, "max_new_tokens": 128}
ADAPTER_CONFIG = "adapter_config.json"  # PEFT's
PREDICT_BATCH = 8  # conversations an MLflow predict call answers together (the server's default batch)


class PromptTooLong(ValueError):
    """The conversation and the answer asked for do not fit the model's positions."""


class Reply(NamedTuple):
    """An answer and what it took, in tokens (what an OpenAI-style answer reports as `usage`)."""

    text: str
    prompt_tokens: int
    completion_tokens: int


def find_checkpoint(model_dir: str | Path) -> Path:
    """The folder holding config.json (a model) or adapter_config.json (an adapter) under a model directory (an
    MLflow model keeps it in data/)."""
    root = Path(model_dir)
    for marker in ("config.json", ADAPTER_CONFIG):
        if (root / marker).is_file():
            return root
        if matches := sorted(root.rglob(marker)):
            return matches[0].parent
    raise FileNotFoundError(f"no Hugging Face checkpoint (config.json) or adapter ({ADAPTER_CONFIG}) under {root}")


def placement(torch) -> tuple[str, object]:
    """Where the model answers and in which dtype: a CUDA GPU in bf16 (fp16 where it has no bf16), else the CPU in
    fp32 (PyTorch's CPU kernels are fastest there)."""
    if torch.cuda.is_available():
        return "cuda", torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    return "cpu", torch.float32


class ChatModel:
    """A loaded tokenizer + model that answers a list of {role, content} messages."""

    def __init__(self, model_dir: str | Path, max_context_tokens: int | None = None):
        """`max_context_tokens`: fewer positions than the model's, where the server's memory holds no more."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        checkpoint = find_checkpoint(model_dir)
        device, dtype = placement(torch)
        self.tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        if (checkpoint / ADAPTER_CONFIG).is_file():
            from peft import AutoPeftModelForCausalLM

            self.model = AutoPeftModelForCausalLM.from_pretrained(checkpoint, dtype=dtype)
        else:
            self.model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=dtype)
        self.model.to(device).eval()
        self._torch = torch
        self.max_context_tokens = max_context_tokens
        configured = self.model.generation_config.eos_token_id
        configured = configured if isinstance(configured, list) else [configured]
        # Where an answer ends: the model's own end tokens (Phi's: <|end|> and <|endoftext|>), not only the
        # tokenizer's end-of-text, which a Phi turn does not end with.
        self.end_tokens = [token for token in dict.fromkeys([*configured, self.tokenizer.eos_token_id])
                           if token is not None]

    @property
    def max_positions(self) -> int:
        positions = int(getattr(self.model.config, "max_position_embeddings", 0) or self.tokenizer.model_max_length)
        return min(positions, self.max_context_tokens or positions)

    def encode(self, messages: list[dict], max_new_tokens: int) -> list[int]:
        """The conversation's prompt tokens; PromptTooLong if they and `max_new_tokens` exceed the positions served
        (the model's, or `max_context_tokens`)."""
        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                    return_dict=True)["input_ids"]
        if max_new_tokens >= self.max_positions:
            raise PromptTooLong(f"max_new_tokens {max_new_tokens} leaves no room for the conversation: "
                                f"{self.max_positions} positions are served")
        if len(prompt) + max_new_tokens > self.max_positions:
            raise PromptTooLong(f"the conversation is {len(prompt)} tokens; with max_new_tokens {max_new_tokens} "
                                f"the model takes at most {self.max_positions - max_new_tokens} input tokens "
                                f"({self.max_positions} positions)")
        return list(prompt)

    def reply(self, messages: list[dict], temperature: float, max_new_tokens: int,
              max_time_s: float | None = None, stop: Callable[[], bool] | None = None) -> Reply:
        """The answer with its token counts; generation stops after `max_time_s` with what it has, and `stop`
        (checked at each new token) ends it early, e.g. once the client has gone away. PromptTooLong as `encode`."""
        return self.replies([self.encode(messages, max_new_tokens)], temperature, max_new_tokens, max_time_s,
                            [stop] if stop else None)[0]

    def replies(self, prompts: list[list[int]], temperature: float, max_new_tokens: int,
                max_time_s: float | None = None, stops: list[Callable[[], bool]] | None = None) -> list[Reply]:
        """Answers to encoded prompts (`encode`), generated together in one call (left-padded), each ending at
        its own end of sequence or when its `stops` entry says so; the call stops after `max_time_s`."""
        torch = self._torch
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.end_tokens[0]
        width = max(len(prompt) for prompt in prompts)
        device = self.model.device
        input_ids = torch.tensor([[pad] * (width - len(prompt)) + prompt for prompt in prompts], device=device)
        attention_mask = torch.tensor([[0] * (width - len(prompt)) + [1] * len(prompt) for prompt in prompts],
                                      device=device)
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        with torch.no_grad():
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=max_new_tokens,
                min_new_tokens=1,
                max_time=max_time_s,
                eos_token_id=self.end_tokens,
                pad_token_id=pad,
                stopping_criteria=self._stopping_when(stops),
                **sampling,
            )
        answers = []
        for prompt, row in zip(prompts, output[:, width:].tolist(), strict=True):
            end = next((index for index, token in enumerate(row) if token in self.end_tokens), len(row) - 1)
            new_tokens = row[:end + 1]  # what follows the end is padding
            answers.append(Reply(self.tokenizer.decode(new_tokens, skip_special_tokens=True).strip(), len(prompt),
                                 len(new_tokens)))
        return answers

    def _stopping_when(self, stops: list[Callable[[], bool]] | None):
        from transformers import StoppingCriteria, StoppingCriteriaList

        torch = self._torch

        class WhenAsked(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.tensor([stop() for stop in stops], dtype=torch.bool, device=input_ids.device)

        return StoppingCriteriaList([WhenAsked()] if stops else [])

    def predict(self, model_input, params: dict | None = None) -> list[str]:
        """MLflow pyfunc entry: a list (or DataFrame column 'messages') of conversations, answered PREDICT_BATCH at
        a time in one generate call."""
        params = {**DEFAULT_PARAMETERS, **(params or {})}
        rows = model_input["messages"].tolist() if hasattr(model_input, "columns") else list(model_input)
        prompts = [self.encode(list(messages), params["max_new_tokens"]) for messages in rows]
        return [reply.text for start in range(0, len(prompts), PREDICT_BATCH)
                for reply in self.replies(prompts[start:start + PREDICT_BATCH], params["temperature"],
                                          params["max_new_tokens"])]


def _load_pyfunc(data_path: str) -> ChatModel:
    """MLflow's loader_module hook."""
    return ChatModel(data_path)
