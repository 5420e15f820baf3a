"""The command line's own options, beside a run's settings: what only a terminal run has (the config file's
path, tracebacks) and the teardown command's age limit, which is the teardown flow's parameter. The flows and
the UI's run form see `PipelineSettings` alone (`settings_of`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from phi3_pipeline.config.settings import CONFIG_FILE_ENV, DEFAULT_CONFIG_FILE, PipelineSettings


class PipelineCommand(PipelineSettings):
    """`python -m flows.full_pipeline` (`phi3-pipeline run | plan`): a run's settings, and the command's own."""

    config: Path | None = Field(
        None, description=f"TOML config file (default: {DEFAULT_CONFIG_FILE} if present; env {CONFIG_FILE_ENV})."
    )
    verbose: bool = Field(False, description="Log tracebacks of expected errors too (bugs always have theirs).")


class TeardownCommand(PipelineCommand):
    """`python -m flows.teardown` (`phi3-pipeline teardown`): which endpoint and where, and the reaper's age."""

    older_than_hours: float | None = Field(
        None, ge=0, description=(
            "Remove every endpoint this project made in the configured workspace (any run, any model) older than "
            "this many hours, 0 for all of them; unset: this configuration's endpoint, whatever its age."),
    )


class ChatCommand(PipelineCommand):
    """`phi3-pipeline chat`: a chat on the terminal with the live deployment through the Agent Framework agent;
    with `--question "..."`, that one question's answer printed (for scripts); with `--ui`, a chat in the
    browser."""

    ui: bool = Field(False, description="Serve the chat as a web page on 127.0.0.1 (Agent Framework's DevUI).")
    ui_port: int = Field(8090, ge=1, le=65535, description="Port of the web chat (`--ui`), on 127.0.0.1 only.")


COMMAND_ONLY = (frozenset(TeardownCommand.model_fields) | frozenset(ChatCommand.model_fields)) \
    - frozenset(PipelineSettings.model_fields)


def settings_of(command: PipelineCommand) -> PipelineSettings:
    """The run's settings, without the command's own options (validated as they are: the file, the environment
    and the flags were read once, for the command)."""
    return PipelineSettings.model_validate(command.model_dump(exclude=COMMAND_ONLY))
