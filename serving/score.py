"""Scoring script in Azure ML's init()/run() contract, served by azureml-inference-server-http.

Request:  {"input_data": {"input_string": [{"role": "user", "content": "..."}],
                          "parameters": {"temperature": 0.7, "max_new_tokens": 128}}}
Response: {"output": "..."}; a malformed body gets 400 with {"error": "..."}.
The model folder comes from AZUREML_MODEL_DIR, as on an Azure managed online deployment.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from azureml_inference_server_http.api.aml_response import AMLResponse  # noqa: E402
from chat_model import DEFAULT_PARAMETERS, ChatModel  # noqa: E402

logger = logging.getLogger(__name__)
MAX_NEW_TOKENS_LIMIT = int(os.environ.get("PHI3_MAX_NEW_TOKENS_LIMIT", "256"))
KNOWN_ROLES = ("system", "user", "assistant")
model: ChatModel | None = None


class BadRequest(ValueError):
    """The body does not follow the chat contract."""


def init() -> None:
    global model
    model = ChatModel(os.environ["AZUREML_MODEL_DIR"])
    logger.info("model loaded")


def parse_request(raw: str | bytes | dict) -> tuple[list[dict], float, int]:
    """Validate a request body; raise BadRequest naming the field at fault."""
    try:
        body = json.loads(raw) if isinstance(raw, (str, bytes)) else raw
    except json.JSONDecodeError as error:
        raise BadRequest(f"body is not JSON: {error.msg}") from None
    input_data = body.get("input_data") if isinstance(body, dict) else None
    if not isinstance(input_data, dict):
        raise BadRequest("field 'input_data' must be an object")
    messages = input_data.get("input_string")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("field 'input_data.input_string' must be a non-empty list of {role, content}")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in KNOWN_ROLES:
            raise BadRequest(f"field 'input_data.input_string[{index}].role' must be one of {KNOWN_ROLES}")
        if not isinstance(message.get("content"), str) or not message["content"].strip():
            raise BadRequest(f"field 'input_data.input_string[{index}].content' must be non-empty text")
    given = input_data.get("parameters") or {}
    if not isinstance(given, dict):
        raise BadRequest("field 'input_data.parameters' must be an object")
    parameters = {**DEFAULT_PARAMETERS, **given}
    temperature, max_new_tokens = parameters["temperature"], parameters["max_new_tokens"]
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
        raise BadRequest("field 'input_data.parameters.temperature' must be a number from 0 to 2")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
            or not 1 <= max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
        raise BadRequest(
            f"field 'input_data.parameters.max_new_tokens' must be an integer from 1 to {MAX_NEW_TOKENS_LIMIT}"
        )
    return messages, float(temperature), max_new_tokens


def run(raw_data):
    try:
        messages, temperature, max_new_tokens = parse_request(raw_data)
    except BadRequest as error:
        return AMLResponse({"error": str(error)}, 400, json_str=True)
    return {"output": model.chat(messages, temperature, max_new_tokens)}
