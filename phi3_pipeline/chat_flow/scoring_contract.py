"""The two request shapes a deployed chat model answers, shared by the chat flow tool and the pipeline.

- input_data (the tutorial's): POST <scoring URI> {"input_data": {"input_string": [messages], "parameters":
  {"temperature", "max_new_tokens", "max_tokens"}}} -> {"output": "..."}. Azure's catalog inference image
  answers it on every version; the older one maps max_new_tokens onto vLLM's max_tokens, the newer
  (foundation-model-serve) passes the parameters to vLLM as they are, so both names carry the limit.
- chat_completions (OpenAI-style, what vLLM speaks): POST <scoring URI with /score replaced by
  /chat/completions> {"messages": [...], "temperature", "max_tokens"} -> {"choices": [{"message": {"content"}}]}.
  The path replaces /score rather than following it: the endpoint forwards the whole path to the container.

A failed answer is never an answer. What the inference servers send when they fail (read in their source,
Azure/azureml-assets 4b41f8cc and llm-optimized-inference 0.2.58; none observed on a live endpoint):
- foundation-model-serve (`api_server.py`): HTTP 200 `{"output": null, "error": {"status_code", "body"}}` when
  vLLM refuses; HTTP 200 `{}` on any exception; OpenAI-style routes: vLLM's status with
  `{"error": {"code", "message", "status"}}`.
- llm-optimized-inference (the older image): HTTP 200 `{}` on an exception, and `{"output": "None"}` (Python's
  str(None)) when vLLM refuses.
- A fine-tuned model served without vLLM (the fine-tune component turns it off by default for chat completion)
  goes through the generic MLflow scoring script, which answers a list of records, `[{"0": "text"}]` (or
  `["text"]`): inferred from the script, read here as the answer it carries.
"""

from __future__ import annotations

CONTRACTS = ("input_data", "chat_completions")
# Azure ML routes a request with this header to the named deployment, whatever the traffic split.
DEPLOYMENT_HEADER = "azureml-model-deployment"
SCORE_PATH = "/score"
# The audience of the Microsoft Entra token a token-auth (aad_token) online endpoint takes
# (learn.microsoft.com, how-to-authenticate-online-endpoint: `az account get-access-token --resource
# https://ml.azure.com`).
SCORING_TOKEN_SCOPE = "https://ml.azure.com/.default"
CHAT_COMPLETIONS_PATH = "/chat/completions"


class ContractError(ValueError):
    """The answer does not have the shape of the contract it was asked in."""


class ServerError(RuntimeError):
    """The inference server answered with an error (in a body whose status says success), not with text."""


class EmptyAnswer(RuntimeError):
    """The inference server answered, with no text in it."""


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
    """The model's text from an answer in the contract: ServerError for an error body, EmptyAnswer for no text
    at all (null), ContractError if it is not the contract's answer."""
    if isinstance(payload, dict) and payload.get("error"):
        raise ServerError(f"the inference server answered an error: {_short(payload['error'])}")
    if payload == {}:
        raise EmptyAnswer("the inference server answered an empty body ({}), as it does when its engine fails; "
                          "see the deployment's logs")
    try:
        if isinstance(payload, list):  # the MLflow scoring script's records
            text = _from_records(payload)
        elif contract == "chat_completions":
            text = payload["choices"][0]["message"]["content"]
        else:
            text = payload["output"]
    except (KeyError, IndexError, TypeError, ValueError):
        raise ContractError(f"the answer is not a {contract} answer") from None
    if text is None:  # an empty string is the model's own (empty) answer: the smoke chat refuses that one
        raise EmptyAnswer(f"the inference server answered no text ({_short(payload)})")
    if text == str(None):
        raise ServerError("the inference server answered the text 'None', which the older inference server "
                          "sends when its engine refuses; see the deployment's logs")
    return str(text)


def _from_records(records: list) -> object:
    """The text of the first record: a string, or a record's only value (`{"0": text}`) or its `output`."""
    first = records[0]
    if not isinstance(first, dict):
        return first
    if "output" in first:
        return first["output"]
    (only,) = first.values()  # ValueError: not one value
    return only


def _short(value: object, limit: int = 300) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "..."
