"""The chat agent: Microsoft Agent Framework in front of the deployed model, run in the agent's own environment.

    <agent env>/bin/python agent_chat.py --config-fd N [--question | --ui PORT]

Agent Framework and Prompt flow cannot share one environment (requirements.txt says why), so this file runs in
the agent's environment and imports nothing of the pipeline but the self-contained scoring contract beside the
chat flow. The deployment (endpoint, contract, deployment name) and the key come as JSON on file descriptor N,
never on the command line or in the environment, where `ps` or another process could read them.

It speaks the deployment's own contract:
- chat_completions: Agent Framework's OpenAI-compatible chat client, at the scoring URI's base;
- input_data: `InputDataChatClient`, a chat client of the framework's own kind (`BaseChatClient`).
With `--question`, the question is read from the config and the answer printed; with `--ui PORT`, Agent
Framework's DevUI serves the agent as a web chat on 127.0.0.1:PORT, behind the sign-in token from the config;
otherwise a chat on the terminal, its history kept by the agent's session, until an empty line, `exit` or end of
input. A failure is one line on standard error, `error: ...`, and exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "chat_flow"))

from agent_framework import (  # noqa: E402
    Agent,
    BaseChatClient,
    ChatResponse,
    ChatResponseUpdate,
    Message,
    ResponseStream,
)
from agent_framework.openai import OpenAIChatCompletionClient  # noqa: E402
from scoring_contract import (  # noqa: E402
    DEPLOYMENT_HEADER,
    SCORE_PATH,
    ContractError,
    EmptyAnswer,
    ServerError,
    answer_from,
    request_for,
)

INSTRUCTIONS = "You are a helpful assistant."
DEFAULTS = {"temperature": 0.7, "max_tokens": 128}
EXIT_WORDS = ("", "exit", "quit")


class WholeReplies:
    """A chat client whose server answers whole replies: a stream asked of it (DevUI asks for one) is that reply,
    as one update."""

    def _inner_get_response(self, *, messages, stream=False, options, **kwargs):
        if not stream:
            return self._whole_reply(messages=messages, options=options, **kwargs)

        async def updates():
            reply = await self._whole_reply(messages=messages, options=options, **kwargs)
            yield ChatResponseUpdate(role="assistant", contents=reply.messages[0].contents)

        return ResponseStream(updates(), finalizer=ChatResponse.from_updates)

    def _whole_reply(self, **request):
        """The client's own request for a whole reply."""
        return super()._inner_get_response(stream=False, **request)


class WholeReplyChatCompletionClient(WholeReplies, OpenAIChatCompletionClient):
    """The OpenAI-compatible client for a server that refuses `stream` (the local target's)."""


class InputDataChatClient(WholeReplies, BaseChatClient):
    """The tutorial's request shape (`input_data`) as an Agent Framework chat client: the conversation goes as
    `input_string`, the reply comes back as `output` (whole: the contract does not stream)."""

    OTEL_PROVIDER_NAME = "azureml-input-data"

    def __init__(self, scoring_uri: str, key: str, deployment: str, timeout_s: float):
        super().__init__()
        self._scoring_uri, self._key, self._deployment, self._timeout_s = scoring_uri, key, deployment, timeout_s

    async def _whole_reply(self, *, messages, options, **kwargs) -> ChatResponse:
        options = await self._validate_options(options)
        conversation = [{"role": str(getattr(m.role, "value", m.role)), "content": m.text} for m in messages]
        url, body = request_for("input_data", self._scoring_uri, conversation,
                                options.get("temperature", DEFAULTS["temperature"]),
                                options.get("max_tokens", DEFAULTS["max_tokens"]))
        text = await asyncio.to_thread(self._post, url, body)
        return ChatResponse(messages=[Message(role="assistant", contents=[text])])

    def _post(self, url: str, body: dict) -> str:
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self._key}",
                   DEPLOYMENT_HEADER: self._deployment}
        request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=self._timeout_s) as response:
            return answer_from("input_data", json.loads(response.read()))


def make_agent(config: dict) -> Agent:
    """The agent for the deployment, in its contract."""
    uri, key, contract, deployment = (config[k] for k in ("scoring_uri", "key", "contract", "deployment"))
    if contract == "chat_completions":
        base = uri[: -len(SCORE_PATH)] if uri.endswith(SCORE_PATH) else uri.rstrip("/")
        client_class = OpenAIChatCompletionClient if config["streams"] else WholeReplyChatCompletionClient
        client = client_class(model=deployment, api_key=key, base_url=base,
                              default_headers={DEPLOYMENT_HEADER: deployment})
    else:
        client = InputDataChatClient(uri, key, deployment, config["timeout_s"])
    return Agent(client=client, instructions=INSTRUCTIONS, name="phi3-chat", default_options=dict(DEFAULTS))


async def ask(agent: Agent, question: str, session=None) -> str:
    answer = (await agent.run(question, session=session)).text.strip()
    if not answer:
        raise EmptyAnswer("the deployment answered with no text")
    return answer


async def chat(agent: Agent, name: str) -> None:
    """A conversation on the terminal; the agent's session keeps its history."""
    session = agent.create_session()
    print(f"chatting with {name} (an empty line or 'exit' ends it)", flush=True)
    while True:
        try:
            question = input("you> ")
        except EOFError:
            break
        if question.strip().lower() in EXIT_WORDS:
            break
        print("model> ", end="", flush=True)
        answered = False
        async for update in agent.run(question, session=session, stream=True):
            answered = answered or bool(update.text.strip())
            print(update.text, end="", flush=True)
        print(flush=True)
        if not answered:
            raise EmptyAnswer("the deployment answered with no text")


def serve_web_chat(agent: Agent, port: int, sign_in_token: str) -> None:
    """DevUI in its user mode (chat only, generic errors), on the loopback interface, behind a sign-in token: no
    other user of this machine chats on the deployment's bill. Ends on Ctrl-C or SIGTERM."""
    from agent_framework_devui import serve

    serve(entities=[agent], host="127.0.0.1", port=port, mode="user", auth_enabled=True, auth_token=sign_in_token)


def main() -> int:
    # the framework warns that a chat client without tool calling "might limit agent capabilities": this agent
    # calls no tools, and the terminal is the conversation's
    logging.getLogger("agent_framework").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-fd", type=int, required=True)
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--question", action="store_true", help="answer the config's question and end")
    modes.add_argument("--ui", type=int, metavar="PORT", help="serve the web chat on 127.0.0.1:PORT")
    arguments = parser.parse_args()
    with os.fdopen(arguments.config_fd, encoding="utf-8") as source:
        config = json.load(source)
    agent = make_agent(config)
    try:
        if arguments.question:
            print(asyncio.run(ask(agent, config["question"])), flush=True)
        elif arguments.ui:
            serve_web_chat(agent, arguments.ui, config["ui_token"])
        else:
            asyncio.run(chat(agent, config["deployment"]))
    except (ServerError, EmptyAnswer, ContractError, urllib.error.URLError, OSError) as error:
        print(f"error: {config['deployment']} ({config['contract']}): {error}", file=sys.stderr)
        return 2
    except Exception as error:  # the framework's own (an HTTP status from the OpenAI client): one line
        print(f"error: {config['deployment']} ({config['contract']}): {type(error).__name__}: {error}",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
