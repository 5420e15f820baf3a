"""The Azure target: every stage in the user's Azure ML workspace, get-or-create, nothing billed twice.

The stage logic lives in the sibling modules (rbac, quota, assets, finetune, online, foundry); this
class assembles them behind `targets.base.Target`. Clients are made once per target, on first use,
through `clients.connect` (sign-in is checked there, before anything else).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import cached_property
from pathlib import Path
from typing import TypeVar

from azure.ai.ml import MLClient
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.storage.blob import BlobClient
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from phi3_pipeline.chat_data.split_files import SplitFiles
from phi3_pipeline.chat_flow import promptflow_chat
from phi3_pipeline.config.errors import ConfigError, JobFailedError, PipelineError
from phi3_pipeline.config.naming import content_hash
from phi3_pipeline.config.settings import PipelineSettings
from phi3_pipeline.targets.azure import (
    assets,
    catalog,
    clients,
    finetune,
    foundry,
    online,
    quota,
    rbac,
    workspace_lease,
)
from phi3_pipeline.targets.azure.entities import (
    LIVE_SINCE,
    deployment_lease,
    finetune_job,
    made_here,
    resource_tags,
)
from phi3_pipeline.targets.azure.errors import translated
from phi3_pipeline.targets.base import (
    SMOKE_PROBE,
    UNPRICED,
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
from phi3_pipeline.targets.workspace import Workspace

T = TypeVar("T")
NO_REGISTRY = ("workspace {workspace} has no container registry yet (Azure creates one when first needed): the "
               "AcrPull grant waits until then; the deploy stage grants it once the registry exists")
LEASE_ROLE_REFUSED = ("the workspace lease needs the role {role} on storage account {account} for the signed-in "
                      "principal, and Azure refused {what}: ask an Owner of the storage account to grant it")
SYSTEM_IDENTITY = ("workspace {workspace} still has no container registry, so the identity cannot get AcrPull: "
                   "endpoint {endpoint} runs as a system-assigned identity (Azure grants it what it needs)")


class AzureTarget(Target):
    name = "azure"
    # at most 60 status calls per job-hour, and a finished job is noticed within a minute
    first_poll_interval_s = 60.0
    max_poll_interval_s = 60.0

    def __init__(self, settings: PipelineSettings, run_id: str = "cli"):
        super().__init__(settings, run_id)
        self.azure = settings.azure

    @cached_property
    def clients(self) -> clients.AzureClients:
        return clients.connect(self.azure)

    @property
    def ml(self) -> MLClient:
        """The workspace the data, the job and the model live in: the ML workspace (azure.workspace_name)."""
        return self.clients.ml

    @property
    def place(self) -> str:
        """Where the stages run, as errors name it."""
        return f"workspace {self.azure.workspace_name} (resource group {self.azure.resource_group})"

    @property
    def tags(self) -> dict[str, str]:
        return resource_tags(self.run_id)

    # ---- the catalog: model, VM sizes and hyperparameters, read before any write ------------------
    @cached_property
    def model(self) -> catalog.CatalogModel:
        """The exact catalog model version, refused (one error line) if unknown, archived or retired."""
        return catalog.resolve(self.clients.registry_ml, self.azure)

    @cached_property
    def hyperparameters(self) -> dict[str, str]:
        return catalog.hyperparameters(self.model, self.azure.training)

    @cached_property
    def sizes(self) -> quota.SizePlan:
        """The cluster's and the deployment's VM sizes (from the model's lists), with the quota checks."""
        existing = assets.cluster_size(self.clients.ml, self.azure.compute_name)
        return quota.plan_sizes(self.clients.ml, self.azure, self.model, existing)

    @translated
    def notices(self) -> list[str]:
        notes = self.model.deprecations(catalog.utc_today())
        if self._role_scopes()[1].container_registry is None:
            notes.append(NO_REGISTRY.format(workspace=self.azure.workspace_name))
        return notes

    @translated
    def job_inputs(self) -> dict:
        """The exact catalog model version, the hyperparameters sent and the cluster (not its size: an existing
        cluster keeps its own, and a size chosen by free quota must not name a second paid job)."""
        return {"catalog_model": self.model.asset_id, "hyperparameters": self.hyperparameters,
                "cluster": self.azure.compute_name}

    @property
    def workspace_key(self) -> str:
        """The Azure workspace's: the same on every machine, so runs from several machines meet on it."""
        return content_hash([self.azure.subscription_id, self.azure.resource_group, self.azure.workspace_name])[:12]

    def local_root(self, create: bool = True) -> Path:
        """Files prepared here before upload (the split, the chat flow), in the private local workspace, one
        folder per Azure workspace."""
        local = Workspace(self.settings.local.workspace_dir)
        return local.dir("azure", self.workspace_key) if create else local.root / "azure" / self.workspace_key

    # ---- the workspace lease: one writer across machines (workspace_lease.py) -------------------------
    def _lease_blob(self) -> tuple[BlobClient, str]:
        """The lease's blob, in the ML workspace's default datastore as the service describes it (in either mode:
        both write to this workspace); and its storage account's name."""
        store = self.clients.ml.datastores.get_default()
        service = self.clients.make_blob_service(f"{store.protocol}://{store.account_name}.blob.{store.endpoint}")
        return service.get_blob_client(store.container_name, workspace_lease.LEASE_BLOB), store.account_name

    def _ensure_lease_role(self, account: str) -> rbac.RoleGrant:
        """LEASE_ROLE on the ML workspace's storage account for the signed-in principal; refused (it may not grant
        roles): one line naming the role and the account."""
        try:
            return rbac.ensure_signed_in_role(self.clients.authorization,
                                              clients.signed_in_principal(self.clients.credential),
                                              self._scopes_of(self._ml_workspace()), rbac.LEASE_ROLE)
        except HttpResponseError as error:
            if error.status_code not in (401, 403):
                raise
            raise ConfigError(LEASE_ROLE_REFUSED.format(role=rbac.LEASE_ROLE[0], account=account,
                                                        what="to grant it")) from None

    def _ml_workspace(self):
        """The ML workspace (`azure.workspace_name`), where the lease lives: in managed mode the workspace the stages
        run in, read once (serverless mode reads it, its stages run in the project)."""
        return self._workspace

    def _plan_lease_role(self) -> PlanItem:
        account = self._ml_workspace().storage_account.rsplit("/", 1)[-1]
        return PlanItem(resource=f"role {rbac.LEASE_ROLE[0]} on {account} for you", action="get or create",
                        detail="the workspace lease: a run on another machine waits while this one writes")

    @contextmanager
    def workspace_lease(self, wait: bool, on_wait: Callable[[str], None],
                        warn: Callable[[str], None]) -> Iterator[None]:
        """The workspace's blob lease for the block. Refused for want of LEASE_ROLE: the role granted, and the lease
        tried again while the grant takes effect (up to `azure.role_propagation_s`)."""
        blob, account = self._lease_blob()
        take = functools.partial(workspace_lease.held, blob, self.run_id, wait, on_wait, warn)
        with ExitStack() as held:
            try:
                try:
                    held.enter_context(take())
                except workspace_lease.LeaseRoleMissing:
                    if not self._ensure_lease_role(account).created:  # held, yet refused: a deny, a firewall
                        raise ConfigError(LEASE_ROLE_REFUSED.format(role=rbac.LEASE_ROLE[0], account=account,
                                                                    what="the lease although the role is held"))
                    Retrying(retry=retry_if_exception_type(workspace_lease.LeaseRoleMissing), reraise=True,
                             stop=stop_after_delay(self.azure.role_propagation_s),
                             wait=wait_exponential_jitter(initial=1, max=15))(lambda: held.enter_context(take()))
            except workspace_lease.LeaseRoleMissing:
                raise ConfigError(f"{rbac.LEASE_ROLE[0]} on storage account {account} was granted to you just now "
                                  f"and had not taken effect after {self.azure.role_propagation_s} s: run again in "
                                  "a few minutes") from None
            except HttpResponseError as error:
                reason = str(error.message).splitlines()[0]
                raise PipelineError(f"Azure refused the workspace lease on storage account {account} "
                                    f"({error.status_code}): {reason}") from None
            yield

    # ---- names: derived from the workspace and the model, so a re-run finds what the last one made ----
    @property
    def endpoint_name(self) -> str:
        """Endpoint names are unique per region (3-32 characters): the model name plus a hash of workspace and
        model."""
        owner = content_hash([self.azure.subscription_id, self.azure.resource_group, self.azure.workspace_name,
                              self.settings.model_name])  # two models never share an endpoint
        return f"ep-{self.settings.model_name[:19]}-{owner[:8]}"

    @staticmethod
    def deployment_name(model: ModelRef) -> str:
        return f"deploy-v{model.version}"

    def asset_name(self, part: str) -> str:
        return f"{self.settings.model_name}-{part}"

    # ---- identity and RBAC -------------------------------------------------------------------
    @cached_property
    def _workspace(self):
        """The ML workspace, read once per run (the deploy stage reads it anew, so a registry Azure made
        meanwhile is seen)."""
        return self.clients.ml.workspaces.get(self.azure.workspace_name)

    @translated
    def workspace_identity(self) -> str:
        """The workspace's GUID (azure-ai-ml keeps it in a private attribute): a workspace deleted and made
        again under the same name is another one."""
        return self._workspace._workspace_id

    def _role_scopes(self, fresh: bool = False) -> tuple[str, rbac.RoleScopes]:
        """(the workspace's immutable GUID, the role scopes): a workspace deleted and made again under the same
        name has a new GUID, so nothing cached against the old one is reused (azure-ai-ml 1.35 keeps the GUID in
        a private attribute). `fresh`: the workspace read again."""
        if fresh:
            self.__dict__.pop("_workspace", None)
        return self.workspace_identity(), self._scopes_of(self._workspace)

    def _scopes_of(self, workspace) -> rbac.RoleScopes:
        group = f"/subscriptions/{self.azure.subscription_id}/resourceGroups/{self.azure.resource_group}"
        return rbac.RoleScopes(resource_group=group, workspace=workspace.id, storage_account=workspace.storage_account,
                               container_registry=workspace.container_registry)

    @translated
    def ensure_identity(self) -> IdentityRef:
        workspace_id, scopes = self._role_scopes()
        identity, created = rbac.ensure_identity(self.clients.msi, self.azure, self.tags)
        grants = rbac.ensure_roles(self.clients.authorization, identity.principal_id, scopes)
        removed = rbac.remove_unused_roles(self.clients.authorization, identity.principal_id, scopes)
        roles = ", ".join([f"{g.role} ({'granted' if g.created else 'held'})" for g in grants]
                          + [f"{role} (removed: unused)" for role in removed])
        you = clients.signed_in_principal(self.clients.credential)
        mine = [(rbac.LEASE_ROLE, "for the workspace lease")]
        if self.azure.endpoint_auth == "token":  # the callers' tokens are the signed-in principal's
            mine.append((rbac.SCORING_ROLE, "to score with a token"))
        roles += "; you: " + ", ".join(
            f"{grant.role} ({'granted' if grant.created else 'held'}, {why})"
            for grant, why in ((rbac.ensure_signed_in_role(self.clients.authorization, you, scopes, role), why)
                               for role, why in mine))
        warnings = [] if scopes.container_registry else [NO_REGISTRY.format(workspace=self.azure.workspace_name)]
        return IdentityRef(workspace_id=workspace_id, detail=f"{self.azure.identity_name}: {roles}", created=created,
                           warnings=warnings)

    def _grant_acr_pull_once_registry_exists(self) -> bool:
        """A workspace made without a registry gets one lazily: grant the deferred AcrPull before deploying, and
        give a grant made now `azure.role_propagation_s` to take effect before the deployment pulls its image.
        False if there is still no registry (the identity then lacks AcrPull)."""
        _, scopes = self._role_scopes(fresh=True)
        if scopes.container_registry is None:
            return False
        identity = self.clients.msi.user_assigned_identities.get(self.azure.resource_group, self.azure.identity_name)
        grants = rbac.ensure_roles(self.clients.authorization, identity.principal_id, scopes,
                                   required=tuple(grant for grant in rbac.REQUIRED_ROLES if grant[0] == "AcrPull"))
        if any(grant.created for grant in grants):
            time.sleep(self.azure.role_propagation_s)
        return True

    # ---- quota ---------------------------------------------------------------------------------
    @translated
    def check_resources(self) -> list[ResourceCheck]:
        """The catalog model (resolved and lifecycle-checked), the hyperparameters (range-checked), then the vCPU
        quota of the VM sizes chosen from the model's lists: read calls only, before anything is created."""
        self.hyperparameters  # noqa: B018 - refuses a learning rate outside the model's range
        return self.sizes.checks

    # ---- dataset -------------------------------------------------------------------------------
    @translated
    def store_dataset(self, split: SplitFiles) -> DatasetRef:
        created = False
        uris = {}
        for part, path in (("train", split.train_file), ("test", split.test_file)):
            asset, uploaded = assets.ensure_data_asset(self.ml, self.asset_name(part), path,
                                                       split.content_hash, self.tags)
            uris[part] = f"azureml:{asset.name}:{asset.version}"
            created = created or uploaded
        return DatasetRef(content_hash=split.content_hash, train_uri=uris["train"], test_uri=uris["test"],
                          train_rows=split.train_rows, test_rows=split.test_rows, created=created)

    # ---- fine-tune -----------------------------------------------------------------------------
    @translated
    def find_or_submit_job(self, job_name: str, dataset: DatasetRef) -> bool:
        if finetune.job_status(self.ml, job_name).state != "Missing":
            return False  # adopt it in whatever state: never a second paid job for the same inputs
        assets.ensure_cluster(self.clients.ml, self.azure, self.sizes.finetune_vm_size, self.tags)
        return finetune.submit(self.ml, finetune_job(
            self.azure.compute_name, self.model.asset_id, self.hyperparameters, job_name, dataset.train_uri,
            dataset.test_uri, self.settings.model_name, self.tags))

    @translated
    def job_status(self, job_name: str) -> JobStatus:
        return finetune.job_status(self.ml, job_name)

    @translated
    def job_result(self, job_name: str) -> JobRef:
        """Azure keeps the job's loss curve in its run history; the studio link points there."""
        return JobRef(name=job_name, created=False,
                      metrics={"studio_url": self.ml.jobs.get(job_name).studio_url})

    def job_failure(self, job_name: str, status: JobStatus) -> JobFailedError:
        return JobFailedError(
            f"fine-tune job {job_name} did not complete: {status.error or status.state}. A re-run with the "
            "same data and settings adopts this job (Azure keeps job names for good): fix the cause, then "
            "change the data or a setting (e.g. azure.training.epochs) so a new job is named."
        )

    # ---- register ------------------------------------------------------------------------------
    @translated
    def register_model(self, job: JobRef, dataset: DatasetRef) -> ModelRef:
        """The service registers the job's output itself: adopt that version and tag it with the lineage (the
        base model as the job itself names it)."""
        base_model = getattr(getattr(self.ml.jobs.get(job.name), "model", None), "path", None)
        lineage = {"train-data": dataset.train_uri, "test-data": dataset.test_uri, "base-model": str(base_model)}
        model, created = assets.adopt_job_model(self.ml, self.settings.model_name, job.name, lineage,
                                                self.tags)
        return ModelRef(name=model.name, version=int(model.version), uri=model.id, job_name=job.name,
                        created=created)

    # ---- deploy --------------------------------------------------------------------------------
    def _deployment_ref(self, endpoint, deployment, created: bool) -> DeploymentRef:
        tags = deployment.tags or {}
        return DeploymentRef(endpoint_name=self.endpoint_name, deployment_name=deployment.name,
                             scoring_uri=endpoint.scoring_uri, traffic=online.live_traffic(endpoint),
                             model_version=int(tags.get("model-version", 0)), job_name=tags.get("job", ""),
                             created=created, contract=self.azure.contract, run_id=tags.get("pipeline-run", ""),
                             live_since=(endpoint.tags or {}).get(LIVE_SINCE, "")
                             if online.live_traffic(endpoint).get(deployment.name) == 100 else "")

    @translated
    def deploy(self, model: ModelRef) -> DeploymentRef:
        ml, name = self.clients.ml, self.deployment_name(model)
        with_identity = self._grant_acr_pull_once_registry_exists()
        endpoint, endpoint_created = online.ensure_endpoint(ml, self.azure, self.endpoint_name, self.tags,
                                                            with_identity)
        warnings = [] if with_identity or not endpoint_created else [
            SYSTEM_IDENTITY.format(workspace=self.azure.workspace_name, endpoint=self.endpoint_name)]
        tags = {**self.tags, "job": model.job_name, "model-version": str(model.version),
                **deployment_lease(self.run_id, self.azure.deployment_lease_minutes)}
        deployment, created = online.ensure_deployment(ml, self.azure, self.sizes.deploy_vm_size, self.endpoint_name,
                                                       name, model.uri, tags,
                                                       claim=name not in online.live_traffic(endpoint))
        ref = self._deployment_ref(ml.online_endpoints.get(self.endpoint_name), deployment, created)
        return ref.model_copy(update={"warnings": warnings})

    @translated
    def live_deployment(self) -> DeploymentRef | None:
        ml = self.clients.ml
        try:
            endpoint = ml.online_endpoints.get(self.endpoint_name)
        except ResourceNotFoundError:
            return None
        live = next((name for name, share in online.live_traffic(endpoint).items() if share == 100), None)
        if live is None:
            return None
        return self._deployment_ref(endpoint, ml.online_deployments.get(live, self.endpoint_name), created=False)

    @translated
    def go_live(self, deployment: DeploymentRef, restore: bool = False) -> DeploymentRef:
        superseded, traffic = online.route_all_traffic(self.clients.ml, self.endpoint_name,
                                                       deployment.deployment_name,
                                                       since=deployment.live_since if restore else "")
        if not restore:
            self.ask(deployment, SMOKE_PROBE, 16)  # 100 % of traffic, proven by an authenticated answer
        return deployment.model_copy(update={"traffic": traffic, "created": not deployment.live,
                                             "superseded": superseded})

    @translated
    def remove_deployments(self, keep: DeploymentRef | None, only_own: bool = False) -> TeardownReport:
        removed, kept = online.remove_other_deployments(
            self.clients.ml, self.endpoint_name, keep.deployment_name if keep else None, self.run_id, only_own,
            superseded=tuple(keep.superseded) if keep else ())
        return TeardownReport(removed=removed, already_gone=[], kept=kept)

    @property
    def scoring_timeout_s(self) -> float:
        return self.azure.request_timeout_ms / 1000 + 10  # the endpoint's own time limit, and the way there

    @translated
    def _endpoint_key(self, deployment: DeploymentRef) -> str:
        """The endpoint's key; with token auth a Microsoft Entra token of the sign-in instead (no key is read)."""
        if self.azure.endpoint_auth == "token":
            return clients.scoring_token(self.clients.credential)
        return online.endpoint_key(self.clients.ml, deployment.endpoint_name)

    # ---- connection ----------------------------------------------------------------------------
    @translated
    def create_connection(self, deployment: DeploymentRef) -> ConnectionRef:
        """The Custom keys connection in the Foundry project, and the same one for local Prompt flow; with token
        auth they hold no key (the chat flow's tool gets a token when it calls)."""
        name = self.settings.connection_name
        key = None if self.azure.endpoint_auth == "token" else self._endpoint_key(deployment)
        foundry.ensure_project(self.clients.resource_group_ml, self.azure, self.tags)
        foundry.upsert_custom_connection(self.clients.project_ml, name, deployment.scoring_uri, key,
                                         deployment.contract, self.tags, owner=self.endpoint_name)
        promptflow_chat.upsert_connection(name, deployment.scoring_uri, key, deployment.contract,
                                          owner=self.endpoint_name)
        return ConnectionRef(name=name, endpoint=deployment.scoring_uri)

    # ---- plan ----------------------------------------------------------------------------------
    def _priced(self, vm_size: str, count: int, detail: str) -> dict:
        """usd_per_hour and detail of a plan line for `count` VMs of the size (a size missing from the price
        table is said so, not priced at zero silently)."""
        price = self.azure.vm_prices_usd_per_hour.get(vm_size)
        if price is None:
            return {"usd_per_hour": 0.0,
                    "detail": f"{detail}; {UNPRICED}: add {vm_size} to azure.vm_prices_usd_per_hour"}
        return {"usd_per_hour": round(price * count, 2), "detail": detail}

    @translated
    def plan(self, split: SplitFiles, job_name: str) -> list[PlanItem]:
        """Read calls only: the catalog model, what exists already, what a run would create, and what that bills
        per hour."""
        ml, azure, sizes = self.clients.ml, self.azure, self.sizes

        def get_or_create(resource: str, read, detail: str = "") -> PlanItem:
            return PlanItem(resource=resource, action="reuse" if clients.found(read) else "create", detail=detail)

        hyper = ", ".join(f"{key} {value}" for key, value in self.hyperparameters.items())
        items = [PlanItem(resource=f"catalog model {self.model.label}", action="fine-tune",
                          detail=f"{self.model.asset_id}; {hyper}"),
                 PlanItem(resource=f"catalog facts of {self.model.label}", action="read",
                          detail="; ".join(f"{fact} from {source}" for fact, source in self.model.sources.items()))]
        items += [PlanItem(resource="warning", action="warning", detail=note) for note in self.notices()]
        _, scopes = self._role_scopes()
        identities = self.clients.msi.user_assigned_identities
        items.append(get_or_create(f"managed identity {azure.identity_name}",
                                   lambda: identities.get(azure.resource_group, azure.identity_name)))
        items += [PlanItem(resource=f"role {role} on {scope.rsplit('/', 1)[-1]}", action="get or create")
                  if scope else PlanItem(resource=f"role {role}", action="deferred", detail="no registry yet")
                  for role, scope in ((r, getattr(scopes, f)) for r, f in rbac.REQUIRED_ROLES)]
        items.append(self._plan_lease_role())
        if azure.endpoint_auth == "token":
            items.append(PlanItem(resource=f"role {rbac.SCORING_ROLE[0]} on {azure.workspace_name} for you",
                                  action="get or create",
                                  detail="azure.endpoint_auth=token: the signed-in principal scores the endpoint with "
                                         "a Microsoft Entra token (no key is read)"))
        items += plan_resource_checks(self.check_resources())
        version = split.content_hash[:16]
        items += [get_or_create(f"data asset {self.asset_name(part)}:{version}",
                                lambda part=part: ml.data.get(self.asset_name(part), version))
                  for part in ("train", "test")]
        items.append(self._plan_cluster(sizes.finetune_vm_size))
        job = finetune.job_status(ml, job_name)
        running = job.state in ("Missing", "Queued", "Running")
        items.append(PlanItem(resource=f"fine-tune job {job_name}",
                              action="submit" if job.state == "Missing" else f"adopt ({job.phase})",
                              **self._priced(sizes.finetune_vm_size, azure.compute_max_nodes if running else 0,
                                             "billed while the job runs")))
        items.append(get_or_create(f"endpoint {self.endpoint_name}",
                                   lambda: ml.online_endpoints.get(self.endpoint_name)))
        live = self.live_deployment()
        beside = f"beside live {live.deployment_name} until the gate decides; " if live else ""
        items.append(PlanItem(resource=f"deployment ({sizes.deploy_vm_size} x{azure.deploy_instance_count})",
                              action="get or create",
                              **self._priced(sizes.deploy_vm_size, azure.deploy_instance_count,
                                             f"{beside}billed until teardown")))
        items += foundry.plan(self.clients.resource_group_ml, azure, self.settings.connection_name)
        return items + self._plan_teardown(f"endpoint {self.endpoint_name} with its deployments, the cluster if "
                                           "this pipeline made it and no other job uses it")

    def _plan_cluster(self, vm_size: str) -> PlanItem:
        """The cluster: made with min 0 nodes, or the existing one with its own minimum (a minimum above 0 bills all
        the time, and a cluster this pipeline did not make stays after teardown)."""
        azure = self.azure
        try:
            cluster = self.clients.ml.compute.get(azure.compute_name)
        except ResourceNotFoundError:
            return PlanItem(resource=f"compute {azure.compute_name} ({vm_size})", action="create",
                            detail=f"scales to {azure.compute_min_nodes} nodes after {azure.compute_idle_seconds} s "
                                   f"idle; {assets.CLUSTER_IDLE_COST}; teardown deletes it")
        ours = "teardown deletes it when idle" if made_here(cluster.tags) else "not made by this pipeline: kept"
        note = f"{assets.cluster_note(cluster)}; {ours}"
        return PlanItem(resource=f"compute {azure.compute_name} ({cluster.size})", action="reuse",
                        **(self._priced(cluster.size, cluster.min_instances, note) if cluster.min_instances
                           else {"detail": note}))

    def _plan_teardown(self, bills: str) -> list[PlanItem]:
        """What teardown removes and what it leaves (with what that still costs)."""
        return [PlanItem(resource="teardown", action="removes",
                         detail=f"the model's running fine-tune jobs, {bills}, the Foundry and local connections"),
                PlanItem(resource="teardown", action="leaves",
                         detail="storage (data assets, job outputs, registered models), the workspace's container "
                                "registry, key vault and Application Insights, and the Foundry project and hub "
                                "(azure.teardown_everything removes those two): see docs/azure.md, "
                                "'What still bills after teardown'")]

    # ---- teardown ------------------------------------------------------------------------------
    @translated
    def teardown(self, cancel_jobs: bool = True) -> TeardownReport:
        """Everything that bills: the model's running fine-tune jobs, the endpoint with its deployments, the
        cluster this pipeline made when no other job uses it; and the connections, whose key is dead then (the
        local one only if it is this endpoint's). With azure.teardown_everything also the Foundry project and hub.
        Each only if this pipeline made it."""
        ml, compute = self.clients.ml, self.azure.compute_name
        report = TeardownReport(removed=[], already_gone=[])
        step = functools.partial(isolated_step, report)
        step(f"endpoint {self.endpoint_name}",
             lambda: report.note(f"endpoint {self.endpoint_name}", online.delete_endpoint(ml, self.endpoint_name)))
        others = step("fine-tune jobs", lambda: self._cancel_jobs(report, cancel_jobs))
        if others is not None:  # a cluster is never deleted under jobs that could not be seen
            step(f"compute {compute}", lambda: report.note(
                *_with_reason(f"compute {compute}", assets.delete_idle_cluster(ml, compute, others))))
        self._remove_connections(report)
        return report

    def _cancel_jobs(self, report: TeardownReport, cancel_jobs: bool) -> list:
        """With `cancel_jobs`, cancel the model's fine-tune jobs still running (filed as removed); the workspace's
        other active jobs."""
        active = finetune.active_jobs(self.ml)
        cancelled = finetune.cancel_running(self.ml, self.settings.model_name, active) if cancel_jobs else []
        report.removed += [f"fine-tune job {name} (cancelled)" for name in cancelled]
        return [job for job in active if job.name not in cancelled]

    def _remove_connections(self, report: TeardownReport) -> None:
        """The Foundry connection if it is this endpoint's, and the local one (once the endpoint is gone their key
        is dead); with azure.teardown_everything the Foundry project and hub too. Each step on its own."""
        name, rg_ml = self.settings.connection_name, self.clients.resource_group_ml
        step = functools.partial(isolated_step, report)
        step(f"Foundry connection {name}", lambda: report.note(f"Foundry connection {name}", foundry.delete_connection(
            rg_ml, self.clients.project_ml, self.azure, name, owner=self.endpoint_name)))
        report.note(f"local connection {name}", promptflow_chat.delete_connection(name, owner=self.endpoint_name))
        if self.azure.teardown_everything:
            for what, outcome in step("Foundry project and hub",
                                      lambda: foundry.delete_project_and_hub(rg_ml, self.azure)) or []:
                report.note(what, outcome)

    @translated
    def sweep(self, older_than_hours: float) -> TeardownReport:
        """Endpoints past their age go whole; from the others, candidates whose lease has ended."""
        ml, report = self.clients.ml, TeardownReport(removed=[], already_gone=[])
        def sweep_one(endpoint) -> None:
            if online.expired(endpoint, older_than_hours):
                report.note(f"endpoint {endpoint.name}", online.delete_endpoint(ml, endpoint.name))
            else:
                report.removed += [f"deployment {name} of {endpoint.name} (lease ended)"
                                   for name in online.remove_ended_candidates(ml, endpoint)]

        for endpoint in online.managed_endpoints(ml):  # one that cannot be removed now never stops the others
            isolated_step(report, f"endpoint {endpoint.name}", lambda endpoint=endpoint: sweep_one(endpoint))
        return report


def _with_reason(what: str, outcome_and_reason: tuple[str, str]) -> tuple[str, str]:
    """(what, with the reason it was kept if there is one; the outcome), for `TeardownReport.note`."""
    outcome, reason = outcome_and_reason
    return (f"{what} ({reason})" if reason else what), outcome


def isolated_step(report: TeardownReport, what: str, step: Callable[[], T]) -> T | None:
    """One step of a teardown or sweep: a failure is filed under `failed` (the stage fails after the others), and
    the other steps go on; the step's result, None if it failed."""
    try:
        return step()
    except (PipelineError, HttpResponseError) as error:
        report.failed.append(f"{what}: {getattr(error, 'message', None) or error}")
        return None
