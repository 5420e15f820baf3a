"""Stage 10: smoke chat: ask the live deployment through the chat front end(s) of `chat_front_end`: the chat flow
(chat_flow/) through Prompt flow, as the tutorial does, and/or the Agent Framework chat agent (chat_agent/), its
successor."""

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel

from phi3_pipeline import chat_agent
from phi3_pipeline.chat_flow import promptflow_chat
from phi3_pipeline.config.errors import PipelineError
from phi3_pipeline.config.settings import PipelineSettings
from phi3_pipeline.stages import Stage
from phi3_pipeline.targets.base import ConnectionRef, DeploymentRef
from tasks.retries import stage_retries
from tasks.run_target import stage_target

FRONT_ENDS = {"promptflow": "Prompt flow", "agent_framework": "Agent Framework"}


class SmokeChat(BaseModel):
    answers: dict[str, str]  # front end -> its answer

    @property
    def text(self) -> str:
        return next(iter(self.answers.values()))

    @property
    def label(self) -> str:
        """One line, for the run summary's table: each front end's answer with its whitespace collapsed."""
        return "; ".join(f"{FRONT_ENDS[front_end]} answered: {' '.join(answer.split())[:80]}"
                         for front_end, answer in self.answers.items())


@task(name=Stage.SMOKE_CHAT.task_name, **stage_retries())
def smoke_chat(settings: PipelineSettings, connection: ConnectionRef, deployment: DeploymentRef) -> SmokeChat:
    target, answers = stage_target(settings), {}
    if settings.chat_front_end in ("promptflow", "both"):
        flow_dir = promptflow_chat.prepare_flow(target.scratch_dir() / "chat_flow", connection.name)
        answers["promptflow"] = promptflow_chat.run_chat_flow(flow_dir, settings.question,
                                                              settings.smoke_chat_timeout_s).strip()
    if settings.chat_front_end in ("agent_framework", "both"):
        answers["agent_framework"] = chat_agent.ask(settings.agent_env, target.agent_config(
            deployment, settings.question), settings.smoke_chat_timeout_s)
    for front_end, answer in answers.items():
        if not answer:
            raise PipelineError(f"{FRONT_ENDS[front_end]} returned an empty answer from {connection.endpoint}")
    result = SmokeChat(answers=answers)
    get_run_logger().info("Q: %s | %s", settings.question, result.label)
    create_markdown_artifact(key="smoke-chat-answer", description="the fine-tuned model's answer", markdown=(
        f"**Q:** {settings.question}\n\n" + "\n\n".join(f"**A ({FRONT_ENDS[front_end]}):** {answer}"
                                                        for front_end, answer in answers.items()) + "\n"))
    return result
