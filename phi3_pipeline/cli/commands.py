"""Terminal entry points: settings from file/env/flags (refused before the flow starts), then the flow, whose
stages make every other check; any failure ends in one `error:` line.

    phi3-pipeline run | plan | teardown [--help] [flags]   (the same as the module commands below)
"""

from __future__ import annotations

import argparse
import difflib
import gc
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn

from pydantic import ValidationError
from pydantic_settings import CliSettingsSource

from phi3_pipeline import chat_agent
from phi3_pipeline.chat_flow import promptflow_chat
from phi3_pipeline.cli.options import ChatCommand, PipelineCommand, TeardownCommand, settings_of
from phi3_pipeline.cli.prefect_api import prefect_api_dying_with_this_process
from phi3_pipeline.config.errors import ConfigError, PipelineError, TransientError
from phi3_pipeline.config.settings import VM_PRICES_AS_OF, unknown_environment_settings, unknown_setting
from phi3_pipeline.project import load_flow
from phi3_pipeline.targets import get_target
from phi3_pipeline.targets.base import UNPRICED, PlanItem, TeardownReport

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class FlagParser(argparse.ArgumentParser):
    """argparse that fails with one ConfigError (suggesting the closest flag) instead of usage text and exit."""

    def error(self, message: str):
        unknown = message.removeprefix("unrecognized arguments: ").split() if "unrecognized" in message else []
        flags = [flag for flag in unknown if flag.startswith("--")]
        if flags:
            close = difflib.get_close_matches(flags[0], list(self._option_string_actions), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"invalid configuration: unknown flag {flags[0]}{hint}; see --help")
        raise ConfigError(f"invalid configuration: {message}; see --help")


def _problem(model: type[PipelineCommand], item: dict) -> str:
    path = tuple(str(part) for part in item["loc"])
    if item["type"] == "extra_forbidden":
        return unknown_setting(model, path)
    return f"{'.'.join(path) or 'settings'}: {item['msg'].removeprefix('Value error, ')}"


def load_settings(argv: list[str], prog: str, model: type[PipelineCommand] = PipelineCommand) -> PipelineCommand:
    """Parse flags (highest precedence) over env and config file; --help lists every option. A key that names
    no setting, at any level of the file, the environment or the flags, is an error suggesting the closest."""
    source = CliSettingsSource(model, cli_prog_name=prog, cli_implicit_flags=True,
                               root_parser=FlagParser(prog=prog, description=model.__doc__, allow_abbrev=False))
    if problems := unknown_environment_settings(TeardownCommand, dict(os.environ)):  # every command's settings
        raise ConfigError(f"invalid configuration: {'; '.join(problems)}")
    try:
        return model(**source(args=argv)())
    except ValidationError as error:
        raise ConfigError(f"invalid configuration: {'; '.join(_problem(model, i) for i in error.errors())}") from None
    except ValueError as error:  # e.g. a config file that does not exist or does not parse
        raise ConfigError(f"invalid configuration: {error}") from None


def preflight(command: PipelineCommand) -> None:
    """Prompt flow, which the connection and smoke chat stages use, is loaded while Prefect's API server loads.
    Every check of the run itself is a stage of the flow."""
    promptflow_chat.load()


def _fail(error: BaseException) -> int:
    message = str(error) if isinstance(error, PipelineError) else f"{type(error).__name__}: {error}"
    print(f"error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT if isinstance(error, ConfigError) else EXIT_FAILED


def print_plan(items: list[PlanItem]) -> None:
    print(f"{'resource':<58} {'action':<16} {'USD/h':>6}  detail")
    for item in items:
        cost = f"{item.usd_per_hour:.2f}" if item.usd_per_hour else ""
        print(f"{item.resource:<58} {item.action:<16} {cost:>6}  {item.detail}")
    total = sum(item.usd_per_hour for item in items)
    unpriced = " and VM sizes without a price" if any(UNPRICED in item.detail for item in items) else ""
    print(f"\nestimated: up to {total:.2f} USD/hour while everything it starts runs (VM list prices of "
          f"{VM_PRICES_AS_OF}, azure.vm_prices_usd_per_hour; storage, traffic{unpriced} not included). "
          "Nothing was created.")


class WithoutExpectedTracebacks(logging.Filter):
    """Prefect logs a failed task's or flow's exception with its traceback; for an expected error (a
    PipelineError, which says what to do) the one `error:` line is enough. Tracebacks of bugs stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], PipelineError):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_expected_tracebacks() -> None:
    """Put the filter on every handler Prefect and the root logger have (Prefect sets them up on import)."""
    for logger in (logging.getLogger(), logging.getLogger("prefect")):
        for handler in logger.handlers:
            if not any(isinstance(f, WithoutExpectedTracebacks) for f in handler.filters):
                handler.addFilter(WithoutExpectedTracebacks())


def _run(argv: list[str], prog: str, check: Callable, run: Callable, report: Callable,
         model: type[PipelineCommand] = PipelineCommand) -> int:
    """Settings, checks, then the flow; any failure ends in one `error:` line and a non-zero exit."""
    try:
        command = load_settings(argv, prog, model)
        with _flow_run(command, while_starting=lambda: check(command)):  # checks while Prefect's API loads
            result = run(command)
    except (PipelineError, TransientError, OSError) as error:  # e.g. a folder that cannot be written
        return _fail(error)
    except KeyboardInterrupt:
        print("interrupted: a running fine-tune job keeps going; run the same command again to resume",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # the flow's logs above hold the details; the user gets one line
        return _fail(error)
    report(command, result)
    return 0


@contextmanager
def _flow_run(command: PipelineCommand, while_starting: Callable[[], None]) -> Iterator[None]:
    """What a flow started from the command line runs with: expected errors logged without tracebacks (unless
    --verbose), and a Prefect API server that dies with the command (`while_starting` runs as it loads)."""
    if not command.verbose:
        quiet_expected_tracebacks()
    with prefect_api_dying_with_this_process(while_starting):
        yield


def _print_result(command: PipelineCommand, result: dict) -> None:
    if command.plan:
        print_plan([PlanItem(**item) for item in result["plan"]])
        return
    print("\nstage                outcome            seconds  detail")
    for row in result["stages"]:
        print(f"{row['stage']:<20} {row['outcome']:<18} {row['seconds']:>7.2f}  {row['detail']}")
    if "unchanged" in result:
        print(f"\nnothing to retrain: {result['unchanged']}")
        return
    print(f"\nmodel version {result['model_version']} (job {result['job']})")
    print(f"Q: {command.question}\nA: {result['answer']}")


def _print_report(command: TeardownCommand, report: TeardownReport) -> None:
    if report.skipped:
        print(f"skipped: {report.skipped}")
    print(f"removed: {', '.join(report.removed) or 'nothing'}")
    print(f"already gone: {', '.join(report.already_gone) or 'nothing'}")
    if report.kept:
        print(f"kept (not made by this pipeline, or not this workspace's): {', '.join(report.kept)}")


PIPELINE_PROG, TEARDOWN_PROG = "python -m flows.full_pipeline", "python -m flows.teardown"
CONSOLE_PROG = "phi3-pipeline"


def run_pipeline_cli(argv: list[str], pipeline_flow: Callable | None = None, prog: str = PIPELINE_PROG) -> int:
    """The pipeline (or its plan, which the flow makes as it does for the UI) from the command line;
    `pipeline_flow` is given by the flow module run as a command, else loaded from its entrypoint."""
    flow = pipeline_flow or load_flow("full-pipeline")

    def check(command: PipelineCommand) -> None:
        if not command.plan:  # a plan only reads: it shows what is short instead of failing on it
            preflight(command)

    return _run(argv, prog, check, lambda command: flow(settings_of(command)), _print_result)


def run_teardown_cli(argv: list[str], teardown_flow: Callable | None = None, prog: str = TEARDOWN_PROG) -> int:
    flow = teardown_flow or load_flow("teardown")

    def run(command: TeardownCommand) -> TeardownReport:
        return flow(settings_of(command), command.older_than_hours)

    return _run(argv, prog, get_target, run, _print_report, TeardownCommand)


def run_chat_cli(argv: list[str], prog: str = f"{CONSOLE_PROG} chat") -> int:
    """Chat with the live deployment through the Agent Framework agent: on the terminal, in the browser (`--ui`),
    or with `--question` one answer printed (for scripts). Nothing live, a deployment gone or refusing: one line,
    exit code 2."""
    one_question = any(arg == "--question" or arg.startswith("--question=") for arg in argv)
    try:
        command = load_settings(argv, prog, ChatCommand)
        target = get_target(settings_of(command))
        live = target.live_deployment()
        if live is None:
            raise ConfigError(f"nothing is deployed on the {target.name} target: run `{PIPELINE_PROG}` first")
        config = target.agent_config(live, command.question)
        if one_question:
            print(chat_agent.ask(command.agent_env, config, command.smoke_chat_timeout_s))
            return 0
        if command.ui:
            return chat_agent.web_chat(command.agent_env, config, command.ui_port)
        return chat_agent.chat(command.agent_env, config)
    except (PipelineError, TransientError, OSError) as error:
        return _fail(error)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


COMMANDS = {
    "run": ("fine-tune, deploy and wire up the model (python -m flows.full_pipeline)",
            lambda argv: run_pipeline_cli(argv, prog=f"{CONSOLE_PROG} run")),
    "plan": ("what a run would do and cost, creating nothing (python -m flows.full_pipeline --plan)",
             lambda argv: run_pipeline_cli(["--plan", *argv], prog=f"{CONSOLE_PROG} plan")),
    "teardown": ("remove what bills by the hour (python -m flows.teardown)",
                 lambda argv: run_teardown_cli(argv, prog=f"{CONSOLE_PROG} teardown")),
    "chat": ("chat with the live model through the Agent Framework agent (--question: one answer; --ui: in the "
             "browser)", run_chat_cli),
}


def main(argv: list[str] | None = None) -> int:
    """`phi3-pipeline run | plan | teardown | chat [flags]`: the module commands under one name (console script)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]][1](argv[1:])
    usage = f"usage: {CONSOLE_PROG} {{{' | '.join(COMMANDS)}}} [--help] [flags]\n\n" + "\n".join(
        f"  {name:<9} {text}" for name, (text, _) in COMMANDS.items())
    if argv and argv[0] in ("-h", "--help"):
        print(usage)
        return 0
    unknown = f"unknown command {argv[0]!r}; " if argv else ""
    print(f"{usage}\n\nerror: {unknown}give one of {', '.join(COMMANDS)}", file=sys.stderr)
    return EXIT_BAD_INPUT


def finish(code: int) -> NoReturn:
    """End the command with `code`; what Prefect and Prompt flow built is left to the process's end instead of
    being walked by the interpreter's last garbage collections (0.8 s of a warm re-run)."""
    gc.freeze()
    sys.exit(code)


def console_script() -> NoReturn:
    finish(main())
