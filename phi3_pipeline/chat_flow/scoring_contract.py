"""The two request shapes a deployed chat model answers, shared by the chat flow tool and the pipeline.

- input_data (the tutorial's): POST <scoring URI> {"input_data": {"input_string": [messages], "parameters":
  {"temperature", "max_new_tokens", "max_tokens"}}} -> {"output": "..."}. Azure's catalog inference image
  answers it on every version; the older one maps max_new_tokens onto vLLM's max_tokens, the newer
  (foundation-model-serve) passes the parameters to vLLM as they are, so both names carry the limit.
- chat_completions (OpenAI-style, what vLLM speaks): POST <scoring URI with /score replaced by
  /chat/completions> {"messages": [...], "temperature", "max_tokens"} -> {"choices": [{"message": {"content"}}]}.
  The path replaces /score rather than following it: the endpoint forwards the whole path to the container.
"""

from __future__ import annotations

CONTRACTS = ("input_data", "chat_completions")
SCORE_PATH = "/score"
CHAT_COMPLETIONS_PATH = "/chat/completions"


class ContractError(ValueError):
    """The answer does not have the shape of the contract it was asked in."""


def request_for(contract: str, scoring_uri: str, messages: list[dict], temperature: float,
                max_tokens: int) -> tuple[str, dict]:
    """(URL, JSON body) of one chat request in the contract; the length limit carries the contract's name."""
    if contract == "input_data":
        return scoring_uri, {"input_data": {"input_string": messages, "parameters": {
            "temperature": temperature, "max_new_tokens": max_tokens, "max_tokens": max_tokens}}}
    if contract == "chat_completions":
        base = scoring_uri[: -len(SCORE_PATH)] if scoring_uri.endswith(SCORE_PATH) else scoring_uri.rstrip("/")
        return base + CHAT_COMPLETIONS_PATH, {"messages": messages, "temperature": temperature,
                                              "max_tokens": max_tokens}
    raise ContractError(f"unknown scoring contract {contract!r}: use one of {', '.join(CONTRACTS)}")


def answer_from(contract: str, payload: object) -> str:
    """The model's text from an answer in the contract; ContractError if it is not one."""
    try:
        if contract == "chat_completions":
            return str(payload["choices"][0]["message"]["content"])
        return str(payload["output"])
    except (KeyError, IndexError, TypeError):
        raise ContractError(f"the answer is not a {contract} answer") from None
