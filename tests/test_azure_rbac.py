"""Azure identity and RBAC stage logic through the real management SDK clients, whose HTTP transport
answers from scripted JSON (faults included). Nothing leaves the machine."""

from __future__ import annotations

from urllib.parse import unquote

import pytest
from azure.core.exceptions import HttpResponseError
from azure.mgmt.authorization import AuthorizationManagementClient
from azure.mgmt.msi import ManagedServiceIdentityClient
from tenacity import wait_none

from phi3_pipeline.config.errors import PipelineError
from phi3_pipeline.targets.azure import rbac
from phi3_pipeline.targets.azure.entities import resource_tags, role_assignment_name
from tests.azure_fakes import AZURE, SUB, OfflineCredential, ScriptedTransport, request_json

RG = f"/subscriptions/{SUB}/resourceGroups/rg"
SCOPES = rbac.RoleScopes(
    resource_group=RG,
    workspace=f"{RG}/providers/Microsoft.MachineLearningServices/workspaces/ws",
    storage_account=f"{RG}/providers/Microsoft.Storage/storageAccounts/wsstorage",
    container_registry=f"{RG}/providers/Microsoft.ContainerRegistry/registries/wsacr",
)
IDENTITY = {"id": f"{RG}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/phi3-pipeline-identity",
            "name": "phi3-pipeline-identity", "location": "eastus2",
            "properties": {"principalId": "principal-1", "clientId": "client-1", "tenantId": "tenant-1"}}
NOT_FOUND = (404, {"error": {"code": "ResourceNotFound", "message": "not found"}})
FAST_RETRIES = {"retry_backoff_factor": 0.01, "retry_backoff_max": 0.01}


def role_definitions(request):
    role = unquote(request.url).split("roleName eq '")[1].split("'")[0]
    return 200, {"value": [{"id": f"/providers/Microsoft.Authorization/roleDefinitions/{role}-id",
                            "name": f"{role}-id", "properties": {"roleName": role}}]}


def authorization(handler) -> tuple[AuthorizationManagementClient, ScriptedTransport]:
    transport = ScriptedTransport(handler)
    return AuthorizationManagementClient(OfflineCredential(), SUB, transport=transport, **FAST_RETRIES), transport


def created_assignment(request):
    return 201, {"id": request.url.split("?")[0], "name": request.url.split("/")[-1].split("?")[0],
                 "properties": request_json(request)["properties"]}


@pytest.fixture(autouse=True)
def no_replication_wait(monkeypatch):
    monkeypatch.setattr(rbac._create_assignment.retry, "wait", wait_none())


def test_existing_identity_is_reused_without_a_write():
    transport = ScriptedTransport(lambda request: (200, IDENTITY))
    msi = ManagedServiceIdentityClient(OfflineCredential(), SUB, transport=transport)
    identity, created = rbac.ensure_identity(msi, AZURE, resource_tags("run-1"))
    assert identity.principal_id == "principal-1" and not created
    assert [r.method for r in transport.requests] == ["GET"]


def test_missing_identity_is_created_in_the_region_with_tags():
    transport = ScriptedTransport(lambda request: NOT_FOUND if request.method == "GET" else (201, IDENTITY))
    msi = ManagedServiceIdentityClient(OfflineCredential(), SUB, transport=transport)
    assert rbac.ensure_identity(msi, AZURE, resource_tags("run-1"))[1] is True
    (put,) = transport.calls("PUT", "/userAssignedIdentities/phi3-pipeline-identity")
    body = request_json(put)
    assert body["location"] == "eastus2" and body["tags"]["managed-by"] == "phi3-pipeline"


def test_the_endpoints_roles_are_assigned_at_their_scopes_with_deterministic_names():
    client, transport = authorization(lambda r: role_definitions(r) if r.method == "GET" else created_assignment(r))
    grants = rbac.ensure_roles(client, "principal-1", SCOPES)
    assert [(g.role, g.scope, g.created) for g in grants] == [
        ("Storage Blob Data Reader", SCOPES.storage_account, True),
        ("AcrPull", SCOPES.container_registry, True),
        ("AzureML Metrics Writer (preview)", SCOPES.workspace, True),
    ]
    puts = transport.calls("PUT")
    assert len(puts) == 3
    for grant, put in zip(grants, puts, strict=True):
        assert f"{grant.scope}/providers/Microsoft.Authorization/roleAssignments/{grant.assignment_name}" in put.url
        assert grant.assignment_name == role_assignment_name(grant.scope, grant.role, "principal-1")
        assert request_json(put)["properties"] == {
            "roleDefinitionId": f"/providers/Microsoft.Authorization/roleDefinitions/{grant.role}-id",
            "principalId": "principal-1", "principalType": "ServicePrincipal"}


def test_an_existing_assignment_counts_as_done():
    exists = (409, {"error": {"code": "RoleAssignmentExists", "message": "The role assignment already exists."}})
    client, transport = authorization(lambda r: role_definitions(r) if r.method == "GET" else exists)
    grants = rbac.ensure_roles(client, "principal-1", SCOPES)
    assert [g.created for g in grants] == [False, False, False]
    assert len(transport.calls("PUT")) == 3  # one attempt each, no duplicates


def test_a_new_principal_not_yet_replicated_is_retried_until_it_appears():
    answers = iter([(400, {"error": {"code": "PrincipalNotFound", "message": "Principal does not exist."}})] * 2)

    def handler(request):
        if request.method == "GET":
            return role_definitions(request)
        return next(answers, None) or created_assignment(request)

    client, transport = authorization(handler)
    grants = rbac.ensure_roles(client, "principal-1", SCOPES)
    assert all(g.created for g in grants)
    assert len(transport.calls("PUT")) == 5  # 2 refusals while replicating, then 3 assignments


def test_throttling_and_server_errors_are_retried_by_the_client():
    faults = iter([(429, {"error": {"code": "TooManyRequests"}}, {"Retry-After": "0"}),
                   (503, {"error": {"code": "ServiceUnavailable"}})])

    def handler(request):
        if request.method == "GET":
            return next(faults, None) or role_definitions(request)
        return created_assignment(request)

    client, transport = authorization(handler)
    assert len(rbac.ensure_roles(client, "principal-1", SCOPES)) == 3
    assert len(transport.calls("GET")) == 5  # 2 faults + 3 lookups


def test_a_permission_error_fails_at_once():
    denied = (403, {"error": {"code": "AuthorizationFailed", "message": "no write permission"}})
    client, transport = authorization(lambda r: role_definitions(r) if r.method == "GET" else denied)
    with pytest.raises(HttpResponseError, match="AuthorizationFailed"):
        rbac.ensure_roles(client, "principal-1", SCOPES)
    assert len(transport.calls("PUT")) == 1


def test_an_unknown_role_is_a_clear_error():
    client, _ = authorization(lambda request: (200, {"value": []}))
    with pytest.raises(PipelineError, match="role 'Storage Blob Data Reader' is not visible"):
        rbac.ensure_roles(client, "principal-1", SCOPES)


def test_a_contributor_grant_an_earlier_version_made_is_removed_and_its_absence_is_fine():
    contributor = role_assignment_name(SCOPES.resource_group, "Contributor", "principal-1")
    held = {contributor}

    def handler(request):
        name = request.url.split("?")[0].rsplit("/", 1)[1]
        if name not in held:
            return NOT_FOUND if request.method == "GET" else (204, {})
        if request.method == "DELETE":
            held.discard(name)
        return 200, {"id": request.url.split("?")[0], "name": name, "properties": {}}

    client, transport = authorization(handler)
    assert rbac.remove_unused_roles(client, "principal-1", SCOPES) == ["Contributor"]
    assert rbac.remove_unused_roles(client, "principal-1", SCOPES) == []
    (delete,) = transport.calls("DELETE")
    assert delete.url.split("?")[0].endswith(f"{RG}/providers/Microsoft.Authorization/roleAssignments/{contributor}")
