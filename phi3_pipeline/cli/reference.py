"""The configuration reference, generated from the settings themselves, so that it cannot drift from them.

    python -m phi3_pipeline.cli.reference > docs/configuration.md

Every setting of `PipelineSettings` (nested sections walked), with its type, default, description, environment
variable and flag; then the command line's own options (`cli.options.COMMAND_ONLY`). The output depends on the
code only (no clock, no environment), so `tests/test_docs.py` can tell when the file is stale.
"""

from __future__ import annotations

import json
import types
import typing
from enum import Enum
from pathlib import Path

from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from phi3_pipeline.cli.commands import CONSOLE_PROG, PIPELINE_PROG, TEARDOWN_PROG
from phi3_pipeline.cli.options import COMMAND_ONLY, ChatCommand, PipelineCommand, TeardownCommand
from phi3_pipeline.config.settings import (
    CONFIG_FILE_ENV,
    DEFAULT_CONFIG_FILE,
    ENV_PREFIX,
    MANAGED_ONLY_SETTINGS,
    PipelineSettings,
)

REGENERATE = "python -m phi3_pipeline.cli.reference > docs/configuration.md"


def _section_model(field: FieldInfo) -> type[BaseModel] | None:
    annotation = field.annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _type_name(annotation) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{value}`" for value in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        inner = " or ".join(_type_name(arg) for arg in args)
        return f"{inner}, optional" if len(args) < len(typing.get_args(annotation)) else inner
    if origin is dict:
        key, value = typing.get_args(annotation)
        return f"JSON object ({_type_name(key)} to {_type_name(value)})"
    if annotation is Path:
        return "path"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation)


def _limits(field: FieldInfo) -> str:
    words = []
    for item in field.metadata:
        if isinstance(item, Gt):
            words.append(f"> {item.gt}")
        elif isinstance(item, Ge):
            words.append(f">= {item.ge}")
        elif isinstance(item, Lt):
            words.append(f"< {item.lt}")
        elif isinstance(item, Le):
            words.append(f"<= {item.le}")
        elif isinstance(item, MinLen):
            words.append("not empty" if item.min_length == 1 else f"at least {item.min_length} characters")
        elif isinstance(item, MaxLen):
            words.append(f"at most {item.max_length} characters")
        elif getattr(item, "pattern", None):
            words.append(f"matches `{item.pattern}`")
    return ", ".join(words)


def _default(field: FieldInfo) -> str:
    value = field.default
    if value is PydanticUndefined and field.default_factory is not None:
        value = field.default_factory()
    if value is None:
        return "(unset)"
    if value == "":
        return '`""` (empty)'
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, dict):
        return f"`{json.dumps(value, sort_keys=True)}`"
    if isinstance(value, Path):
        return f"`{value.as_posix()}`"
    return f"`{value}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def environment_variable(path: tuple[str, ...]) -> str:
    """`PHI3_TRAINING__LEARNING_RATE` for ("training", "learning_rate")."""
    return ENV_PREFIX + "__".join(path).upper()


def flag(path: tuple[str, ...], field: FieldInfo) -> str:
    """`--training.learning_rate`; a yes/no setting has its `--no-` form too."""
    name = ".".join(path)
    return f"`--{name}`, `--no-{name}`" if field.annotation is bool else f"`--{name}`"


def settings_rows(model: type[BaseModel] = PipelineSettings,
                  path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], FieldInfo]]:
    """Every leaf setting under `model`, in declaration order, as (dotted path parts, field)."""
    rows = []
    for name, field in model.model_fields.items():
        section = _section_model(field)
        if section is not None:
            rows.extend(settings_rows(section, (*path, name)))
        else:
            rows.append(((*path, name), field))
    return rows


def _sections(model: type[BaseModel] = PipelineSettings,
              path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], type[BaseModel]]]:
    """The model and every nested section, each followed by its own subsections."""
    found = [(path, model)]
    for name, field in model.model_fields.items():
        section = _section_model(field)
        if section is not None:
            found.extend(_sections(section, (*path, name)))
    return found


HEADER = "| setting | type | default | environment | flag | description |\n|---|---|---|---|---|---|"


def _row(path: tuple[str, ...], field: FieldInfo) -> str:
    kind = _type_name(field.annotation)
    if limits := _limits(field):
        kind = f"{kind} ({limits})"
    description = field.description or ""
    if path[:-1] == ("azure",) and path[-1] in MANAGED_ONLY_SETTINGS:
        description += " Managed mode only: refused when changed in serverless mode."
    return (f"| `{'.'.join(path)}` | {_cell(kind)} | {_cell(_default(field))} | `{environment_variable(path)}` "
            f"| {flag(path, field)} | {_cell(description)} |")


def _section_title(path: tuple[str, ...]) -> str:
    return f"`{'.'.join(path)}.*`" if path else "Top level"


def _doc_line(model: type[BaseModel]) -> str:
    return " ".join((model.__doc__ or "").split())


def _command_only_lines() -> list[str]:
    commands = (
        (PipelineCommand, f"`{PIPELINE_PROG}` (`{CONSOLE_PROG} run`, `{CONSOLE_PROG} plan`)"),
        (TeardownCommand, f"`{TEARDOWN_PROG}` (`{CONSOLE_PROG} teardown`)"),
        (ChatCommand, f"`{CONSOLE_PROG} chat`"),
    )
    lines = [
        "## Command-line options",
        "",
        "These belong to the commands, not to a run's settings: the flows, the Prefect deployments and the UI's "
        "run form do not have them (`older_than_hours` reaches the teardown flow as its own parameter, as the "
        "`reaper` deployment in `prefect.yaml` gives it).",
        "",
        "| option | type | default | environment | flag | commands | description |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in sorted(COMMAND_ONLY):
        field = next(model.model_fields[name] for model, _ in commands if name in model.model_fields)
        kind = _type_name(field.annotation)
        if limits := _limits(field):
            kind = f"{kind} ({limits})"
        environment = CONFIG_FILE_ENV if name == "config" else environment_variable((name,))
        used_by = "; ".join(text for model, text in commands if name in model.model_fields)
        lines.append(f"| `{name}` | {_cell(kind)} | {_cell(_default(field))} | `{environment}` "
                     f"| {flag((name,), field)} | {used_by} | {_cell(field.description or '')} |")
    return lines


def configuration_markdown() -> str:
    """docs/configuration.md, made from the settings' own fields."""
    lines = [
        "# Configuration reference",
        "",
        f"<!-- Generated by `{REGENERATE}`; do not edit by hand. -->",
        "",
        "One typed configuration (`phi3_pipeline.config.settings.PipelineSettings`, pydantic-settings).",
        "",
        "**Precedence**, lowest first: defaults < TOML config file < environment variables < command-line flags.",
        "",
        f"**Config file**: `{DEFAULT_CONFIG_FILE.as_posix()}` in the current folder if present, or the file "
        f"named by `--config` / `{CONFIG_FILE_ENV}`. Sections of the file are the dotted names' first parts "
        "(`[training]`, `[azure.training]`).",
        "",
        f"**Environment variables** start with `{ENV_PREFIX}` and nest with `__` (`{ENV_PREFIX}TRAINING__EPOCHS=4`); "
        "**flags** use the dotted names (`--training.epochs 4`); a JSON object setting takes JSON in either. "
        "A name that is no setting, in the file, the environment or the flags, is an error naming the closest "
        "one; an invalid value is refused before any work, naming the setting. `--help` lists every flag.",
        "",
        f"{len(settings_rows())} settings in all.",
        "",
    ]
    for path, model in _sections():
        rows = [(p, f) for p, f in settings_rows(model, path) if len(p) == len(path) + 1]
        if not rows:
            continue
        lines += [f"## {_section_title(path)}", ""]
        if path and (doc := _doc_line(model)):
            lines += [doc, ""]
        lines += [HEADER, *(_row(p, f) for p, f in rows), ""]
    lines += _command_only_lines()
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(configuration_markdown(), end="")
