"""Microsoft Foundry (formerly Azure AI Foundry; its hub-based projects are now "classic"): the hub and project
(get-or-create) and the project's Custom keys connection.

azure-ai-ml 1.35 has public `Hub` and `Project` entities, but no public connection class whose REST
shape is the tutorial's "Custom keys" (authType CustomKeys, credentials.keys = {endpoint, key});
`CustomKeysConnection` below sends exactly that through the SDK's own REST models (pinned version).
`workspaces.begin_create` on an existing hub is not a no-op (it PATCHes its tags), so look first.
"""

from __future__ import annotations

from azure.ai.ml import MLClient
from azure.ai.ml._restclient.arm_ml_service.models import (
    CustomKeys,
    CustomKeysWorkspaceConnectionProperties,
    WorkspaceConnectionPropertiesV2BasicResource,
)
from azure.ai.ml.entities import Hub, Project, Workspace, WorkspaceConnection

from phi3_pipeline.config.settings import AzureSettings
from phi3_pipeline.targets.azure.clients import delete_if_made_here, found, get_or_create
from phi3_pipeline.targets.base import PlanItem

CUSTOM_KEYS = "CustomKeys"


class CustomKeysConnection(WorkspaceConnection):
    """A Foundry "Custom keys" connection: every key in `keys` is stored as a credential (secret)."""

    def __init__(self, *, name: str, target: str, keys: dict[str, str], tags: dict[str, str]):
        super().__init__(name=name, type="custom", target=target, credentials=None, metadata=tags,
                         from_child=True)
        self._keys = keys

    def _to_rest_object(self) -> WorkspaceConnectionPropertiesV2BasicResource:
        return WorkspaceConnectionPropertiesV2BasicResource(properties=CustomKeysWorkspaceConnectionProperties(
            category=CUSTOM_KEYS, target=self.target, metadata=self.metadata, is_shared_to_all=self.is_shared,
            credentials=CustomKeys(keys_property=self._keys)))


def _get_or_create(resource_group_ml: MLClient, entity: Workspace) -> Workspace:
    return get_or_create(lambda: resource_group_ml.workspaces.get(entity.name),
                         lambda: resource_group_ml.workspaces.begin_create(entity).result())[0]


def ensure_project(resource_group_ml: MLClient, azure: AzureSettings, tags: dict[str, str]) -> Project:
    """The hub (on the ML workspace's own storage account and key vault, so it adds none) and its project."""
    workspace = resource_group_ml.workspaces.get(azure.workspace_name)
    hub = _get_or_create(resource_group_ml, Hub(
        name=azure.hub_name, location=azure.location, resource_group=azure.resource_group, tags=tags,
        storage_account=workspace.storage_account, key_vault=workspace.key_vault))
    return _get_or_create(resource_group_ml, Project(
        name=azure.project_name, hub_id=hub.id, location=azure.location, resource_group=azure.resource_group,
        tags=tags))


OWNER = "owner"  # in a connection's metadata: the endpoint (or serverless endpoint prefix) it was made for


def upsert_custom_connection(project_ml: MLClient, name: str, endpoint: str, key: str | None, contract: str,
                             tags: dict[str, str], owner: str) -> None:
    """SEED.md: keys `endpoint` (the scoring URI) and `key` (the endpoint's primary key, secret; none for a
    token-auth endpoint, whose callers bring a Microsoft Entra token); the scoring contract, which is no secret, and
    the endpoint it is for (`owner`: a teardown of another model's endpoint leaves it) in the connection's metadata
    beside the tags."""
    keys = {"endpoint": endpoint} if key is None else {"endpoint": endpoint, "key": key}
    project_ml.connections.create_or_update(CustomKeysConnection(
        name=name, target=endpoint, keys=keys, tags={**tags, "contract": contract, OWNER: owner}))


def delete_connection(resource_group_ml: MLClient, project_ml: MLClient, azure: AzureSettings,
                      connection_name: str, owner: str) -> str:
    """The project's connection, if this pipeline made it for the endpoint `owner`: once that endpoint is gone its
    key is dead. 'removed', 'gone' or 'kept' (someone else's, or another endpoint's)."""
    if not found(lambda: resource_group_ml.workspaces.get(azure.project_name)):
        return "gone"
    return delete_if_made_here(
        f"Foundry connection {connection_name}", lambda: project_ml.connections.get(connection_name),
        lambda: project_ml.connections.delete(connection_name),
        tags_of=lambda connection: connection.metadata if (connection.metadata or {}).get(OWNER) == owner else None)


def delete_project_and_hub(resource_group_ml: MLClient, azure: AzureSettings) -> list[tuple[str, str]]:
    """The project, then the hub (their shared storage and key vault stay), each only if this pipeline made it:
    [(what, 'removed' | 'gone' | 'kept')]. A workspace is soft-deleted (recoverable for 14 days, its name taken
    meanwhile) unless `azure.purge_foundry` asks for a purge."""
    workspaces = resource_group_ml.workspaces

    def delete_workspace(name: str) -> str:
        return delete_if_made_here(f"Foundry workspace {name}", lambda: workspaces.get(name),
                                   lambda: workspaces.begin_delete(name, delete_dependent_resources=False,
                                                                   permanently_delete=azure.purge_foundry).result())

    return [(f"Foundry project {azure.project_name}", delete_workspace(azure.project_name)),
            (f"Foundry hub {azure.hub_name}", delete_workspace(azure.hub_name))]


def plan(resource_group_ml: MLClient, azure: AzureSettings, connection_name: str) -> list[PlanItem]:
    def item(kind: str, name: str) -> PlanItem:
        exists = found(lambda: resource_group_ml.workspaces.get(name))
        return PlanItem(resource=f"Foundry {kind} {name}", action="reuse" if exists else "create")

    return [item("hub", azure.hub_name), item("project", azure.project_name),
            PlanItem(resource=f"Foundry connection {connection_name} (Custom keys)", action="create or update")]
