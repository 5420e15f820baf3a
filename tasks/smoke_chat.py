"""Stage 10: smoke chat: run chat_flow/ through Prompt flow against the live endpoint."""

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from phi3_pipeline.chat_flow import promptflow_chat
from phi3_pipeline.config.errors import PipelineError
from phi3_pipeline.config.settings import PipelineSettings
from phi3_pipeline.stages import Stage
from phi3_pipeline.targets.base import ConnectionRef
from tasks.retries import stage_retries
from tasks.run_target import stage_target


@task(name=Stage.SMOKE_CHAT.task_name, **stage_retries())
def smoke_chat(settings: PipelineSettings, connection: ConnectionRef) -> str:
    flow_dir = promptflow_chat.prepare_flow(stage_target(settings).scratch_dir() / "chat_flow", connection.name)
    answer = promptflow_chat.run_chat_flow(flow_dir, settings.question, settings.smoke_chat_timeout_s).strip()
    if not answer:
        raise PipelineError(f"the chat flow returned an empty answer from {connection.endpoint}")
    get_run_logger().info("Q: %s | A: %s", settings.question, answer)
    create_markdown_artifact(key="smoke-chat-answer", description="the fine-tuned model's answer",
                             markdown=f"**Q:** {settings.question}\n\n**A:** {answer}\n")
    return answer
