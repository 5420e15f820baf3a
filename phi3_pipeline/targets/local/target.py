"""The local target: every stage for real on this machine, in a private workspace folder."""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path

import psutil

from phi3_pipeline.chat_data.split_files import TEST_FILE, TRAIN_FILE, SplitFiles
from phi3_pipeline.chat_flow import promptflow_chat
from phi3_pipeline.config.errors import JobFailedError
from phi3_pipeline.config.naming import base_model_identity, content_hash
from phi3_pipeline.config.settings import BUILTIN_BASE_MODEL, PipelineSettings, is_hub_id
from phi3_pipeline.targets.base import (
    SMOKE_PROBE,
    ConnectionRef,
    DatasetRef,
    DeploymentRef,
    IdentityRef,
    JobRef,
    JobStatus,
    ModelRef,
    PlanItem,
    ResourceCheck,
    Target,
    TeardownReport,
    plan_resource_checks,
)
from phi3_pipeline.targets.local import hub, machine, processes, registry
from phi3_pipeline.targets.local.machine import GiB
from phi3_pipeline.targets.local.online import LocalEndpoint
from phi3_pipeline.targets.local.training_job import ADAPTER_DIR, MERGED_DIR, TEMPLATE_ENCODING
from phi3_pipeline.targets.workspace import Workspace, read_json, write_json_atomic

TRAINING_MODULE = "phi3_pipeline.targets.local.training_job"
# What a run needs beside the weights (the built-in model's whole need, its weights counting as nothing), measured
# 2026-11-25 on CPU: training job peak RSS 0.47 GiB, scoring server 0.40 GiB; the rest is headroom for the pipeline
# process itself (Prefect, Prompt flow). Per GiB of weights W: memory 2.5 W, disk 2 W where merged
# (machine.gpu_need_gib: GPU).
BASE_MEMORY_GIB, BASE_DISK_GIB = 1.5, 0.2
HUB_DOWNLOAD_SLACK_GIB = 0.1  # a Hub model's config and tokenizer beside its weights


def existing(path: Path) -> Path:
    """`path`, or the nearest of its parents that exists: what holds it on disk once it is made."""
    return next(p for p in (path, *path.parents) if p.exists())


def disk_free_gib(path: Path) -> float:
    """Free space on the disk that holds `path`, or will once it is made."""
    return shutil.disk_usage(existing(path)).free / GiB


def _link_or_copy(source: Path, destination: Path) -> None:
    """A hard link (a full-size split is a gigabyte: no second copy), a copy across file systems."""
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


class LocalTarget(Target):
    name = "local"
    streams_replies = False  # the scoring server answers whole replies (serving/score.py)
    max_poll_interval_s = 2.0

    def __init__(self, settings: PipelineSettings, run_id: str = "cli"):
        super().__init__(settings, run_id)
        self.ws = Workspace(settings.local.workspace_dir)

    @cached_property
    def hub_base_model(self) -> hub.HubModel | None:
        """A Hub base model at the commit this run trains: asked once per run (the target is the run's)."""
        training = self.settings.training
        return hub.resolve(training.base_model, training.base_model_revision) \
            if is_hub_id(training.base_model) else None

    def base_model_identity(self) -> str:
        """A Hub model's id and commit, or the built-in name, or a hash of a local checkpoint's files."""
        if self.hub_base_model is not None:
            return self.hub_base_model.identity
        return base_model_identity(self.settings.training.base_model)

    def weights_gib(self) -> float:
        """The base model's weights on disk (a Hub model's from the Hub's file list, before any download); the
        built-in model's count as nothing."""
        base = self.settings.training.base_model
        if base == BUILTIN_BASE_MODEL:
            return 0.0
        hub_model = self.hub_base_model
        return (hub_model.weight_bytes if hub_model else machine.checkpoint_bytes(Path(base).expanduser())) / GiB

    @cached_property
    def gpu(self) -> machine.Gpu | None:
        """The GPU training would use, read once per run: the method and the quota check agree."""
        return machine.visible_gpu()

    @cached_property
    def fine_tune_method(self) -> tuple[str, str]:
        """LoRA or QLoRA, and why (`training.method`, auto resolved once per run against the GPU's memory)."""
        return machine.fine_tune_method(self.settings.training.method, self.weights_gib(), self.gpu)

    @cached_property
    def merge_adapter(self) -> tuple[bool, str]:
        """Whether the job merges the adapter into the base for serving, and why (`training.merge_adapter`, auto
        resolved once per run against the workspace's free disk)."""
        weights_gib = self.weights_gib()
        return machine.merge_choice(self.settings.training.merge_adapter, weights_gib, disk_free_gib(self.ws.root),
                                    BASE_DISK_GIB + self._download_beside_workspace_gib())

    def _download_beside_workspace_gib(self) -> float:
        """What a Hub model still to be downloaded takes on the workspace's own disk: all of it, where the Hugging
        Face cache is on that disk."""
        hub_model = self.hub_base_model
        if hub_model is None or hub_model.snapshot is not None:
            return 0.0
        devices = {os.stat(existing(path)).st_dev for path in (self.ws.root, hub.cache_dir())}
        return hub_model.weight_bytes / GiB + HUB_DOWNLOAD_SLACK_GIB if len(devices) == 1 else 0.0

    def job_inputs(self) -> dict:
        """The base model's weights, every training setting, the seed, QLoRA where it is the method (LoRA, the
        default, adds nothing, so that earlier jobs keep their names) and, on a model's own chat template, how it
        is tokenized. How the result is served is not what is trained: a re-run adopts the job whichever way it
        was saved."""
        method, builtin = self.fine_tune_method[0], self.settings.training.base_model == BUILTIN_BASE_MODEL
        return {"base_model": self.base_model_identity(),
                "training": self.settings.training.model_dump(exclude={"base_model", "base_model_revision", "method",
                                                                       "merge_adapter"}),
                "seed": self.settings.dataset.seed, **({"method": method} if method != machine.LORA else {}),
                **({} if builtin else {"template_encoding": TEMPLATE_ENCODING})}

    def notices(self) -> list[str]:
        """A local.port the live server does not hold: what a run will do with it. A real base model with the
        length limit sized for the built-in one."""
        notices, training = [], self.settings.training
        default_length = type(training).model_fields["max_seq_length"].default
        if training.base_model != BUILTIN_BASE_MODEL and training.max_seq_length == default_length:
            notices.append(f"training.max_seq_length is {training.max_seq_length} tokens, sized for the built-in "
                           f"model: {training.base_model} learns only what its conversations say within it; set it "
                           "to your conversations' length (e.g. 2048)")
        port, live = self.settings.local.port, self.live_deployment()
        live_port = int(live.scoring_uri.rsplit(":", 1)[1].split("/")[0]) if live else None
        if port and live_port not in (None, port):
            notices.append(f"local.port is {port} but {live.deployment_name} serves on port {live_port}: a newly "
                           f"trained model starts on port {port}; if this run's model is the one serving, it keeps "
                           f"port {live_port} (tear it down first to move it)")
        return notices

    # ---- the workspace folder ------------------------------------------------------------------
    def workspace_identity(self) -> str:
        return self.ws.workspace_id

    def local_root(self, create: bool = True) -> Path:
        if create:
            self.ws.ensure()
        return self.ws.root

    # ---- identity and RBAC -------------------------------------------------------------------
    def ensure_identity(self) -> IdentityRef:
        self.ws.ensure()
        created = self.ws.ensure_key()
        return IdentityRef(workspace_id=self.ws.workspace_id, detail=f"endpoint key at {self.ws.key_file} (owner-only)",
                           created=created)

    # ---- quota ---------------------------------------------------------------------------------
    def check_resources(self) -> list[ResourceCheck]:
        """Memory, disk and GPU memory for the base model, the method and the served form (weights W GiB: fp32 in
        training with the LoRA optimiser's state, and once more in the server; on disk the merged model's copies,
        where it is merged: an adapter takes megabytes; and a Hub model's download, on its cache's disk)."""
        weights_gib, hub_model = self.weights_gib(), self.hub_base_model
        method, why = self.fine_tune_method
        merged, served = self.merge_adapter
        memory_gib = 2.5 * weights_gib + BASE_MEMORY_GIB
        disk_gib = (machine.MERGED_COPIES * weights_gib if merged else 0) + BASE_DISK_GIB + \
            self._download_beside_workspace_gib()
        self.ws.ensure()
        memory = psutil.virtual_memory().available / GiB
        checks = [
            ResourceCheck(resource="memory", needed=round(memory_gib, 2), available=round(memory, 2), unit="GiB",
                          advice="close other programs or choose a smaller training.base_model"),
            ResourceCheck(resource=f"disk at {self.ws.root}, served {served}", needed=round(disk_gib, 2),
                          available=round(disk_free_gib(self.ws.root), 2), unit="GiB",
                          advice="free disk space, set local.workspace_dir to a larger disk" +
                                 (" or set training.merge_adapter=never" if merged else "")),
            ResourceCheck(resource="CPU cores", needed=1, available=os.cpu_count() or 1, unit="cores",
                          advice="run on a machine with at least one core"),
        ]
        if hub_model is not None and hub_model.snapshot is None:  # the download lands in the Hugging Face cache
            cache = hub.cache_dir()
            checks.append(ResourceCheck(resource=f"disk at {cache} (the Hugging Face cache)",
                                        needed=round(hub_model.weight_bytes / GiB + HUB_DOWNLOAD_SLACK_GIB, 2),
                                        available=round(disk_free_gib(cache), 2), unit="GiB",
                                        advice="free disk space or set HF_HUB_CACHE to a larger disk"))
        if self.gpu is not None:  # what a job of this workspace holds is the run's to adopt
            held = machine.gpu_gib_held_by(self._running_job_pids())
            checks.append(ResourceCheck(resource=f"GPU memory ({self.gpu.name}) for {why}",
                                        needed=round(machine.gpu_need_gib(method, weights_gib), 2),
                                        available=round(self.gpu.free_gib + held, 2), unit="GiB",
                                        advice="free GPU memory" + (", set training.method=qlora" if
                                                                    method == machine.LORA else "") +
                                               ", or set CUDA_VISIBLE_DEVICES= to train on the CPU"))
        port = self.settings.local.port
        if port and not self.endpoint.serves_on(port):
            checks.append(ResourceCheck(resource=f"port {port} on 127.0.0.1", needed=1,
                                        available=1 if processes.port_is_free(port) else 0, unit="free port",
                                        advice="stop what listens there or set local.port=0 to pick a free port"))
        return checks

    # ---- dataset -------------------------------------------------------------------------------
    def store_dataset(self, split: SplitFiles) -> DatasetRef:
        folder = self.ws.root / "datasets" / split.content_hash[:16]
        created = not (folder / TEST_FILE).exists()
        if created:
            staging = self.ws.dir("datasets", f".{split.content_hash[:16]}.{os.getpid()}")
            for source, name in ((split.train_file, TRAIN_FILE), (split.test_file, TEST_FILE)):
                _link_or_copy(source, staging / name)
            try:
                os.replace(staging, folder)
            except OSError:  # another run stored the same content meanwhile
                shutil.rmtree(staging, ignore_errors=True)
        return DatasetRef(content_hash=split.content_hash, train_uri=str(folder / TRAIN_FILE),
                          test_uri=str(folder / TEST_FILE), train_rows=split.train_rows,
                          test_rows=split.test_rows, created=created)

    # ---- fine-tune -----------------------------------------------------------------------------
    def _job_dir(self, job_name: str) -> Path:
        return self.ws.root / "jobs" / job_name

    def _job_spec(self, dataset: DatasetRef) -> dict:
        training = self.settings.training.model_dump()
        base_key = content_hash({"data": dataset.content_hash, "steps": training["base_pretrain_steps"],
                                 "seed": self.settings.dataset.seed, "len": training["max_seq_length"],
                                 "batch": training["batch_size"]})
        if self.hub_base_model is not None:  # the job trains from the cache's folder, downloaded now if missing
            training["base_model"] = str(hub.download(self.hub_base_model))
        elif training["base_model"] != BUILTIN_BASE_MODEL:  # the job, and the adapter's base, run from elsewhere
            training["base_model"] = str(Path(training["base_model"]).expanduser().resolve())
        training["method"] = self.fine_tune_method[0]
        training["merge_adapter"] = self.merge_adapter[0]
        return {**training, "train_file": dataset.train_uri, "test_file": dataset.test_uri,
                "seed": self.settings.dataset.seed,
                "base_cache_dir": str(self.ws.root / "base_models" / base_key[:16])}

    def find_or_submit_job(self, job_name: str, dataset: DatasetRef) -> bool:
        with self.ws.lock(f"job-{job_name}"):
            if self.job_status(job_name).state not in ("Missing", "Lost"):
                return False  # queued, running or finished: adopt it
            job_dir = self._job_dir(job_name)
            if job_dir.exists():  # a job whose process died mid-way: start it again from scratch
                shutil.rmtree(job_dir)
            job_dir.mkdir(parents=True)
            write_json_atomic(job_dir / "spec.json", self._job_spec(dataset))
            pid = processes.spawn(TRAINING_MODULE, job_dir, "job.log")
            if not (job_dir / "status.json").exists():  # the job reports itself once it has started
                write_json_atomic(job_dir / "status.json", {"state": "Queued", "pid": pid, "step": 0})
            return True

    def _running_job_pids(self) -> set[int]:
        pids = {(read_json(status) or {}).get("pid") for status in self.ws.root.glob("jobs/*/status.json")}
        return {pid for pid in pids if processes.process_alive(pid, TRAINING_MODULE)}

    def job_status(self, job_name: str) -> JobStatus:
        status = read_json(self._job_dir(job_name) / "status.json")
        if status is None:
            return JobStatus(state="Missing")
        if status["state"] in ("Queued", "Running") and not processes.process_alive(status.get("pid"), TRAINING_MODULE):
            log = self._job_dir(job_name) / "job.log"
            return JobStatus(state="Lost", error=f"the job process ended without a result; log: {log}")
        fields = {key: status[key] for key in ("step", "total_steps", "loss", "phase", "error") if key in status}
        return JobStatus(state=status["state"], **fields)

    def job_result(self, job_name: str) -> JobRef:
        job_dir = self._job_dir(job_name)
        metrics = read_json(job_dir / "job_metrics.json") or {}
        curve = []
        for line in (job_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
            record = json.loads(line) if line.strip() else None
            if record and record["phase"] == "fine-tune":
                curve.append((record["step"], record["loss"]))
        return JobRef(name=job_name, created=False, metrics=metrics, loss_curve=curve)

    def job_failure(self, job_name: str, status: JobStatus) -> JobFailedError:
        job_dir = self._job_dir(job_name)
        return JobFailedError(
            f"fine-tune job {job_name} failed: {status.error}. Log: {job_dir / 'job.log'}. "
            f"Fix the cause, then delete {job_dir} to let the next run start it again."
        )

    # ---- register ------------------------------------------------------------------------------
    def register_model(self, job: JobRef, dataset: DatasetRef) -> ModelRef:
        output = self._job_dir(job.name) / "output"
        served = output / MERGED_DIR if (output / MERGED_DIR).is_dir() else output / ADAPTER_DIR
        version, created = registry.register(
            self.ws, self.settings.model_name, served,
            lineage={"job_name": job.name, "data_hash": dataset.content_hash, "train_uri": dataset.train_uri,
                     "test_uri": dataset.test_uri,
                     "base_model": (self.hub_base_model.identity if self.hub_base_model
                                    else self.settings.training.base_model),
                     "metrics": job.metrics})
        return ModelRef(name=self.settings.model_name, version=version, job_name=job.name, created=created,
                        uri=str(registry.model_dir(self.ws, self.settings.model_name, version)))

    # ---- deploy (targets/local/online.py: the servers and the endpoint's traffic) ---------------
    @property
    def endpoint_name(self) -> str:
        return f"{self.settings.model_name}-endpoint"

    @property
    def endpoint(self) -> LocalEndpoint:
        return LocalEndpoint(self.ws, self.endpoint_name)

    def _deployment_ref(self, deployment_dir: Path, state: dict, created: bool) -> DeploymentRef:
        spec = read_json(deployment_dir / "spec.json") or {}
        traffic, since = self.endpoint.traffic(), self.endpoint.live_since()
        live = traffic.get(deployment_dir.name) == 100 and since is not None
        return DeploymentRef(endpoint_name=self.endpoint_name, deployment_name=deployment_dir.name,
                             scoring_uri=f"http://{state['host']}:{state['port']}/score",
                             traffic=traffic, model_version=spec.get("model_version", 0),
                             job_name=spec.get("job_name", ""), created=created,
                             contract=self.settings.local.scoring_contract, run_id=spec.get("run_id", ""),
                             live_since=datetime.fromtimestamp(since, UTC).isoformat() if live else "")

    def serving_limits(self) -> dict:
        """What the scoring server is held to (its spec's `limits`), from `local.*`; the server fits them to its
        model and its free memory when it starts (server_sizing.py)."""
        local = self.settings.local
        return {"max_new_tokens": local.max_new_tokens_limit, "max_request_bytes": local.max_request_bytes,
                "generation_timeout_s": local.generation_timeout_s,
                "max_concurrent_generations": local.max_concurrent_generations,
                "max_batch_size": local.max_batch_size,
                "max_queued_requests": local.max_queued_requests, "queue_wait_s": local.queue_wait_s}

    def deploy(self, model: ModelRef) -> DeploymentRef:
        """The model's server, started beside the live one (or found running); traffic moves in go_live."""
        endpoint = self.endpoint
        deployment_dir = self.ws.dir("deployments", f"{model.name}-v{model.version}")
        with endpoint.lock():
            state = endpoint.server_state(deployment_dir)
            spec = read_json(deployment_dir / "spec.json") or {}
            if state and (spec.get("key_sha256") != self.ws.key_fingerprint()  # the key was replaced
                          or spec.get("limits") != self.serving_limits()):  # or the server's limits changed
                endpoint.stop_server(state)
                state = None
            created = state is None
            if created:
                state = endpoint.start_server(deployment_dir, {
                    "model_dir": model.uri, "model_version": model.version, "job_name": model.job_name,
                    "run_id": self.run_id, "key_file": str(self.ws.key_file), "key_sha256": self.ws.key_fingerprint(),
                    "port": self.settings.local.port, "limits": self.serving_limits()})
            elif spec.get("run_id") != self.run_id and deployment_dir.name not in endpoint.traffic():
                # a candidate a killed run left: this run adopts it, and its failure clean-up removes it
                write_json_atomic(deployment_dir / "spec.json", {**spec, "run_id": self.run_id})
        return self._deployment_ref(deployment_dir, state, created)

    def live_deployment(self) -> DeploymentRef | None:
        if not self.ws.root.is_dir():  # a workspace that never existed: nothing serves, and nothing is made
            return None
        endpoint = self.endpoint
        live = next((name for name, share in endpoint.traffic().items() if share == 100), None)
        state = endpoint.server_state(endpoint.deployment_dir(live)) if live else None
        return self._deployment_ref(endpoint.deployment_dir(live), state, created=False) if state else None

    def go_live(self, deployment: DeploymentRef, restore: bool = False) -> DeploymentRef:
        endpoint = self.endpoint
        since = datetime.fromisoformat(deployment.live_since).timestamp() if restore and deployment.live_since else None
        with endpoint.lock():
            moved = endpoint.route_all_to(deployment.deployment_name, deployment.scoring_uri, since)
            if not restore:
                self.ask(deployment, SMOKE_PROBE, 16)  # traffic is proven by an authenticated answer
        return deployment.model_copy(update={"traffic": {deployment.deployment_name: 100}, "created": moved})

    def remove_deployments(self, keep: DeploymentRef | None, only_own: bool = False) -> TeardownReport:
        """Runs on one workspace are serialised by its run lock, so no other run holds a deployment here."""
        endpoint = self.endpoint
        with endpoint.lock():
            others = [d for d in endpoint.deployments() if not keep or d.name != keep.deployment_name]
            removed = [d for d in others
                       if not only_own or (read_json(d / "spec.json") or {}).get("run_id") == self.run_id]
            for deployment_dir in removed:
                endpoint.remove(deployment_dir)
        return TeardownReport(removed=[d.name for d in removed], already_gone=[],
                              kept=[d.name for d in others if d not in removed])

    def _endpoint_key(self, deployment: DeploymentRef) -> str:
        return self.ws.read_key()

    # ---- connection ----------------------------------------------------------------------------
    def create_connection(self, deployment: DeploymentRef) -> ConnectionRef:
        name = self.settings.connection_name
        promptflow_chat.upsert_connection(name, deployment.scoring_uri, self._endpoint_key(deployment),
                                          deployment.contract, owner=self.ws.workspace_id)
        return ConnectionRef(name=name, endpoint=deployment.scoring_uri)

    # ---- plan ----------------------------------------------------------------------------------
    def plan(self, split: SplitFiles, job_name: str) -> list[PlanItem]:
        """What exists in the workspace and what a run would make; nothing local is billed."""
        def item(resource: str, exists: bool, detail: str = "") -> PlanItem:
            return PlanItem(resource=resource, action="reuse" if exists else "create", detail=detail)

        job = self.job_status(job_name)
        servers = [d.name for d in self.endpoint.deployments() if self.endpoint.server_state(d)]
        items = [item(f"endpoint key in {self.ws.root}", self.ws.key_file.exists())]
        items += plan_resource_checks(self.check_resources())
        if (hub_model := self.hub_base_model) is not None:
            items.append(item(f"base model {hub_model.identity}", hub_model.snapshot is not None,
                              f"{hub_model.weight_bytes / GiB:.2f} GiB of weights in the Hugging Face cache"))
        items += [
            item(f"dataset {split.content_hash[:16]}",
                 (self.ws.root / "datasets" / split.content_hash[:16] / TEST_FILE).exists()),
            PlanItem(resource=f"fine-tune job {job_name}",
                     action="submit" if job.state in ("Missing", "Lost") else f"adopt ({job.state})"),
            PlanItem(resource=f"scoring server on 127.0.0.1 ({', '.join(servers) or 'none running'})",
                     action="get or create"),
        ]
        return items

    # ---- teardown ------------------------------------------------------------------------------
    def teardown(self, cancel_jobs: bool = True) -> TeardownReport:
        """The servers and the endpoint, and the Prompt flow connection if it points at this workspace's
        endpoint (one HOME's connections are shared by every workspace). A workspace that never existed
        is left unmade. A local job bills nothing and is its run's: `cancel_jobs` has nothing to cancel."""
        if not self.ws.root.is_dir():
            return TeardownReport(removed=[], already_gone=[f"workspace {self.ws.root}"])
        report, endpoint = TeardownReport(removed=[], already_gone=[]), self.endpoint
        with endpoint.lock():
            for deployment_dir in endpoint.deployments():
                report.note(f"server {deployment_dir.name}", endpoint.remove(deployment_dir))
            report.note(f"endpoint {self.endpoint_name}", endpoint.file.exists())
            endpoint.file.unlink(missing_ok=True)
        name = self.settings.connection_name
        report.note(f"connection {name}", promptflow_chat.delete_connection(name, owner=self.ws.workspace_id))
        return report

    def sweep(self, older_than_hours: float) -> TeardownReport:
        """Every endpoint of this workspace (any model) whose model has served longer than the limit, and
        any server no endpoint routes to that was started before it (a candidate left by a killed run)."""
        cutoff = time.time() - older_than_hours * 3600
        removed, routed = [], set()
        for endpoint_file in sorted((self.ws.root / "endpoints").glob("*.json")):
            endpoint = LocalEndpoint(self.ws, endpoint_file.stem)
            with endpoint.lock():
                if (read_json(endpoint_file) or {}).get("live_since", 0) >= cutoff:
                    routed.update(endpoint.traffic())
                    continue
                for deployment_name in endpoint.traffic():
                    endpoint.remove(endpoint.deployment_dir(deployment_name))
                    removed.append(f"server {deployment_name}")
                endpoint_file.unlink(missing_ok=True)
                removed.append(f"endpoint {endpoint_file.stem}")
        for deployment_dir in self.endpoint.deployments():
            spec = deployment_dir / "spec.json"
            if deployment_dir.name not in routed and (not spec.exists() or spec.stat().st_mtime < cutoff):
                LocalEndpoint.remove(deployment_dir)
                removed.append(f"server {deployment_dir.name}")
        return TeardownReport(removed=removed, already_gone=[])
