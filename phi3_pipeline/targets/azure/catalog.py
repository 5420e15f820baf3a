"""The model catalog on Azure: which model a run fine-tunes, whether it still may, on which VM sizes and with
which hyperparameters, all read from the model's registry entry at run time (the tutorial's Phi-3-mini and
its Standard_NC6s_v3 are retired; docs/azure.md, "Choosing the model").

A model version's facts can live in three places, read in this order, each fact from the first that has it:
- `system_metadata` (Azure/azureml-assets #5150, 2026-06-16): `deprecation.finetuneRetirementDate` ...,
  `supportedComputes.finetuneComputes` / `inferenceComputes`, `tasks.fineTuningTasks`. azure-ai-ml 1.35's
  `Model` has no field for it, and no registry api-version found in the REST specs or the SDK's recordings
  documents it in the body, so it may well not come back;
- properties (add-only on the registry, so they survive a republish): `finetune-recommended-sku`,
  `inference-recommended-sku`, `finetuning-tasks` (what azureml-examples' notebook reads);
- tags (replaced on every publish: Phi-4's compute allow-lists left with #5190, 2026-07-01):
  `finetune_compute_allow_list`, `inference_compute_allow_list`, `FinetuneRetirementDate` ...
`--plan` names where each fact came from. An archived version (`isArchived`, the SDK's `stage` "Archived") is
refused like a retired one; one past its `inferenceLegacyDate` gets a warning, as a deprecated one does. The
fine-tuning defaults stay in the `model_specific_defaults` tag in every shape.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from azure.ai.ml import MLClient
from azure.ai.ml._utils._registry_utils import get_registry_versioned_asset
from azure.ai.ml.entities import Model
from azure.core.exceptions import HttpResponseError

from phi3_pipeline.config.errors import ConfigError
from phi3_pipeline.config.settings import AzureSettings, AzureTrainingSettings

CHAT_COMPLETION = "chat-completion"
ARCHIVED = "archived"
# VM sizes Azure has retired, with the date; a model's compute list may still name them (Phi-3-mini lists the
# NCv3 sizes). Sources: MicrosoftDocs/azure-docs articles/virtual-machines/ncv3-nc6s-nc12s-nc24s-retirement.md
# (NCv3, 2025-09-30) and MicrosoftDocs/azure-compute-docs articles/virtual-machines/sizes/retirement/
# retired-sizes-list.md (NCv3 NC24rs 2025-09-30; NVv3 and NVv4 2026-09-30).
RETIRED_VM_SIZES = {
    **dict.fromkeys(("Standard_NC6s_v3", "Standard_NC12s_v3", "Standard_NC24s_v3", "Standard_NC24rs_v3"),
                    "2025-09-30"),
    **dict.fromkeys(("Standard_NV12s_v3", "Standard_NV24s_v3", "Standard_NV48s_v3", "Standard_NV4as_v4",
                     "Standard_NV8as_v4", "Standard_NV16as_v4", "Standard_NV32as_v4"), "2026-09-30"),
}
RETIRED = {size.lower(): retired_on for size, retired_on in RETIRED_VM_SIZES.items()}
# The lifecycle dates: (system_metadata.deprecation key, tag). There is no fine-tuning Legacy stage.
LIFECYCLE_KEYS = {
    "finetune_deprecation": ("finetuneDeprecationDate", "FinetuneDeprecationDate"),
    "finetune_retirement": ("finetuneRetirementDate", "FinetuneRetirementDate"),
    "inference_deprecation": ("inferenceDeprecationDate", "InferenceDeprecationDate"),
    "inference_legacy": ("inferenceLegacyDate", "InferenceLegacyDate"),
    "inference_retirement": ("inferenceRetirementDate", "InferenceRetirementDate"),
}
# Where each list fact may live, in the order read: (place, key in system_metadata / properties / tags).
FACT_PLACES = {
    "finetune computes": (("system metadata", "supportedComputes.finetuneComputes"),
                          ("properties", "finetune-recommended-sku"), ("tags", "finetune_compute_allow_list")),
    "inference computes": (("system metadata", "supportedComputes.inferenceComputes"),
                           ("properties", "inference-recommended-sku"), ("tags", "inference_compute_allow_list")),
    "fine-tuning tasks": (("system metadata", "tasks.fineTuningTasks"), ("properties", "finetuning-tasks")),
}
NOWHERE = "nowhere"
USES = {"finetune": "fine-tuning", "inference": "inference"}
# The fine-tuning component's input names for the tutorial's advanced settings (azureml-assets,
# chat_completion_pipeline), keyed by the AzureTrainingSettings field that sets each.
HYPERPARAMETERS = {"learning_rate": "learning_rate", "lr_scheduler_type": "lr_scheduler_type",
                   "epochs": "num_train_epochs", "batch_size": "per_device_train_batch_size"}
FAMILY_CANDIDATES_CHECKED = 40  # registry entries read to suggest replacements (only on the error path)


def _as_dict(value) -> dict:
    """A tag holding a mapping arrives as a mapping or as its JSON / Python-literal text."""
    if isinstance(value, dict):
        return value
    for parse in (json.loads, ast.literal_eval):
        try:
            parsed = parse(value)
        except (ValueError, SyntaxError, TypeError):
            continue
        if isinstance(parsed, dict):
            return parsed
    return {}


def _as_list(value) -> tuple[str, ...]:
    """A list in either shape: a YAML/JSON list, its text ('["a", "b"]', '[ a, b ]'), or 'a, b'."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        value = value.strip().removeprefix("[").removesuffix("]")
        value = [part.strip().strip("'\"") for part in value.replace("\n", ",").split(",")]
    return tuple(str(item).strip() for item in value if str(item).strip())


def _as_date(value) -> date | None:
    if not value:
        return None
    text = str(value).strip()
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).date()
    except ValueError:
        return date.fromisoformat(text[:10])


@dataclass(frozen=True)
class CatalogModel:
    """What the pipeline needs from one registry model version."""

    name: str
    version: str
    asset_id: str  # azureml://registries/<registry>/models/<name>/versions/<version>: what the job is sent
    archived: bool = False
    dates: dict[str, date | None] = field(default_factory=dict)
    finetune_computes: tuple[str, ...] = ()
    inference_computes: tuple[str, ...] = ()
    finetune_tasks: tuple[str, ...] = ()
    defaults: dict[str, str] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # fact -> where it was read ("properties (...)")

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"

    def retired(self, today: date) -> list[str]:
        """Why this version may not be fine-tuned and deployed today (empty: it may)."""
        reasons = ["archived in the registry"] if self.archived else []
        for use, label in USES.items():
            retires = self.dates.get(f"{use}_retirement")
            if retires and retires <= today:
                reasons.append(f"retired for {label} on {retires.isoformat()}")
        return reasons

    def deprecations(self, today: date) -> list[str]:
        """Deprecated or in the Legacy stage, not yet retired: the dates to plan a move by."""
        notes = []
        for use, label in USES.items():
            retires = self.dates.get(f"{use}_retirement")
            if retires and retires <= today:
                continue
            until = f", retires {retires.isoformat()}" if retires else ""
            for stage in ("deprecation", "legacy"):
                since = self.dates.get(f"{use}_{stage}")
                if since and since <= today:
                    state = "deprecated" if stage == "deprecation" else "in the Legacy stage"
                    notes.append(f"{self.label} is {state} for {label} since {since.isoformat()}{until}")
        return notes

    def refusal(self, today: date, serverless: bool = False) -> str | None:
        """Why this version cannot be fine-tuned (chat completion; on managed compute unless `serverless`) today;
        None if it can. Serverless, a model that names its fine-tuning tasks nowhere is not refused for it (the
        serverless offer is checked by region, `serverless.offer_refusal`)."""
        if reasons := self.retired(today):
            dates = ", ".join(f"{key.replace('_', ' ')} {value.isoformat()}" for key, value in self.dates.items()
                              if value) or "no lifecycle dates"
            return f"{self.label} is {' and '.join(reasons)} (lifecycle: {dates})"
        tasks_known = not serverless or self.sources.get("fine-tuning tasks", NOWHERE) != NOWHERE
        if tasks_known and CHAT_COMPLETION not in self.finetune_tasks:
            return (f"{self.label} cannot be fine-tuned for {CHAT_COMPLETION} "
                    f"(its fine-tuning tasks: {', '.join(self.finetune_tasks) or 'none'})")
        if not serverless and not self.finetune_computes:
            places = "; ".join(f"{place} {key}" for place, key in FACT_PLACES["finetune computes"])
            return (f"{self.label} lists no managed compute to fine-tune on (read: {places}); if it is offered for "
                    "serverless fine-tuning, set azure.mode=serverless")
        return None


def _dig(mapping: dict, dotted: str):
    for part in dotted.split("."):
        mapping = _as_dict(mapping).get(part) if mapping else None
    return mapping


def _first_listed(fact: str, places: dict[str, dict]) -> tuple[tuple[str, ...], str]:
    """A list fact from the first place that has it, and where that was ("nowhere" if none)."""
    for place, key in FACT_PLACES[fact]:
        if items := _as_list(_dig(places[place], key) if place == "system metadata" else places[place].get(key)):
            return items, f"{place} ({key})"
    return (), NOWHERE


def read_model(raw: dict, registry: str) -> CatalogModel:
    """A registry model version (its REST body, in any of its shapes) into one CatalogModel."""
    body = raw.get("properties") or {}
    places = {"system metadata": _as_dict(body.get("systemMetadata") or body.get("system_metadata") or {}),
              "properties": dict(body.get("properties") or {}), "tags": dict(body.get("tags") or {})}
    deprecation = _as_dict(places["system metadata"].get("deprecation") or {})
    facts = {fact: _first_listed(fact, places) for fact in FACT_PLACES}
    inference, inference_source = facts["inference computes"]
    if not inference and facts["finetune computes"][0]:  # Phi-4's two lists are one set where both are given
        inference, inference_source = facts["finetune computes"][0], "the fine-tuning computes (none named for it)"
    dates = {key: _as_date(deprecation.get(new) or places["tags"].get(old))
             for key, (new, old) in LIFECYCLE_KEYS.items()}
    lifecycle = ("system metadata (deprecation)" if any(deprecation.get(new) for new, _ in LIFECYCLE_KEYS.values())
                 else "tags" if any(dates.values()) else NOWHERE)
    name, version = raw["id"].split("/models/", 1)[1].split("/versions/")
    return CatalogModel(
        name=name, version=version, asset_id=f"azureml://registries/{registry}/models/{name}/versions/{version}",
        archived=bool(body.get("isArchived")) or str(body.get("stage") or "").lower() == ARCHIVED,
        dates=dates, finetune_computes=facts["finetune computes"][0], inference_computes=inference,
        finetune_tasks=facts["fine-tuning tasks"][0],
        defaults={str(k): str(v) for k, v in _as_dict(places["tags"].get("model_specific_defaults") or {}).items()},
        sources={"finetune computes": facts["finetune computes"][1], "inference computes": inference_source,
                 "fine-tuning tasks": facts["fine-tuning tasks"][1], "lifecycle dates": lifecycle},
    )


def registry_entry(registry_ml: MLClient, name: str, version: str) -> dict:
    """The model version's REST body as the registry sent it: azure-ai-ml 1.35's `Model` drops
    `systemMetadata` and `isArchived`, so the body is read with the SDK's own registry request."""
    models = registry_ml.models
    return get_registry_versioned_asset(models._registry_service_client, "models", name, version,
                                        models._resource_group_name, models._registry_name)


def _newest(versions: Iterable[Model]) -> Model | None:
    """The highest numbered active version (an archived one only if nothing else is left)."""
    ranked = sorted(versions, key=lambda m: (str(m.stage or "").lower() != ARCHIVED,
                                             int(m.version) if str(m.version).isdigit() else -1))
    return ranked[-1] if ranked else None


def replacements(registry_ml: MLClient, registry: str, family_of: str, today: date,
                 serverless: bool = False, serverless_offer: Iterable[str] = ()) -> list[str]:
    """Chat-completion models of the same family (name prefix) that can still be fine-tuned (in the mode: serverless,
    only the models in `serverless_offer`, lower-case names), newest version each: what a refused model's error
    suggests instead."""
    family = family_of.split("-")[0].lower()
    names = [c.name for c in registry_ml.models.list() if c.name.lower().startswith(family)
             and (not serverless or c.name.lower() in serverless_offer)]
    found = []
    for name in sorted(names)[:FAMILY_CANDIDATES_CHECKED]:
        newest = _newest(registry_ml.models.list(name=name))
        if newest is not None and read_model(registry_entry(registry_ml, name, str(newest.version)),
                                             registry).refusal(today, serverless) is None:
            found.append(f"{name} (v{newest.version})")
    return found


def utc_today() -> date:
    """The date lifecycle dates are compared with."""
    return datetime.now(UTC).date()


def resolve(registry_ml: MLClient, azure: AzureSettings, today: date | None = None,
            serverless_offer: Iterable[str] = ()) -> CatalogModel:
    """The exact model version a run fine-tunes, refused before any write when it is unknown, archived, retired
    or not a chat-completion model that can be fine-tuned (on managed compute, in managed mode; `serverless_offer`:
    the models serverless mode may suggest instead)."""
    today = today or utc_today()
    registry, name, wanted = azure.registry_name, azure.catalog_model, azure.base_model_version
    serverless = azure.mode == "serverless"

    def refuse(reason: str) -> ConfigError:
        try:
            others = replacements(registry_ml, registry, name, today, serverless, serverless_offer)
            suggestion = (f"models of that family that can be fine-tuned now: {', '.join(others)}" if others
                          else "no model of that family can be fine-tuned now")
        except HttpResponseError as error:  # the refusal matters more than the suggestions
            suggestion = f"(the registry could not be searched for replacements: {error.message})"
        return ConfigError(f"azure.base_model {name}{' v' + wanted if wanted else ''} in registry {registry}: "
                           f"{reason}; {suggestion} (set azure.base_model / azure.base_model_version)")

    try:
        versions = list(registry_ml.models.list(name=name))
    except HttpResponseError as error:  # the registry's list answers an unknown name with 404
        if error.status_code != 404:
            raise
        versions = []
    if not versions:
        raise refuse("no such model")
    numbers = sorted((str(v.version) for v in versions), key=lambda v: int(v) if v.isdigit() else -1)
    if wanted and wanted not in numbers:
        raise ConfigError(f"azure.base_model_version {wanted} of {name} does not exist in registry {registry}; "
                          f"versions: {', '.join(numbers)} (leave it empty for the newest)")
    model = read_model(registry_entry(registry_ml, name, wanted or str(_newest(versions).version)), registry)
    if reason := model.refusal(today, serverless):
        raise refuse(reason)
    return model


def hyperparameters(model: CatalogModel, training: AzureTrainingSettings) -> dict[str, str]:
    """The tutorial's advanced settings for the job: what the user set, else the model's own defaults; a
    learning rate outside the model's published range is refused before any write."""
    chosen: dict[str, str] = {}
    for setting, parameter in HYPERPARAMETERS.items():
        value = getattr(training, setting)
        if value is not None:
            chosen[parameter] = str(value)
        elif parameter in model.defaults:
            chosen[parameter] = model.defaults[parameter]
    low, high = model.defaults.get("learning_rate_min"), model.defaults.get("learning_rate_max")
    if training.learning_rate is not None and low and high and not float(low) <= training.learning_rate <= float(high):
        raise ConfigError(f"azure.training.learning_rate {training.learning_rate:g} is outside {model.label}'s range "
                          f"{float(low):g} to {float(high):g}; leave it unset for the model's default "
                          f"{model.defaults.get('learning_rate', 'value')}")
    return chosen


def choose_size(setting: str, configured: str, allowed: tuple[str, ...], model: CatalogModel, region: str,
                offered: dict, has_quota: Callable[[object], bool]) -> str:
    """A VM size from the model's list: the configured one if allowed, offered in the region and not retired,
    else the first such size with free quota (the first offered one when none has: the quota check says so)."""
    purpose = "fine-tuning" if "finetune" in setting else "inference"
    if not allowed:
        raise ConfigError(f"{model.label} lists no {purpose} computes: choose another azure.base_model")
    usable = [size for size in allowed if size.lower() in offered and size.lower() not in RETIRED]
    if configured:
        listed = {size.lower(): size for size in allowed}
        if configured.lower() not in listed:
            raise ConfigError(f"azure.{setting} {configured} is not among {model.label}'s {purpose} computes: "
                              f"{', '.join(allowed)}")
        if configured.lower() in RETIRED:
            raise ConfigError(f"azure.{setting} {configured} was retired on {RETIRED[configured.lower()]}; "
                              f"choose one of {', '.join(usable) or ', '.join(allowed)}")
        if configured.lower() not in offered:
            raise ConfigError(f"azure.{setting} {configured} is not offered in {region}; offered there from "
                              f"{model.label}'s list: {', '.join(usable) or 'none'}")
        return listed[configured.lower()]
    if not usable:
        raise ConfigError(f"none of {model.label}'s {purpose} computes ({', '.join(allowed)}) is offered in {region} "
                          "and not retired: choose another azure.location")
    return next((size for size in usable if has_quota(offered[size.lower()])), usable[0])
