"""The tutorial's Prompt flow tool: send the question to the fine-tuned model's endpoint.

It reads `endpoint` and `key` from a CustomConnection, posts the chat contract with the key as a
bearer token, raises on HTTP errors and returns the model's `output`. It logs the response at
DEBUG level like the tutorial, and never logs the key or the request headers.
"""

import logging

import requests
from promptflow.connections import CustomConnection
from promptflow.core import tool

logger = logging.getLogger(__name__)
REQUEST_TIMEOUT_S = 120


def query_phi3_model(input_data: str, connection: CustomConnection) -> str:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {connection.key}"}
    data = {
        "input_data": {
            "input_string": [{"role": "user", "content": input_data}],
            "parameters": {"temperature": 0.7, "max_new_tokens": 128},
        }
    }
    response = requests.post(connection.endpoint, json=data, headers=headers, timeout=REQUEST_TIMEOUT_S)
    if not response.ok:
        logger.error("endpoint %s answered HTTP %s: %s", connection.endpoint, response.status_code,
                     response.text[:500])
        response.raise_for_status()
    logger.debug("Full JSON response: %s", response.json())
    return response.json()["output"]


@tool
def my_python_tool(input_data: str, connection: CustomConnection) -> str:
    return query_phi3_model(input_data, connection)
