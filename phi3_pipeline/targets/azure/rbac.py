"""Identity and RBAC on Azure: the user-assigned managed identity and its role assignments.

Get-or-create throughout: the identity is looked up by name, the assignments have deterministic
names, and "already exists" counts as done. A new identity's principal takes a while to replicate;
role assignment creation is retried while Azure answers PrincipalNotFound. Throttling and 5xx are
retried by azure-core's own retry policy inside the clients.
"""

from __future__ import annotations

from dataclasses import dataclass

from azure.core.exceptions import HttpResponseError, ResourceExistsError
from azure.mgmt.authorization import AuthorizationManagementClient
from azure.mgmt.msi import ManagedServiceIdentityClient
from azure.mgmt.msi.models import Identity
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from phi3_pipeline.config.errors import PipelineError
from phi3_pipeline.config.settings import AzureSettings
from phi3_pipeline.targets.azure.clients import SignedInPrincipal, found, get_or_create
from phi3_pipeline.targets.azure.entities import (
    LEASE_ROLE,
    REQUIRED_ROLES,
    SCORING_ROLE,
    UNUSED_ROLES,
    managed_identity,
    role_assignment,
    role_assignment_name,
)

PRINCIPAL_NOT_REPLICATED = "PrincipalNotFound"


@dataclass(frozen=True)
class RoleScopes:
    """The ARM ids the roles apply to."""

    resource_group: str
    workspace: str
    storage_account: str
    container_registry: str | None  # a workspace gets its registry lazily: none until first needed


@dataclass(frozen=True)
class RoleGrant:
    role: str
    scope: str
    assignment_name: str
    created: bool


def ensure_identity(msi: ManagedServiceIdentityClient, azure: AzureSettings,
                    tags: dict[str, str]) -> tuple[Identity, bool]:
    """The user-assigned identity of that name, created (with tags) only if it is missing; (identity, created)."""
    identities = msi.user_assigned_identities
    return get_or_create(lambda: identities.get(azure.resource_group, azure.identity_name),
                         lambda: identities.create_or_update(azure.resource_group, azure.identity_name,
                                                             managed_identity(azure, tags)))


def role_definition_id(authorization: AuthorizationManagementClient, scope: str, role: str) -> str:
    """Look the built-in role up by name at its scope (its id differs between clouds)."""
    found = list(authorization.role_definitions.list(scope, filter=f"roleName eq '{role}'"))
    if not found:
        raise PipelineError(f"Azure role {role!r} is not visible at {scope}: check the subscription and "
                            "that you may read role definitions there")
    return found[0].id


def _principal_not_replicated(error: BaseException) -> bool:
    return (isinstance(error, HttpResponseError) and error.error is not None
            and error.error.code == PRINCIPAL_NOT_REPLICATED)


@retry(retry=retry_if_exception(_principal_not_replicated), wait=wait_exponential_jitter(initial=2, max=30),
       stop=stop_after_attempt(8), reraise=True)
def _create_assignment(authorization: AuthorizationManagementClient, scope: str, name: str,
                       definition_id: str, principal_id: str, principal_type: str | None) -> bool:
    try:
        authorization.role_assignments.create(scope, name, role_assignment(definition_id, principal_id,
                                                                           principal_type))
    except ResourceExistsError:  # RoleAssignmentExists: a previous run (or a person) made it
        return False
    return True


def ensure_signed_in_role(authorization: AuthorizationManagementClient, principal: SignedInPrincipal,
                          scopes: RoleScopes, role: tuple[str, str]) -> RoleGrant:
    """A role the signed-in principal itself needs: SCORING_ROLE (it scores a token-auth endpoint) or LEASE_ROLE
    (it takes the workspace lease)."""
    (grant,) = ensure_roles(authorization, principal.object_id, scopes, required=(role,),
                            principal_type=principal.principal_type)
    return grant


def remove_unused_roles(authorization: AuthorizationManagementClient, principal_id: str,
                        scopes: RoleScopes) -> list[str]:
    """Delete the assignments of UNUSED_ROLES an earlier version made (found by their deterministic names);
    the roles removed ("already gone" is not an error)."""
    removed = []
    for role, scope_field in UNUSED_ROLES:
        scope = getattr(scopes, scope_field)
        name = role_assignment_name(scope, role, principal_id)
        if found(lambda: authorization.role_assignments.get(scope, name)):  # a re-run only reads
            authorization.role_assignments.delete(scope, name)
            removed.append(role)
    return removed


def ensure_roles(authorization: AuthorizationManagementClient, principal_id: str, scopes: RoleScopes,
                 required: tuple[tuple[str, str], ...] = REQUIRED_ROLES,
                 principal_type: str | None = "ServicePrincipal") -> list[RoleGrant]:
    """The `required` (role, scope) granted to the principal; by default the identity's: Storage Blob Data Reader
    on the storage, AcrPull on the registry (skipped while the workspace has no registry: the caller says so and
    grants it later)."""
    grants = []
    for role, scope_field in required:
        scope = getattr(scopes, scope_field)
        if scope is None:
            continue
        name = role_assignment_name(scope, role, principal_id)
        definition_id = role_definition_id(authorization, scope, role)
        created = _create_assignment(authorization, scope, name, definition_id, principal_id, principal_type)
        grants.append(RoleGrant(role=role, scope=scope, assignment_name=name, created=created))
    return grants
