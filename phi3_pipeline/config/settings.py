"""The pipeline's one typed configuration.

Precedence, lowest first: defaults < TOML config file < environment variables (PHI3_...,
nested with "__") < command-line flags (--training.learning_rate ...). The config file's path and the
command line's own options are the command line's (`cli.options`), not a run's settings.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

BUILTIN_SAMPLE = "builtin:ultrachat-sample"
BUILTIN_BASE_MODEL = "builtin:tiny-phi3"
ENV_PREFIX = "PHI3_"
CONFIG_FILE_ENV = "PHI3_CONFIG"
DEFAULT_CONFIG_FILE = Path("phi3-pipeline.toml")

# Pay-as-you-go Linux list price (USD per VM hour) in eastus2 as published on the Azure VM pricing page, read
# 2026-11-25; prices vary by region and over time and exclude storage and traffic: an estimate only. A size
# missing here is shown as "price unknown" by --plan: add it with azure.vm_prices_usd_per_hour.
VM_PRICES_AS_OF = "2026-11-25"
VM_PRICES_USD_PER_HOUR = {"Standard_NC24ads_A100_v4": 3.67}
# Azure's rule for workspace connection names (REST spec 2025-12-01, workspaceRP.json, ConnectionName), which is
# also its rule for workspace names, a hub's and a project's included (the ARM schema's
# `^[a-zA-Z0-9][a-zA-Z0-9_-]{2,32}$`: 3-33 letters, digits, '_' or '-', starting with a letter or digit).
AZURE_CONNECTION_NAME = r"[a-zA-Z0-9][a-zA-Z0-9_-]{2,32}"
AZURE_WORKSPACE_NAME = AZURE_CONNECTION_NAME
# How the Azure target fine-tunes and serves (docs/azure.md, "Two modes"): on VMs of the user's (a compute
# cluster, a managed online endpoint) or serverless (pay per token to train, an hourly fee to host, no VM quota).
AzureMode = Literal["managed", "serverless"]
# The model each mode fine-tunes unless told otherwise: the current Phi chat model with managed-compute fine-tuning
# in the azureml registry, and Microsoft's serverless successor of the tutorial's Phi-3-mini (docs/azure.md,
# "Choosing the model"; checked 2026-12-02).
DEFAULT_CATALOG_MODELS: dict[str, str] = {"managed": "Phi-4", "serverless": "Phi-4-mini-instruct"}
# What only a VM of the user's has: changed in serverless mode, each is refused (it would silently do nothing).
MANAGED_ONLY_SETTINGS = ("compute_name", "finetune_vm_size", "compute_min_nodes", "compute_max_nodes",
                         "compute_idle_seconds", "deploy_vm_size", "deploy_instance_count", "cold_start_s",
                         "role_propagation_s", "scoring_contract", "max_concurrent_requests_per_instance")

# How callers prove themselves to a managed online endpoint (docs/azure.md, "Keyless endpoints"): its key, or a
# Microsoft Entra token of the signed-in principal (auth_mode aad_token; no key is read anywhere).
EndpointAuth = Literal["key", "token"]
# What the smoke chat (and so the run summary) asks through: Prompt flow, Microsoft Agent Framework, or both.
ChatFrontEnd = Literal["promptflow", "agent_framework", "both"]
# The two request shapes a chat deployment can answer (docs/azure.md, "The scoring contract").
ScoringContract = Literal["input_data", "chat_completions"]
SchedulerType = Literal[
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"
]


class StrictModel(BaseModel):
    """A settings section: an unknown key (a typo) is an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class DatasetSettings(StrictModel):
    """Where the chat data comes from and how it is split (the tutorial's ultrachat 1 % slice)."""

    source: str = Field(
        BUILTIN_SAMPLE,
        description=(
            "Hub dataset name (e.g. HuggingFaceH4/ultrachat_200k), a local .jsonl/.json/.parquet file "
            f"or folder, or {BUILTIN_SAMPLE} (a deterministic sample the project makes, no download)."
        ),
    )
    split: str = Field(
        "train_sft",
        description="Split slice to load, in `datasets` syntax, e.g. train_sft[:1%] for the tutorial's slice.",
    )
    revision: str = Field(
        "", max_length=256,
        description="Hub datasets only: the branch, tag or commit to load, as load_dataset's revision (empty: the "
                    "newest on main). The resolved commit is part of the dataset's identity, so new upstream data "
                    "is noticed.",
    )
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="Share of records held out as test data.")
    seed: int = Field(42, ge=0, lt=2**32, description="Seed of the train/test split and of training (0 to 2^32-1).")
    sample_size: int = Field(
        240, ge=200, le=20000, description=f"Number of conversations {BUILTIN_SAMPLE} generates."
    )

    @field_validator("split")
    @classmethod
    def _split_parses(cls, value: str) -> str:
        """A slice `datasets` cannot read is refused here, naming the setting, not when the data is loaded."""
        if value != cls.model_fields["split"].default:
            from datasets import ReadInstruction  # the library's own parser of its split syntax

            try:
                ReadInstruction.from_spec(value)
            except (ValueError, AssertionError) as error:
                raise ValueError(f"not a split in datasets' syntax ({error}); e.g. train_sft or train_sft[:1%]") \
                    from None
        return value


class TrainingSettings(StrictModel):
    """The fine-tune's base model and the tutorial's 'advanced settings'."""

    base_model: str = Field(
        BUILTIN_BASE_MODEL,
        description=(
            f"{BUILTIN_BASE_MODEL} (a small Phi-3-architecture model built offline), a Hugging Face Hub id (e.g. "
            "microsoft/Phi-4-mini-instruct: downloaded into the Hugging Face cache, or read from it offline), or "
            "the path of a local Hugging Face checkpoint."
        ),
    )
    base_model_revision: str = Field(
        "", pattern=r"^[\w./-]*$",
        description="Branch, tag or commit of a Hub base_model; empty: main. The job is pinned to the commit it "
                    "names when the run starts: a new upstream commit trains anew, a pinned one never does.",
    )
    method: Literal["auto", "lora", "qlora"] = Field(
        "auto", description="lora (adapters on the model's weights as loaded), qlora (the weights in 4 bits, with "
                            "bitsandbytes, on a CUDA GPU) or auto: LoRA unless the GPU's memory is short for it "
                            "and QLoRA fits. The quota stage says which it chose and why.",
    )
    merge_adapter: Literal["auto", "always", "never"] = Field(
        "auto", description="Serve the base model with the LoRA adapter merged in (answers as fast as the base; "
                            "the merged weights are written twice, the job's output and the registry's copy) or "
                            "the base plus the adapter (megabytes; the base is read from where the job read it). "
                            "auto merges when the merged copies fit on the workspace's disk. It applies to jobs "
                            "started from then on: a finished job keeps its form.",
    )
    learning_rate: float = Field(5e-3, gt=0.0, le=1.0, description="Peak learning rate of the LoRA fine-tune.")
    lr_scheduler_type: SchedulerType = Field("cosine", description="Learning-rate schedule.")
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0, description="Share of steps spent warming up.")
    epochs: int = Field(8, ge=1, le=100, description="Passes over the training data.")
    batch_size: int = Field(16, ge=1, le=512, description="Conversations per optimisation step.")
    lora_rank: int = Field(16, ge=1, le=256, description="Rank of the LoRA adapter.")
    lora_alpha: int = Field(32, ge=1, le=1024, description="LoRA scaling numerator (alpha / rank).")
    max_seq_length: int = Field(96, ge=16, le=4096, description="Tokens per conversation after truncation.")
    base_pretrain_steps: int = Field(
        150, ge=0, le=100000, description=f"Steps of language-model training given to {BUILTIN_BASE_MODEL}."
    )


class EvaluationSettings(StrictModel):
    """The gate a retrained model passes before it takes the live model's traffic (blue/green)."""

    questions: int = Field(
        8, ge=1, le=500, description="Held-out test conversations both models answer (first user turn each)."
    )
    margin: float = Field(
        0.05, ge=-1.0, le=1.0,
        description="How much lower the candidate's mean token F1 against the reference answers may be than "
                    "the live model's (negative: it must be better by that much).",
    )
    max_new_tokens: int = Field(48, ge=1, le=1024, description="Answer length asked of each model.")


class LocalSettings(StrictModel):
    """Where the local target keeps its workspace and serves the model."""

    workspace_dir: Path = Field(
        Path(".phi3_workspace"), description="Private folder holding data, jobs, registry, secrets and servers."
    )

    @field_validator("workspace_dir")
    @classmethod
    def _workspace_dir_is_a_folder(cls, value: Path) -> Path:
        if value.exists() and not value.is_dir():
            raise ValueError(f"{value} exists and is not a folder")
        return value
    port: int = Field(0, ge=0, le=65535, description="Scoring server port on 127.0.0.1; 0 picks a free port.")
    max_new_tokens_limit: int = Field(256, ge=1, le=4096, description="Cap on max_new_tokens a request may ask.")
    max_request_bytes: int | None = Field(
        None, ge=1024, le=16 * 1024 * 1024,
        description="Largest request body the scoring server reads (413 above); unset: what the model's context "
                    "length can take, 16 bytes per token of context, at least 64 KiB.",
    )
    generation_timeout_s: float = Field(
        30.0, gt=0, le=600, description="Seconds one request may generate; the answer so far is returned then."
    )
    max_concurrent_generations: int = Field(
        2, ge=1, le=64, description="Generate calls at once, each on its share of the CPU cores."
    )
    max_batch_size: int = Field(
        8, ge=1, le=64, description="Requests with the same temperature and length limit answered by one generate "
                                    "call (1: each by its own). Up to max_concurrent_generations x max_batch_size "
                                    "requests are answered at once; more wait in the queue.",
    )
    max_queued_requests: int = Field(
        32, ge=0, le=1024, description="Requests waiting beyond those answered at once; more are refused at once "
                                       "with 503 and Retry-After (as Azure's endpoints answer 429 beyond their "
                                       "queue).",
    )
    queue_wait_s: float = Field(
        10.0, gt=0, le=600, description="Seconds a request waits in the queue before it is refused with 503 and "
                                        "Retry-After.",
    )
    scoring_contract: ScoringContract = Field(
        "input_data", description="Request shape the chat flow and the pipeline use: input_data (the tutorial's "
                                  "/score body) or chat_completions (OpenAI-style); the server answers both.",
    )


class AzureTrainingSettings(StrictModel):
    """The fine-tune's settings on Azure (the tutorial's "advanced settings"). Unset, each takes the catalog
    model's own default (`model_specific_defaults` in its registry entry); a learning rate outside the
    model's published range is refused before anything is created."""

    learning_rate: float | None = Field(None, gt=0.0, le=1.0, description="Peak learning rate (unset: the model's).")
    lr_scheduler_type: SchedulerType | None = Field(None, description="Learning-rate schedule (unset: the model's).")
    epochs: int | None = Field(None, ge=1, le=100, description="Passes over the training data (unset: the model's).")
    batch_size: int | None = Field(
        None, ge=1, le=512, description="Conversations per device and step (unset: the model's)."
    )


class AzureSettings(StrictModel):
    """The Azure resources of the tutorial; the model and VM sizes are read from the catalog at run time."""

    subscription_id: str | None = Field(None, description="Azure subscription id.")
    resource_group: str | None = Field(None, description="Resource group holding the workspace.")
    workspace_name: str | None = Field(None, description="Azure Machine Learning workspace name.")
    location: str | None = Field(None, description="Azure region, e.g. eastus2.")
    identity_name: str = Field("phi3-pipeline-identity", description="User-assigned managed identity to use.")
    registry_name: str = Field("azureml", min_length=1, description="Model-catalog registry holding base_model.")
    mode: AzureMode = Field(
        "managed", description="managed: fine-tune on a compute cluster and serve from a managed online endpoint "
                               "(VM quota, billed per VM hour); serverless: Azure's own capacity (no VM quota, "
                               "training billed per token, hosting per hour).",
    )
    base_model: str = Field(
        "", description="Catalog model to fine-tune (chat completion); its lifecycle is checked first. Empty: "
                        + " or ".join(f"{model} ({mode})" for mode, model in DEFAULT_CATALOG_MODELS.items()) + ".",
    )
    base_model_version: str = Field(
        "", pattern=r"^[0-9]*$", description="Version of base_model; empty: the newest. The job is pinned to it."
    )
    compute_name: str = Field("phi-ft-cluster", description="Fine-tuning compute cluster name.")
    finetune_vm_size: str = Field(
        "", description="VM size of the fine-tuning cluster; empty: the first of the model's fine-tuning computes "
                        "offered in the region with free quota.",
    )
    compute_min_nodes: int = Field(0, ge=0, description="Cluster minimum nodes.")
    compute_max_nodes: int = Field(1, ge=1, description="Cluster maximum nodes.")
    compute_idle_seconds: int = Field(120, ge=0, description="Idle seconds before the cluster scales down.")
    deploy_vm_size: str = Field(
        "", description="VM size of the online deployment; empty: the first of the model's inference computes "
                        "offered in the region with free quota.",
    )
    deploy_instance_count: int = Field(1, ge=1, description="Instances of the online deployment.")
    deployment_lease_minutes: int = Field(
        240, ge=30, le=7 * 24 * 60,
        description="How long a deployment without traffic stays another run's: a run going live (from this or "
                    "another machine) removes such a candidate only once its lease has run out. It covers one "
                    "run's deploy, gate and go-live; a killed run's candidate bills until then (or teardown).",
    )
    role_propagation_s: int = Field(
        300, ge=0, le=1800,
        description="Seconds the deploy stage waits after granting AcrPull late (a workspace whose container "
                    "registry Azure made after the identity stage) before the deployment pulls its image: a role "
                    "assignment can take minutes to take effect (Azure RBAC troubleshooting: up to 30).",
    )
    cold_start_s: int = Field(
        600, ge=0, description="Seconds the liveness probe waits before its first check: a large model loads "
                               "slowly (the readiness probe starts at once and fails until the model answers).",
    )
    scoring_contract: ScoringContract = Field(
        "input_data",
        description="Request shape used with the deployed model: input_data (the tutorial's /score body, answered "
                    "by every version of the catalog's inference image) or chat_completions (OpenAI-style, "
                    "/chat/completions).",
    )
    endpoint_auth: EndpointAuth = Field(
        "key", description="How the gate, the smoke chat, the agent and Prompt flow call the managed online endpoint: "
                           "key (the endpoint's key, copied into the connections) or token (a Microsoft Entra token "
                           "of the signed-in principal, granted AzureML Data Scientist on the workspace; no key is "
                           "read or stored anywhere). Serverless endpoints take keys only.",
    )
    training: AzureTrainingSettings = Field(default_factory=AzureTrainingSettings)
    request_timeout_ms: int = Field(90000, ge=1000, le=180000, description="Scoring request timeout.")
    # Azure's default is 1, for a model that answers one request at a time; the catalog's chat models are served by
    # vLLM (Phi-4's inferenceSupportedEnvs: [vllm]), which batches up to its max_num_seqs (256 by default) in one
    # worker. Microsoft's vLLM example for a catalog LLM uses 128 (azureml-examples, llama-safe-online-deployment).
    max_concurrent_requests_per_instance: int = Field(
        128, ge=1, le=1024,
        description="Requests one deployment instance takes at once (Azure queues twice that many per instance and "
                    "answers 429 beyond): the catalog's vLLM server batches them.",
    )
    hub_name: str = Field("phi3-pipeline-hub", pattern=f"^{AZURE_WORKSPACE_NAME}$",
                          description="Microsoft Foundry hub to get or create (3-33 letters, digits, '_' or '-').")
    project_name: str = Field("phi3-pipeline-project", pattern=f"^{AZURE_WORKSPACE_NAME}$",
                              description="Microsoft Foundry project in the hub (3-33 letters, digits, '_' or '-').")
    teardown_everything: bool = Field(
        False, description="Teardown also deletes the Foundry project and hub (every teardown deletes the endpoint, "
                           "the idle cluster and the connections): each only if this pipeline made it (its managed-by "
                           "tag); one it adopted by name is kept.",
    )
    purge_foundry: bool = Field(
        False, description="With teardown_everything: purge the Foundry project and hub this pipeline made instead "
                           "of soft-deleting them (soft-deleted, they stay recoverable, and their names taken, for 14 "
                           "days).",
    )
    vm_prices_usd_per_hour: dict[str, float] = Field(
        VM_PRICES_USD_PER_HOUR,
        description=f"VM list prices `--plan` estimates with (USD/hour, eastus2, as of {VM_PRICES_AS_OF}).",
    )

    @model_validator(mode="after")
    def _mode_fits(self) -> AzureSettings:
        """A VM setting changed in serverless mode is refused, not silently ignored."""
        # changed from its default (not merely present: a run's settings come back whole from Prefect and JSON)
        given = [name for name in MANAGED_ONLY_SETTINGS if getattr(self, name) != type(self).model_fields[name].default]
        if self.mode == "serverless" and self.endpoint_auth == "token":
            raise ValueError("azure.endpoint_auth=token: serverless endpoints take their keys only (no Microsoft "
                             "Entra tokens); set azure.endpoint_auth=key or azure.mode=managed")
        if self.mode == "serverless" and given:
            them = "it" if len(given) == 1 else "them"
            raise ValueError(f"{', '.join(f'azure.{name}' for name in given)}: only managed mode has {them} "
                             f"(serverless runs on no VM of yours and answers chat_completions); remove {them} or "
                             "set azure.mode=managed")
        return self

    @property
    def catalog_model(self) -> str:
        """The catalog model to fine-tune: base_model, or the mode's own when it is empty (kept empty in the
        settings, so settings made in one mode and run in the other, as Prefect's forms do, take the right one)."""
        return self.base_model or DEFAULT_CATALOG_MODELS[self.mode]

    @property
    def contract(self) -> ScoringContract:
        """The request shape the deployed model answers: a serverless endpoint speaks chat completions only."""
        return "chat_completions" if self.mode == "serverless" else self.scoring_contract


# A flow's `settings` when a run gives none. The deployment's form then opens on the settings, each with its
# default shown, and a run takes what it leaves out from phi3-pipeline.toml and PHI3_* where it runs: nothing
# is frozen when the deployment is made (`None` would open the form on "None"). Never mutated.
SETTINGS_WHERE_IT_RUNS: dict = {}


class PipelineSettings(BaseSettings):
    """Everything a run needs; every field has a default that works offline on the local target."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
        nested_model_default_partial_update=True,
    )

    target: Literal["local", "azure"] = Field("local", description="Where every stage runs.")
    question: str = Field("Who founded Microsoft?", min_length=1, description="Question of the smoke chat.")
    teardown: bool = Field(False, description="Tear the deployment down after the smoke chat.")
    skip_unchanged: bool = Field(
        False, description=(
            "Finish at once, with no training and no cloud write, when the live model was trained on the same "
            "data and settings (the scheduled retraining deployment sets this)."),
    )
    plan: bool = Field(
        False, description="Only list what a run would create or reuse and its hourly cost (read calls only)."
    )
    wait: bool = Field(
        True, description="When another run holds the workspace, wait for it (--no-wait: fail at once naming it)."
    )
    model_name: str = Field(
        "phi3-custom", pattern=r"^[a-z0-9][a-z0-9-]{1,40}$", description="Name of the registered model."
    )
    connection_name: str = Field(
        "phi3_custom_connection",
        pattern=r"^[A-Za-z0-9_]{1,64}$",
        description="Name of the Prompt flow custom connection the chat flow uses.",
    )
    smoke_chat_timeout_s: float = Field(180.0, gt=0, le=3600, description="Seconds the smoke chat may take.")
    chat_front_end: ChatFrontEnd = Field(
        "promptflow", description="What the smoke chat asks through: promptflow (the tutorial's chat flow; Prompt "
                                  "flow turns read-only on 2027-04-20), agent_framework (its successor, in agent_env) "
                                  "or both.",
    )
    agent_env: Path = Field(
        Path(".venv-agent"), description="The Agent Framework front end's own environment (the README's agent "
                                         "install command makes it): the chat command and that front end run there.",
    )
    job_timeout_s: float = Field(
        21600.0, gt=0, le=7 * 86400,
        description="Seconds the run waits for the fine-tune job (it keeps running after; at most a week)."
    )
    dataset: DatasetSettings = Field(default_factory=DatasetSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    local: LocalSettings = Field(default_factory=LocalSettings)
    azure: AzureSettings = Field(default_factory=AzureSettings)

    @field_validator("dataset", mode="after")
    @classmethod
    def _source_exists(cls, value: DatasetSettings) -> DatasetSettings:
        if _looks_like_path(value.source) and not Path(value.source).expanduser().exists():
            raise ValueError(f"dataset.source path does not exist: {value.source}")
        return value

    @field_validator("training", mode="after")
    @classmethod
    def _base_model_exists(cls, value: TrainingSettings) -> TrainingSettings:
        if is_hub_id(value.base_model):
            return value  # resolved against the Hub or its cache when the run starts (targets/local/hub.py)
        if value.base_model_revision:
            raise ValueError("training.base_model_revision is for a Hugging Face Hub base_model (org/name), not "
                             f"{value.base_model}")
        if value.base_model != BUILTIN_BASE_MODEL:
            _check_checkpoint(Path(value.base_model).expanduser(), value.base_model)
        return value

    @model_validator(mode="after")
    def _azure_fields_present(self) -> PipelineSettings:
        if self.target == "azure":
            required = ("subscription_id", "resource_group", "workspace_name", "location")
            missing = [name for name in required if not getattr(self.azure, name)]
            if missing:
                raise ValueError("target=azure needs " + ", ".join(f"azure.{name}" for name in missing))
        return self

    @model_validator(mode="after")
    def _token_auth_is_azures(self) -> PipelineSettings:
        if self.target == "local" and self.azure.endpoint_auth == "token":
            raise ValueError("azure.endpoint_auth=token: the local target's server takes its own key only (kept in "
                             "local.workspace_dir, readable by you alone); set target=azure or remove it")
        return self

    @model_validator(mode="after")
    def _azure_connection_name_fits(self) -> PipelineSettings:
        if self.target == "azure" and not re.fullmatch(AZURE_CONNECTION_NAME, self.connection_name):
            raise ValueError(f"connection_name {self.connection_name!r} does not fit Azure's limit for connection "
                             "names: 3-33 letters, digits, '_' or '-', starting with a letter or digit")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_file = _config_file_path(init_settings)
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)


def setting_names(model: type[BaseModel], path: tuple[str, ...] = ()) -> list[str]:
    """The names a section (`path` into the settings) takes: a typo's closest match is suggested from these."""
    for part in path:
        field = model.model_fields.get(part)
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


# Settings an earlier version had, and what took their place.
RENAMED = {
    "azure.finetune_model": "azure.base_model (a catalog name, e.g. Phi-4) and azure.base_model_version",
    "azure.probe_initial_delay_s": "azure.cold_start_s",
}


def unknown_setting(model: type[BaseModel], path: tuple[str, ...]) -> str:
    """'<dotted path>: no such setting (did you mean <closest>?)' for a key the settings do not have."""
    if ".".join(path) in RENAMED:
        return f"{'.'.join(path)}: no such setting any more; use {RENAMED['.'.join(path)]}"
    *section, name = path
    close = difflib.get_close_matches(name, setting_names(model, tuple(section)), n=1)
    hint = f" (did you mean {'.'.join([*section, close[0]])}?)" if close else ""
    return f"{'.'.join(path)}: no such setting{hint}"


def unknown_environment_settings(model: type[BaseModel], environ: dict[str, str]) -> list[str]:
    """PHI3_* variables that name no setting (pydantic-settings ignores them silently), as error messages."""
    problems = []
    for variable in sorted(environ):
        if not variable.upper().startswith(ENV_PREFIX) or variable.upper() == CONFIG_FILE_ENV:
            continue
        path = tuple(variable[len(ENV_PREFIX):].lower().split("__"))
        for depth in range(1, len(path) + 1):
            names = setting_names(model, path[:depth - 1])
            if not names:  # a leaf such as a dict setting takes any key below it
                break
            if path[depth - 1] not in names:
                problems.append(f"environment variable {variable}: {unknown_setting(model, path[:depth])}")
                break
    return problems


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
# org/name as the Hugging Face Hub spells repository ids
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")


def is_hub_id(base_model: str) -> bool:
    """A Hugging Face Hub id, not a local folder (a relative path that exists is the folder)."""
    return bool(HUB_ID.match(base_model)) and not Path(base_model).exists()


def _check_checkpoint(path: Path, given: str) -> None:
    """A Hugging Face checkpoint folder: a config.json that parses, and a tokenizer."""
    config = path / "config.json"
    if not config.is_file():
        raise ValueError(f"training.base_model must be {BUILTIN_BASE_MODEL}, a Hugging Face Hub id (org/name) or "
                         f"a local Hugging Face checkpoint folder with a config.json; not found: {given}")
    try:
        parsed = json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"training.base_model: {config} is not valid JSON ({error})") from None
    if not isinstance(parsed, dict) or "model_type" not in parsed:
        raise ValueError(f"training.base_model: {config} has no model_type; is it a Hugging Face model config?")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(f"training.base_model: {path} has no tokenizer ({', '.join(TOKENIZER_FILES)})")


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or source.endswith((".jsonl", ".json", ".parquet"))


def _config_file_path(init_settings: PydanticBaseSettingsSource) -> Path | None:
    explicit = init_settings().get("config") or os.environ.get(CONFIG_FILE_ENV)  # the flag: cli.options
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ValueError(f"config file not found: {path}")
    elif DEFAULT_CONFIG_FILE.is_file():
        path = DEFAULT_CONFIG_FILE
    else:
        return None
    try:
        tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"config file {path} is not valid TOML: {error}") from None
    return path
