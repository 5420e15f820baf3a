"""The tutorial's Prompt flow tool: send the question to the fine-tuned model's endpoint.

It reads `endpoint`, `key` and `contract` (input_data, the tutorial's body, when absent) from a
CustomConnection, posts the question in that contract with the key as a bearer token, raises on HTTP
errors and returns the model's answer. A connection to a token-auth endpoint holds no key but the scope of the
Microsoft Entra token to send, which is asked of azure-identity's DefaultAzureCredential at each call. It logs
the response at DEBUG level like the tutorial, and never logs the key, a token or the request headers. A thin
adapter around one HTTP call (scoring_contract.py).
"""

import logging
import sys
from pathlib import Path

import requests
from promptflow.connections import CustomConnection
from promptflow.core import tool

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scoring_contract import answer_from, request_for  # noqa: E402

logger = logging.getLogger(__name__)
REQUEST_TIMEOUT_S = 120


def _bearer(connection: CustomConnection) -> str:
    """The endpoint's key, or a fresh token where the connection holds a token scope instead."""
    if "key" in connection.secrets:
        return connection.secrets["key"]
    import azure.identity

    return azure.identity.DefaultAzureCredential().get_token(connection.secrets["token_scope"]).token


def query_phi3_model(input_data: str, connection: CustomConnection) -> str:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {_bearer(connection)}"}
    contract = connection.configs.get("contract", "input_data")
    url, data = request_for(contract, connection.endpoint, [{"role": "user", "content": input_data}], 0.7, 128)
    response = requests.post(url, json=data, headers=headers, timeout=REQUEST_TIMEOUT_S)
    if not response.ok:
        logger.error("endpoint %s answered HTTP %s: %s", url, response.status_code, response.text[:500])
        response.raise_for_status()
    logger.debug("Full JSON response: %s", response.json())
    return answer_from(contract, response.json())


@tool
def my_python_tool(input_data: str, connection: CustomConnection) -> str:
    return query_phi3_model(input_data, connection)
