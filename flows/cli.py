"""Terminal entry points: settings from file/env/flags, checks before any work, one-line errors."""

from __future__ import annotations

import sys

from pydantic import ValidationError
from pydantic_settings import CliSettingsSource

from pipeline.chat_data import check_source
from pipeline.config import PipelineSettings
from pipeline.errors import ConfigError, PipelineError

from targets import get_target
from targets.base import raise_if_short

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


def load_settings(argv: list[str], prog: str) -> PipelineSettings:
    """Parse flags (highest precedence) over env and config file; --help lists every option."""
    source = CliSettingsSource(PipelineSettings, cli_prog_name=prog, cli_implicit_flags=True)
    try:
        return PipelineSettings(**source(args=argv)())
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc']) or 'settings'}: {item['msg']}" for item in error.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None
    except ValueError as error:  # e.g. a config file that does not exist
        raise ConfigError(f"invalid configuration: {error}") from None


def preflight(settings: PipelineSettings) -> None:
    """What can be checked before Prefect starts: target, data source records, free resources."""
    target = get_target(settings)
    check_source(settings.dataset, target.scratch_dir())
    raise_if_short(target.check_resources())


def _fail(error: BaseException) -> int:
    print(f"error: {error}", file=sys.stderr)
    return EXIT_BAD_INPUT if isinstance(error, ConfigError) else EXIT_FAILED


def run_pipeline_cli(argv: list[str]) -> int:
    try:
        settings = load_settings(argv, "python -m flows.full_pipeline")
        preflight(settings)
    except PipelineError as error:
        return _fail(error)
    from flows.full_pipeline import full_pipeline

    try:
        result = full_pipeline(settings)
    except PipelineError as error:
        return _fail(error)
    except KeyboardInterrupt:
        print("interrupted: a running fine-tune job keeps going; run the same command again to resume",
              file=sys.stderr)
        return 130
    print("\nstage                outcome            seconds")
    for row in result["stages"]:
        print(f"{row['stage']:<20} {row['outcome']:<18} {row['seconds']:>7.2f}")
    print(f"\nmodel version {result['model_version']} (job {result['job']})")
    print(f"Q: {settings.question}\nA: {result['answer']}")
    return 0


def run_teardown_cli(argv: list[str]) -> int:
    try:
        settings = load_settings(argv, "python -m flows.teardown")
        get_target(settings)
    except PipelineError as error:
        return _fail(error)
    from flows.teardown import teardown

    try:
        report = teardown(settings)
    except PipelineError as error:
        return _fail(error)
    print(f"removed: {', '.join(report.removed) or 'nothing'}")
    print(f"already gone: {', '.join(report.already_gone) or 'nothing'}")
    return 0
