"""The scoring contract as the chat flow tool and the pipeline use it, against a 127.0.0.1 endpoint that speaks
only one contract (tests/azure_fakes.scoring_stub): the connection's `contract` decides the request."""

from __future__ import annotations

import sys

import pytest
import requests
from promptflow.connections import CustomConnection

from phi3_pipeline.config.errors import PipelineError
from phi3_pipeline.targets.base import DeploymentRef, ask_scoring_uri
from tests.azure_fakes import ENDPOINT_KEY, scoring_stub
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "phi3_pipeline" / "chat_flow"))
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
