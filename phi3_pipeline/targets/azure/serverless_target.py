"""The Azure target in serverless mode (`azure.mode = "serverless"`): the same stages on Azure's own capacity.

Microsoft's serverless fine-tuning runs in hub-based projects only, so the data, the job, the model and the
endpoints live in the pipeline's Foundry project (`azure.project_name` in `azure.hub_name`, made on the ML
workspace's storage and key vault), not in `azure.workspace_name`. The job is submitted without a compute; each
model version gets its own serverless endpoint (there is no traffic split), and going live moves the record of
what serves (the endpoint's `live-since` tag) and the connection to the new one, after the gate, before the old
endpoint goes. No identity is needed: Azure runs the endpoint. The workspace lease (and the role it needs) is
the ML workspace's, as in managed mode: runs of both modes write to it.
"""

from __future__ import annotations

from functools import cached_property

from azure.ai.ml import MLClient
from azure.ai.ml.entities import Project
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from phi3_pipeline.chat_data.split_files import SplitFiles
from phi3_pipeline.config.errors import ConfigError, PipelineError
from phi3_pipeline.config.naming import content_hash
from phi3_pipeline.targets.azure import catalog, finetune, foundry, online, serverless
from phi3_pipeline.targets.azure.clients import found
from phi3_pipeline.targets.azure.entities import LIVE_SINCE, deployment_lease, finetune_job, workspace_model_id
from phi3_pipeline.targets.azure.errors import translated
from phi3_pipeline.targets.azure.target import AzureTarget, isolated_step
from phi3_pipeline.targets.base import (
    SMOKE_PROBE,
    UNPRICED,
    DeploymentRef,
    IdentityRef,
    ModelRef,
    PlanItem,
    ResourceCheck,
    TeardownReport,
    plan_resource_checks,
)

SCORING_PATH = "/v1"  # the fine-tuned model's chat completions are at <inference URI>/v1/chat/completions


class ServerlessAzureTarget(AzureTarget):
    @property
    def ml(self) -> MLClient:
        """The Foundry project: where serverless fine-tuning and its endpoints live."""
        return self.clients.project_ml

    @property
    def place(self) -> str:
        return f"Foundry project {self.azure.project_name} (resource group {self.azure.resource_group})"

    @cached_property
    def _workspace(self):
        return self.clients.resource_group_ml.workspaces.get(self.azure.project_name)

    def _ml_workspace(self):
        return self.clients.ml.workspaces.get(self.azure.workspace_name)

    @cached_property
    def model(self) -> catalog.CatalogModel:
        """As in managed mode; a refused model's error suggests only models with the serverless offer."""
        return catalog.resolve(self.clients.registry_ml, self.azure, serverless_offer=serverless.FINETUNE_REGIONS)

    @property
    def endpoint_name(self) -> str:
        """The prefix of the model's endpoints, `<prefix>-v<version>` each (32 characters at most)."""
        owner = content_hash([self.azure.subscription_id, self.azure.resource_group, self.azure.project_name,
                              self.settings.model_name])
        return f"sl-{self.settings.model_name[:14]}-{owner[:6]}"

    @translated
    def notices(self) -> list[str]:
        return self.model.deprecations(catalog.utc_today())

    @translated
    def job_inputs(self) -> dict:
        return {"catalog_model": self.model.asset_id, "hyperparameters": self.hyperparameters, "mode": "serverless"}

    # ---- quota: no VM quota, but the offer in the project's region ----------------------------------
    def _project(self) -> Project | None:
        """The Foundry project the stages run in, None until it exists; refused if `azure.project_name` names a
        workspace that is not a hub-based project."""
        try:
            project = self._workspace
        except ResourceNotFoundError:
            return None
        if not isinstance(project, Project):
            raise ConfigError(f"azure.project_name {self.azure.project_name} is a workspace of kind "
                              f"{type(project).__name__.lower()}, not a hub-based project; serverless fine-tuning "
                              "runs only in one (deploy-models-serverless-availability): name another")
        return project

    def _region(self) -> str:
        """Where the jobs and endpoints run: the project's region (azure.location, where it is made, until then)."""
        project = self._project()
        return project.location if project else self.azure.location

    @translated
    def check_resources(self) -> list[ResourceCheck]:
        """The catalog model (lifecycle, hyperparameters) and the serverless offer in the region: read calls only."""
        self.hyperparameters  # noqa: B018 - refuses a learning rate outside the model's range
        region = self._region()
        if refusal := serverless.offer_refusal(self.model.name, region):
            raise ConfigError(refusal)
        return [ResourceCheck(resource=f"serverless fine-tuning of {self.model.name} in {region}", needed=1,
                              available=1, unit="offer (no VM quota needed)")]

    # ---- identity: the hub-based project the stages run in --------------------------------------------
    @translated
    def ensure_identity(self) -> IdentityRef:
        existed = self._project() is not None
        foundry.ensure_project(self.clients.resource_group_ml, self.azure, self.tags)
        self.__dict__.pop("_workspace", None)  # read again: the project made now
        detail = (f"Foundry project {self.azure.project_name} in hub {self.azure.hub_name} "
                  f"({'reused' if existed else 'created'}); no identity or role needed: Azure runs serverless "
                  "endpoints")
        return IdentityRef(workspace_id=self.workspace_identity(), detail=detail, created=not existed)

    # ---- fine-tune: no compute ------------------------------------------------------------------
    @translated
    def find_or_submit_job(self, job_name: str, dataset) -> bool:
        if finetune.job_status(self.ml, job_name).state != "Missing":
            return False  # adopt it in whatever state: never a second paid job for the same inputs
        try:
            return finetune.submit(self.ml, finetune_job(
                None, self.model.asset_id, self.hyperparameters, job_name, dataset.train_uri, dataset.test_uri,
                self.settings.model_name, self.tags))
        except HttpResponseError as error:
            if serverless.region_refused(error):
                said = str(error.message or error).splitlines()[0]
                raise ConfigError(f"Azure refused the serverless fine-tune: {said} "
                                  f"({serverless.offer_refusal(self.model.name, 'that region') or ''})") from None
            raise

    # ---- deploy: one serverless endpoint per model version -----------------------------------------
    def _family(self):
        return serverless.endpoints(self.ml, self.endpoint_name)

    def _deployment_ref(self, endpoint, live: bool, created: bool) -> DeploymentRef:
        tags = endpoint.tags or {}
        return DeploymentRef(endpoint_name=endpoint.name, deployment_name=endpoint.name,
                             scoring_uri=str(endpoint.scoring_uri or "").rstrip("/") + SCORING_PATH,
                             traffic={endpoint.name: 100} if live else {},
                             model_version=int(tags.get("model-version", 0)), job_name=tags.get("job", ""),
                             created=created, contract=self.azure.contract, run_id=tags.get("pipeline-run", ""),
                             live_since=tags.get(LIVE_SINCE, "") if live else "")

    @translated
    def deploy(self, model: ModelRef) -> DeploymentRef:
        name = serverless.endpoint_name(self.endpoint_name, model.version)
        project = self._workspace
        model_id = workspace_model_id(project.location, self.workspace_identity(), model.name, model.version)
        tags = {**self.tags, "job": model.job_name, "model-version": str(model.version),
                **deployment_lease(self.run_id, self.azure.deployment_lease_minutes)}
        current = serverless.live(self._family())
        is_live = current is not None and current.name == name
        endpoint, created = serverless.ensure_endpoint(self.ml, name, model_id, project.location, tags,
                                                       claim=not is_live)
        return self._deployment_ref(endpoint, is_live, created)

    @translated
    def live_deployment(self) -> DeploymentRef | None:
        current = serverless.live(self._family())
        return None if current is None else self._deployment_ref(current, live=True, created=False)

    @translated
    def go_live(self, deployment: DeploymentRef, restore: bool = False) -> DeploymentRef:
        """Record the endpoint as the one serving (its `live-since`, the newest wins), verify the record, prove it
        answers, and move the connections to it; the endpoints it replaces are named (the go-live stage then deletes
        them). With `restore` (a failed run's clean-up): the failed candidate's newer record is removed (so the
        reaper never ages the wrong endpoint), the record verified and the connections moved back; no probe."""
        family = self._family()
        if restore:
            for newer in [e for e in family if e.name != deployment.endpoint_name and serverless.newer_live(
                    e, deployment.live_since)]:
                serverless.retag(self.ml, newer, {k: v for k, v in (newer.tags or {}).items() if k != LIVE_SINCE})
            self._verify_recorded_live(deployment.endpoint_name, "the traffic went back to it")
            self.create_connection(deployment)
            return deployment
        endpoint = self.ml.serverless_endpoints.get(deployment.endpoint_name)
        current = serverless.live(family)
        if current is None or current.name != endpoint.name:
            endpoint = serverless.mark_live(self.ml, endpoint)
        self._verify_recorded_live(endpoint.name, "going live")
        live = self._deployment_ref(endpoint, live=True, created=not deployment.live)
        self.ask(live, SMOKE_PROBE, 16)  # the endpoint on record answers, authenticated
        self.create_connection(live)
        superseded = [e.name for e in family if e.name != endpoint.name and LIVE_SINCE in (e.tags or {})]
        return live.model_copy(update={"superseded": superseded})

    def _verify_recorded_live(self, name: str, after: str) -> None:
        """The record read back names the endpoint, as a managed endpoint's traffic map is read back."""
        current = serverless.live(self._family())
        if current is None or current.name != name:
            raise PipelineError(f"serverless endpoint {name} is not recorded as live after {after} (the newest "
                                f"live-since is {current.name if current else 'on none'})")

    @translated
    def remove_deployments(self, keep: DeploymentRef | None, only_own: bool = False) -> TeardownReport:
        removed, kept = serverless.remove_others(
            self.ml, self._family(), keep.endpoint_name if keep else None, self.run_id, only_own,
            superseded=tuple(keep.superseded) if keep else ())
        return TeardownReport(removed=[f"serverless endpoint {name}" for name in removed], already_gone=[],
                              kept=kept)

    @translated
    def _endpoint_key(self, deployment: DeploymentRef) -> str:
        return serverless.key(self.ml, deployment.endpoint_name)

    # ---- plan ----------------------------------------------------------------------------------
    @translated
    def plan(self, split: SplitFiles, job_name: str) -> list[PlanItem]:
        """Read calls only: the catalog model, the offer in the region, what exists, what a run would create, and
        what it bills: per token to train, per hour to host (from the dated table, or "price unknown")."""
        training, hosting = serverless.prices(self.model.name)
        hyper = ", ".join(f"{key} {value}" for key, value in self.hyperparameters.items())
        items = [PlanItem(resource=f"catalog model {self.model.label}", action="fine-tune (serverless)",
                          detail=f"{self.model.asset_id}; {hyper}"),
                 PlanItem(resource=f"catalog facts of {self.model.label}", action="read",
                          detail="; ".join(f"{fact} from {source}" for fact, source in self.model.sources.items()
                                           if "computes" not in fact))]  # no VM of the user's to choose
        items += [PlanItem(resource="warning", action="warning", detail=note) for note in self.notices()]
        items += foundry.plan(self.clients.resource_group_ml, self.azure, self.settings.connection_name)
        items.append(self._plan_lease_role())
        items += plan_resource_checks(self.check_resources())
        version = split.content_hash[:16]
        items += [PlanItem(resource=f"data asset {self.asset_name(part)}:{version} (in the project)",
                           action="reuse" if found(lambda part=part: self.ml.data.get(self.asset_name(part), version))
                           else "create") for part in ("train", "test")]
        job = finetune.job_status(self.ml, job_name)
        per_token = (f"{training:g} USD per 1M training tokens" if training is not None
                     else f"training per token: {UNPRICED} ({serverless.PRICE_SOURCE})")
        items.append(PlanItem(resource=f"serverless fine-tune job {job_name}",
                              action="submit" if job.state == "Missing" else f"adopt ({job.phase})",
                              detail=f"{per_token}; no VM quota"))
        live = self.live_deployment()
        beside = f"beside live {live.endpoint_name} until the gate decides, which then goes; " if live else ""
        hourly = ({"usd_per_hour": hosting, "detail": f"{beside}hosting billed hourly until teardown"}
                  if hosting is not None else
                  {"detail": f"{beside}hosting billed hourly until teardown: {UNPRICED} ({serverless.PRICE_SOURCE})"})
        items.append(PlanItem(resource=f"serverless endpoint {self.endpoint_name}-v<new model version>",
                              action="create", **hourly))
        return items + self._plan_teardown(f"every serverless endpoint {self.endpoint_name}-v*")

    # ---- teardown ------------------------------------------------------------------------------
    @translated
    def teardown(self, cancel_jobs: bool = True) -> TeardownReport:
        """Everything that bills: the model's running fine-tune jobs and every endpoint of the model (the hourly
        fee); and the connections, whose key is dead then. With azure.teardown_everything also the Foundry project
        and hub this pipeline made."""
        report = TeardownReport(removed=[], already_gone=[])
        family = self._family()
        for endpoint in family:
            isolated_step(report, f"serverless endpoint {endpoint.name}", lambda name=endpoint.name: report.note(
                f"serverless endpoint {name}", serverless.delete(self.ml, name)))
        if not family:
            report.note(f"serverless endpoints {self.endpoint_name}-v*", False)
        isolated_step(report, "fine-tune jobs", lambda: self._cancel_jobs(report, cancel_jobs))
        self._remove_connections(report)
        return report

    @translated
    def sweep(self, older_than_hours: float) -> TeardownReport:
        """In the project: a model's live endpoint past its age goes, and endpoints that are not live go once
        their lease has ended (a killed run's candidate)."""
        report = TeardownReport(removed=[], already_gone=[])
        every = serverless.endpoints(self.ml)
        for prefix in sorted({serverless.prefix_of(e.name) for e in every}):
            family = [e for e in every if serverless.prefix_of(e.name) == prefix]
            current = serverless.live(family)
            ended = [e for e in family if e is current and online.expired(e, older_than_hours)
                     or e is not current and online.removable(e, "", only_own=False)]
            for endpoint in ended:  # one that cannot be removed now never stops the sweep of the others
                isolated_step(report, f"serverless endpoint {endpoint.name}", lambda name=endpoint.name: report.note(
                    f"serverless endpoint {name}", serverless.delete(self.ml, name)))
        return report

