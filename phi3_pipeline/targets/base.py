"""The stage interface every target implements, and the small references stages pass along.

A reference is what a stage returns and Prefect persists: names, versions, URIs, counts; never a
secret. Keys are read by the target when it uses them (`ask`, `create_connection`), never handed out.
"""

from __future__ import annotations

import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import psutil
import requests
from pydantic import BaseModel

from phi3_pipeline import chat_agent
from phi3_pipeline.chat_data.split_files import SplitFiles
from phi3_pipeline.chat_flow.scoring_contract import (
    CONTRACTS,
    DEPLOYMENT_HEADER,
    ContractError,
    EmptyAnswer,
    ServerError,
    answer_from,
    request_for,
)
from phi3_pipeline.config import naming
from phi3_pipeline.config.errors import InsufficientResourcesError, PipelineError, TransientError
from phi3_pipeline.config.settings import PipelineSettings, ScoringContract

SMOKE_PROBE = "Who founded Microsoft?"
UNPRICED = "price unknown"  # a plan line's detail for a VM size missing from the price table


class IdentityRef(BaseModel):
    workspace_id: str
    detail: str
    created: bool
    warnings: list[str] = []  # e.g. a role that cannot be granted yet

    @property
    def label(self) -> str:
        return self.detail


class ResourceCheck(BaseModel):
    resource: str
    needed: float
    available: float
    unit: str
    advice: str = ""

    @property
    def short_by(self) -> float:
        return max(0.0, self.needed - self.available)


class DatasetRef(BaseModel):
    content_hash: str
    train_uri: str
    test_uri: str
    train_rows: int
    test_rows: int
    created: bool

    @property
    def label(self) -> str:
        return f"data {self.content_hash[:12]}: {self.train_rows} train / {self.test_rows} test"


class JobStatus(BaseModel):
    """One poll of a fine-tune job."""

    state: str  # Queued | Running | Completed | Failed | Lost (process ended without a result) | Missing
    step: int = 0
    total_steps: int = 0
    loss: float | None = None
    phase: str = ""
    error: str | None = None


class JobRef(BaseModel):
    name: str
    created: bool
    metrics: dict = {}
    loss_curve: list[tuple[int, float]] = []

    @property
    def label(self) -> str:
        return f"job {self.name}"


class ModelRef(BaseModel):
    name: str
    version: int
    uri: str
    job_name: str
    created: bool

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"


class DeploymentRef(BaseModel):
    endpoint_name: str
    deployment_name: str
    scoring_uri: str
    traffic: dict[str, int]  # the endpoint's split when the reference was made
    model_version: int
    job_name: str  # the fine-tune job whose model it serves: tells a retraining run what is live
    created: bool
    contract: ScoringContract = "input_data"  # the request shape the deployment answers
    run_id: str = ""  # the pipeline run that made the deployment: a failed run removes only its own
    warnings: list[str] = []  # e.g. an endpoint that could not run as the pipeline's identity
    superseded: list[str] = []  # after going live: the deployments that served until then
    live_since: str = ""  # when it took the traffic (ISO 8601), for a live one: what the reaper ages

    @property
    def live(self) -> bool:
        return self.traffic.get(self.deployment_name) == 100

    @property
    def label(self) -> str:
        return f"{self.deployment_name} at {self.scoring_uri}"


class ConnectionRef(BaseModel):
    name: str
    endpoint: str

    @property
    def label(self) -> str:
        return f"{self.name} -> {self.endpoint}"


class PlanItem(BaseModel):
    """One line of `--plan`: what a run would do with a resource, and what it costs per hour while up."""

    resource: str
    action: str  # reuse, create, get or create, submit, adopt (<job state>), ok, short
    detail: str = ""
    usd_per_hour: float = 0.0


def plan_resource_checks(checks: list[ResourceCheck]) -> list[PlanItem]:
    """The quota/resource checks as plan lines: ok or short, with what is needed and free."""
    return [PlanItem(resource=c.resource, action="ok" if not c.short_by else "short",
                     detail=f"need {c.needed:g}, free {c.available:g} {c.unit}") for c in checks]


class TeardownReport(BaseModel):
    removed: list[str]
    already_gone: list[str]
    kept: list[str] = []  # not this workspace's to remove, e.g. a connection pointing at another workspace
    failed: list[str] = []  # could not be removed now (what, and why): the teardown fails after the others
    skipped: str = ""  # why nothing was looked at (a sweep while a run holds the workspace)

    def note(self, what: str, outcome: str | bool) -> None:
        """File `what` under its outcome: removed (True), gone (False) or kept."""
        {True: self.removed, "removed": self.removed, False: self.already_gone, "gone": self.already_gone,
         "kept": self.kept}[outcome].append(what)


class Target(ABC):
    """One implementation per place the pipeline can run; it never imports Prefect."""

    name: str
    # status calls of a fine-tune job: the first wait, growing by half each poll up to the maximum
    first_poll_interval_s: float = 0.5
    max_poll_interval_s: float = 60.0
    scoring_timeout_s: float = 60.0  # one scoring request, generation included
    # the deployment's server answers OpenAI's `stream: true` (Azure's vLLM and serverless endpoints do)
    streams_replies: bool = True

    def __init__(self, settings: PipelineSettings, run_id: str = "cli"):
        self.settings = settings
        self.run_id = run_id  # tagged on what this run creates

    def job_name(self, data_hash: str) -> str:
        """The fine-tune job's name: a hash of the data and of everything else the job is made of."""
        return naming.job_name(self.settings.model_name, {"data": data_hash, **self.job_inputs()})

    def notices(self) -> list[str]:
        """Warnings a run should show in its plan, summary and log (e.g. a deprecated model)."""
        return []

    @abstractmethod
    def job_inputs(self) -> dict:
        """What a fine-tune job is made of besides its data (base model, settings): a change names a new job."""

    @abstractmethod
    def workspace_identity(self) -> str:
        """What tells this workspace from another, or from itself wiped and made again: part of the key of
        every cached stage, so a cached result never stands for something another workspace holds."""

    @abstractmethod
    def local_root(self, create: bool = True) -> Path:
        """The private local folder this target keeps its files in (made, owner-only, with `create`)."""

    @property
    def _scratch(self) -> str:
        """This run's scratch folder name: the flow run's id, or the process's for the command line."""
        return self.run_id if self.run_id != "cli" else f"cli-{os.getpid()}"

    def scratch_dir(self) -> Path:
        """A private local folder, this run's own, for files a stage prepares before the target stores them."""
        path = self.local_root() / "scratch" / self._scratch
        path.mkdir(parents=True, exist_ok=True)
        return path

    def remove_scratch(self, others_too: bool = False) -> None:
        """Remove this run's scratch folder (making nothing if there is none). With `others_too`, called just
        after taking the run lock, when no other run of the workspace can be active: also every other run's
        (what killed runs left), but a command line's whose process lives (a plan or a check in progress)."""
        root = self.local_root(create=False) / "scratch"
        for folder in list(root.glob("*")) if others_too else [root / self._scratch]:
            if folder.name != self._scratch and _command_line_alive(folder.name):
                continue
            shutil.rmtree(folder, ignore_errors=True)

    def run_lock_file(self, create: bool) -> Path | None:
        """The lock file that keeps runs on this workspace one at a time; None (without `create`) when the
        local folder does not exist, so a teardown of a workspace that never was makes nothing."""
        root = self.local_root(create)
        if not root.is_dir():
            return None
        (root / "locks").mkdir(exist_ok=True)
        return root / "locks" / "run.lock"

    def workspace_lease(self, wait: bool, on_wait: Callable[[str], None],
                        warn: Callable[[str], None]) -> AbstractContextManager:
        """What keeps runs from other machines off the workspace while this run writes, held inside the run lock;
        another holder: with `wait`, say who (`on_wait`) and wait, without, WorkspaceBusyError. A local workspace
        lives on one machine, where the run lock is enough."""
        return nullcontext()

    @property
    def workspace_key(self) -> str:
        """A short name of the workspace the runs write to, the same on every machine that reaches it: the key of
        locks that span processes and machines."""
        return naming.content_hash([str(self.local_root(create=False).resolve())])[:12]

    @abstractmethod
    def ensure_identity(self) -> IdentityRef:
        """Get or create the identity the deployment authenticates with (and its key)."""

    @abstractmethod
    def check_resources(self) -> list[ResourceCheck]:
        """What the run needs against what is free; the quota task decides pass or fail."""

    @abstractmethod
    def store_dataset(self, split: SplitFiles) -> DatasetRef:
        """Keep the train/test files, content-addressed; an unchanged dataset is stored once."""

    @abstractmethod
    def find_or_submit_job(self, job_name: str, dataset: DatasetRef) -> bool:
        """Adopt the job of that name if it exists (running or finished), else submit it; True if submitted."""

    @abstractmethod
    def job_status(self, job_name: str) -> JobStatus:
        """The job's state now."""

    @abstractmethod
    def job_result(self, job_name: str) -> JobRef:
        """Metrics and loss curve of a completed job."""

    @abstractmethod
    def job_failure(self, job_name: str, status: JobStatus) -> Exception:
        """The error to raise for a job that did not complete: its own error and where to look."""

    @abstractmethod
    def register_model(self, job: JobRef, dataset: DatasetRef) -> ModelRef:
        """Register the job's output as a versioned MLflow model; the same job registers once."""

    @abstractmethod
    def deploy(self, model: ModelRef) -> DeploymentRef:
        """Get or create the endpoint and a deployment of the model beside the live one; no traffic moves."""

    @abstractmethod
    def live_deployment(self) -> DeploymentRef | None:
        """The deployment holding 100 % of the endpoint's traffic, if one is up (read only)."""

    def agent_config(self, deployment: DeploymentRef, question: str = "") -> dict:
        """What the chat agent needs to reach the deployment, its key read now (handed to the agent through a pipe
        only)."""
        return chat_agent.config(deployment.scoring_uri, self._endpoint_key(deployment), deployment.contract,
                                 deployment.deployment_name, self.scoring_timeout_s, self.streams_replies, question)

    def ask(self, deployment: DeploymentRef, question: str, max_new_tokens: int, temperature: float = 0.0) -> str:
        """One authenticated scoring request to that deployment (whatever its traffic); its answer. The key is
        read here, from the target, and goes no further than the request."""
        return ask_scoring_uri(deployment, self._endpoint_key(deployment), question, max_new_tokens, temperature,
                               timeout_s=self.scoring_timeout_s)

    @abstractmethod
    def go_live(self, deployment: DeploymentRef, restore: bool = False) -> DeploymentRef:
        """Move 100 % of traffic to the deployment and prove it with a request (the others stay, idle). With
        `restore` (after a failed run, back to the model that served before): the traffic map is verified but no
        request is made (a probe's failure must not keep the candidate up), and `live-since` keeps its time."""

    @abstractmethod
    def remove_deployments(self, keep: DeploymentRef | None, only_own: bool = False) -> TeardownReport:
        """Remove the endpoint's deployments other than `keep`: with `only_own`, only this run's; else also
        those `keep` replaced and those no other run holds (on Azure, where runs on other machines share the
        endpoint, a candidate under another run's lease stays: reported as kept)."""

    @abstractmethod
    def _endpoint_key(self, deployment: DeploymentRef) -> str:
        """The endpoint's key, read at the moment it is used, by this target only; never stored in a result."""

    @abstractmethod
    def create_connection(self, deployment: DeploymentRef) -> ConnectionRef:
        """The Prompt flow custom connection (endpoint, key as secret) the chat flow uses."""

    @abstractmethod
    def plan(self, split: SplitFiles, job_name: str) -> list[PlanItem]:
        """What a run would create or reuse, found with read calls only."""

    @abstractmethod
    def teardown(self, cancel_jobs: bool = True) -> TeardownReport:
        """Remove the deployments and the connection; what is already gone is reported, not an error. With
        `cancel_jobs` (not in a failed run's clean-up, where another run's job may be running) also the model's
        fine-tune jobs still running, where a job bills apart from its run (Azure)."""

    @abstractmethod
    def sweep(self, older_than_hours: float) -> TeardownReport:
        """Remove every endpoint this project made (any run, any model) that is older than the limit."""


def _command_line_alive(scratch_name: str) -> bool:
    """A `cli-<pid>` scratch folder whose command line still runs."""
    pid = scratch_name.removeprefix("cli-")
    return scratch_name.startswith("cli-") and pid.isdigit() and psutil.pid_exists(int(pid))


def raise_if_short(checks: list[ResourceCheck]) -> None:
    """Raise one error naming every short resource, by how much, and what to change."""
    short = [check for check in checks if check.short_by > 0]
    if short:
        raise InsufficientResourcesError("; ".join(
            f"{c.resource} short by {c.short_by:g} {c.unit} (need {c.needed:g}, free {c.available:g}): {c.advice}"
            for c in short
        ))


def ask_scoring_uri(deployment: DeploymentRef, key: str, question: str, max_new_tokens: int, temperature: float,
                    timeout_s: float) -> str:
    """One chat request in the deployment's contract (bearer key), addressed to that deployment whatever the
    traffic split. Temperature 0 is greedy decoding: the evaluation gate gets the same answer every time."""
    name, contract = deployment.deployment_name, deployment.contract
    url, body = request_for(contract, deployment.scoring_uri,
                            [{"role": "user", "content": question}], temperature, max_new_tokens)
    headers = {"Authorization": f"Bearer {key}", DEPLOYMENT_HEADER: name}
    try:
        response = requests.post(url, json=body, headers=headers, timeout=timeout_s)
    except requests.RequestException as error:
        raise TransientError(f"scoring request to {name} failed: {error}") from None
    if response.status_code in (429, 502, 503, 504):
        raise TransientError(f"deployment {name} answered HTTP {response.status_code}")
    other = next(c for c in CONTRACTS if c != contract)
    if response.status_code in (404, 405):  # no such route: the deployment speaks the other contract
        raise PipelineError(f"deployment {name} does not answer the {contract} contract at {url} (HTTP "
                            f"{response.status_code}): set the scoring contract to {other} (the two are "
                            f"{' and '.join(CONTRACTS)})")
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if response.status_code != 200:
        raise PipelineError(f"deployment {name} answered HTTP {response.status_code}: {response.text[:300]}")
    try:
        return answer_from(contract, payload)
    except (ServerError, EmptyAnswer) as error:
        raise PipelineError(f"deployment {name}: {error}") from None
    except ContractError:
        raise PipelineError(f"deployment {name} answered HTTP 200 but not in the {contract} contract: "
                            f"{response.text[:300]}; if it speaks {other}, set the scoring contract to {other}"
                            ) from None
