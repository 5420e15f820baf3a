"""The scoring contract as the chat flow tool and the pipeline use it, against a 127.0.0.1 endpoint that speaks
only one contract (tests/azure_fakes.scoring_stub): the connection's `contract` decides the request."""

from __future__ import annotations

import sys

import pytest
import requests
from promptflow.connections import CustomConnection

from phi3_pipeline.chat_flow.scoring_contract import ContractError, answer_from
from phi3_pipeline.config.errors import PipelineError
from phi3_pipeline.targets.base import DeploymentRef, ask_scoring_uri
from tests.azure_fakes import ENDPOINT_KEY, scoring_stub
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "phi3_pipeline" / "chat_flow"))
import scoring_contract as the_tools_contract  # noqa: E402 (the module as the flow's tool imports it)
from integrate_with_promptflow import query_phi3_model  # noqa: E402


def connection(scoring_uri: str, **configs) -> CustomConnection:
    return CustomConnection(configs={"endpoint": scoring_uri, **configs}, secrets={"key": ENDPOINT_KEY})


def test_the_chat_flow_tool_asks_in_the_connections_contract_and_defaults_to_the_tutorials():
    with scoring_stub("OpenAI-style answer", speaks=("chat_completions",)) as (scoring_uri, answered, _):
        assert query_phi3_model("Who founded Microsoft?", connection(scoring_uri, contract="chat_completions")) == \
            "OpenAI-style answer"
        (request,) = answered
        assert request["contract"] == "chat_completions" and request["max_tokens"] == 128
        assert request["messages"] == [{"role": "user", "content": "Who founded Microsoft?"}]
        with pytest.raises(requests.HTTPError, match="404"):
            query_phi3_model("Who founded Microsoft?", connection(scoring_uri))  # no contract: input_data
    with scoring_stub("tutorial answer", speaks=("input_data",)) as (scoring_uri, answered, _):
        assert query_phi3_model("Who founded Microsoft?", connection(scoring_uri)) == "tutorial answer"
        assert answered[0]["input_data"]["parameters"] == {"temperature": 0.7, "max_new_tokens": 128,
                                                           "max_tokens": 128}


@pytest.mark.parametrize(("speaks", "asked"), [(("input_data",), "chat_completions"),
                                               (("chat_completions",), "input_data")])
def test_a_contract_the_deployment_does_not_speak_is_an_error_naming_both(speaks, asked):
    with scoring_stub("answer", speaks=speaks) as (scoring_uri, _, _):
        deployment = DeploymentRef(endpoint_name="ep", deployment_name="deploy-v1", scoring_uri=scoring_uri,
                                   traffic={}, model_version=1, job_name="job", created=False, contract=asked)
        with pytest.raises(PipelineError, match=f"does not answer the {asked} contract .* set the scoring contract "
                                                f"to {speaks[0]}"):
            ask_scoring_uri(deployment, ENDPOINT_KEY, "Who founded Microsoft?", 8, 0.0, timeout_s=10)
        assert ask_scoring_uri(deployment.model_copy(update={"contract": speaks[0]}), ENDPOINT_KEY,
                               "Who founded Microsoft?", 8, 0.0, timeout_s=10) == "answer"


# Failed answers in the shapes the inference servers send (phi3_pipeline/chat_flow/scoring_contract.py names the
# source of each), every one with HTTP 200.
VLLM_REFUSED = {"output": None, "error": {"status_code": 400, "body": {
    "object": "error", "message": "This model's maximum context length is 4096 tokens", "type": "BadRequestError"}}}
ERROR_BODIES = [
    ("error_body foundation-model-serve", VLLM_REFUSED, "answered an error: .*maximum context length"),
    ("error_body openai style", {"error": {"code": "Bad Request", "message": "invalid max_tokens", "status": 400}},
     "answered an error: .*invalid max_tokens"),
    ("error_body engine exception", {}, r"answered an empty body \(\{\}\)"),
    ("error_body older server", {"output": "None"}, "answered the text 'None'"),
    ("error_body null output", {"output": None}, "answered no text"),
]


@pytest.mark.parametrize(("body", "expected"), [case[1:] for case in ERROR_BODIES], ids=[c[0] for c in ERROR_BODIES])
def test_an_error_body_fails_the_call_naming_the_servers_error_never_an_answer(body, expected):
    with scoring_stub("unused", body=body) as (scoring_uri, _, _):
        deployment = DeploymentRef(endpoint_name="ep", deployment_name="deploy-v1", scoring_uri=scoring_uri,
                                   traffic={}, model_version=1, job_name="job", created=False, contract="input_data")
        with pytest.raises(PipelineError, match=f"deployment deploy-v1: the inference server {expected}") as error:
            ask_scoring_uri(deployment, ENDPOINT_KEY, "Who founded Microsoft?", 8, 0.0, timeout_s=10)
        assert "set the scoring contract" not in str(error.value)  # not a contract mismatch
        with pytest.raises((the_tools_contract.ServerError, the_tools_contract.EmptyAnswer), match=expected):
            query_phi3_model("Who founded Microsoft?", connection(scoring_uri))


def test_error_body_an_empty_text_is_the_models_own_answer_not_a_failed_one():
    """A model may answer nothing (greedy decoding that ends at once): the gate scores it, the smoke chat refuses
    it; only a null output is the server's failure."""
    assert answer_from("input_data", {"output": ""}) == ""
    assert answer_from("chat_completions", {"choices": [{"message": {"content": ""}}]}) == ""


@pytest.mark.parametrize("records", [[{"0": "Bill Gates and Paul Allen"}], ["Bill Gates and Paul Allen"],
                                     [{"output": "Bill Gates and Paul Allen"}]])
def test_error_body_the_mlflow_scoring_scripts_records_carry_the_answer(records):
    for contract in ("input_data", "chat_completions"):
        assert answer_from(contract, records) == "Bill Gates and Paul Allen"
    with pytest.raises(ContractError):
        answer_from("input_data", [{"a": 1, "b": 2}])
