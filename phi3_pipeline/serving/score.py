"""Scoring script in Azure ML's init()/run() contract, served by azureml-inference-server-http.

It answers both chat contracts (chat_flow/scoring_contract.py), told apart by the body:
- input_data:  {"input_data": {"input_string": [{"role": "user", "content": "..."}],
                               "parameters": {"temperature": 0.7, "max_new_tokens": 128}}} -> {"output": "..."}
- chat_completions: {"messages": [...], "temperature": 0.7, "max_tokens": 128}
                    -> {"id", "object": "chat.completion", "created", "model", "choices": [{"index": 0,
                        "message": {"role": "assistant", "content": "..."}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens", "completion_tokens", "total_tokens"}}
  `stream: true` is refused with 400 (this server answers whole replies; an OpenAI client asking for a stream
  would otherwise read an empty one).
A malformed body gets 400 with {"error": "..."}. The model folder comes from AZUREML_MODEL_DIR, as on an
Azure managed online deployment.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from azureml_inference_server_http.api.aml_response import AMLResponse  # noqa: E402
from chat_model import DEFAULT_PARAMETERS, ChatModel, PromptTooLong  # noqa: E402

from phi3_pipeline.chat_data.records import messages_fault  # noqa: E402 - the same rule as the training data
from phi3_pipeline.serving import cancellation  # noqa: E402
from phi3_pipeline.serving.batching import GenerationBatcher  # noqa: E402

logger = logging.getLogger(__name__)
MAX_NEW_TOKENS_LIMIT = int(os.environ.get("SCORING_MAX_NEW_TOKENS", "256"))
GENERATION_TIMEOUT_S = float(os.environ.get("SCORING_GENERATION_TIMEOUT_S", "30"))
# generate calls at once, and requests of the same parameters answered by one call (the local server's limits)
GENERATE_CALLS = int(os.environ.get("SCORING_MAX_CONCURRENT_GENERATIONS", "1"))
MAX_BATCH = int(os.environ.get("SCORING_MAX_BATCH_SIZE", "1"))
# tokens of context (prompt and answer) an answer may hold, where the server's memory holds less than the model's
MAX_CONTEXT_TOKENS = int(os.environ["SCORING_MAX_CONTEXT_TOKENS"]) if "SCORING_MAX_CONTEXT_TOKENS" in os.environ \
    else None
# Below this a temperature divides the logits past float range and the probabilities become NaN.
MIN_TEMPERATURE = 0.01
# what an OpenAI-style answer names as its model: the deployment (which serves one model version)
MODEL_NAME = os.environ.get("SCORING_DEPLOYMENT", "")
model: ChatModel | None = None
batcher: GenerationBatcher | None = None


class BadRequest(ValueError):
    """The body does not follow the chat contract (`contract`: the one it was asked in, as far as it tells)."""

    contract = "input_data"


def _error(message: str, contract: str) -> AMLResponse:
    """A 400 in the contract's error shape: OpenAI's ({"error": {"message", "type"}}, which its clients show), or
    the scoring route's ({"error": "..."})."""
    if contract == "chat_completions":
        return AMLResponse({"error": {"message": message, "type": "invalid_request_error"}}, 400, json_str=True)
    return AMLResponse({"error": message}, 400, json_str=True)


def init() -> None:
    global model, batcher
    model = ChatModel(os.environ["AZUREML_MODEL_DIR"], MAX_CONTEXT_TOKENS)
    batcher = GenerationBatcher(
        lambda sampling, prompts, stops: model.replies(prompts, *sampling, GENERATION_TIMEOUT_S, stops),
        GENERATE_CALLS, MAX_BATCH)
    logger.info("model loaded")


def _messages(messages, field: str) -> list[dict]:
    if fault := messages_fault(messages, field):
        raise BadRequest(fault)
    return messages


def _sampling(given, prefix: str, length_field: str) -> tuple[float, int]:
    parameters = {"temperature": DEFAULT_PARAMETERS["temperature"],
                  length_field: DEFAULT_PARAMETERS["max_new_tokens"], **given}
    temperature, max_tokens = parameters["temperature"], parameters[length_field]
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not (temperature == 0 or MIN_TEMPERATURE <= temperature <= 2):
        raise BadRequest(f"field '{prefix}temperature' must be 0 (greedy) or a number from {MIN_TEMPERATURE} to 2")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_NEW_TOKENS_LIMIT:
        raise BadRequest(f"field '{prefix}{length_field}' must be an integer from 1 to {MAX_NEW_TOKENS_LIMIT}")
    return float(temperature), max_tokens


def _chat_completions_request(body: dict) -> tuple[list[dict], float, int, str]:
    if body.get("stream"):
        raise BadRequest("field 'stream': this server answers whole replies only; send stream false or leave it out")
    given = {key: body[key] for key in ("temperature", "max_tokens") if key in body}
    return (_messages(body["messages"], "messages"), *_sampling(given, "", "max_tokens"), "chat_completions")


def parse_request(raw: str | bytes | dict) -> tuple[list[dict], float, int, str]:
    """Validate a request body in either contract; raise BadRequest naming the field at fault.
    Returns (messages, temperature, length limit, contract)."""
    try:
        body = json.loads(raw) if isinstance(raw, (str, bytes)) else raw
    except json.JSONDecodeError as error:
        raise BadRequest(f"body is not JSON: {error.msg}") from None
    except RecursionError:
        raise BadRequest("body is nested too deeply") from None
    except ValueError as error:  # e.g. an integer of more digits than Python converts, or bytes not UTF-8
        raise BadRequest(f"body is not acceptable JSON: {error}") from None
    if isinstance(body, dict) and "messages" in body:
        try:
            return _chat_completions_request(body)
        except BadRequest as error:
            error.contract = "chat_completions"
            raise
    input_data = body.get("input_data") if isinstance(body, dict) else None
    if not isinstance(input_data, dict):
        raise BadRequest("field 'input_data' (or, OpenAI-style, 'messages') must be an object")
    messages = _messages(input_data.get("input_string"), "input_data.input_string")
    given = input_data.get("parameters", {})
    if not isinstance(given, dict):
        raise BadRequest("field 'input_data.parameters' must be an object")
    return (messages, *_sampling(given, "input_data.parameters.", "max_new_tokens"), "input_data")


def run(raw_data):
    try:
        messages, temperature, max_tokens, contract = parse_request(raw_data)
    except BadRequest as error:
        return _error(str(error), error.contract)
    try:
        prompt = model.encode(messages, max_tokens)
    except PromptTooLong as error:
        return _error(str(error), contract)
    reply = batcher.answer((temperature, max_tokens), prompt, cancellation.current_check())
    if contract == "chat_completions":
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": MODEL_NAME, "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": reply.text},
                     "finish_reason": "length" if reply.completion_tokens >= max_tokens else "stop"}],
                "usage": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
                          "total_tokens": reply.prompt_tokens + reply.completion_tokens}}
    return {"output": reply.text}
