"""Signing in to Azure and making the SDK clients: the one place the Azure target's clients are made.

Tests replace `connect` to hand the target real SDK clients whose HTTP transport answers offline.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import TypeVar

from azure.ai.ml import MLClient
from azure.core.credentials import TokenCredential
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError
from azure.core.polling.base_polling import OperationFailed
from azure.identity import DefaultAzureCredential
from azure.mgmt.authorization import AuthorizationManagementClient
from azure.mgmt.msi import ManagedServiceIdentityClient
from azure.storage.blob import BlobServiceClient
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential_jitter

from phi3_pipeline.chat_flow.scoring_contract import SCORING_TOKEN_SCOPE
from phi3_pipeline.config.errors import ConfigError, PipelineError
from phi3_pipeline.config.settings import AzureSettings
from phi3_pipeline.targets.azure.entities import made_here

T = TypeVar("T")
ARM_SCOPE = "https://management.azure.com/.default"
SIGN_IN_HELP = (
    "no Azure sign-in works on this machine: run `az login` (and `az account set --subscription "
    "{subscription}`), or set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET for a service "
    "principal, or run where a managed identity is assigned. First reason given: {reason}"
)


@dataclass(frozen=True)
class AzureClients:
    """The clients of one workspace: ML (workspace, Foundry project and resource-group scope), identities,
    role assignments, the model-catalog registry, and Blob Storage for the workspace lease (by account URL,
    signed in as the user: no account key). Making them sends no request (the registry client, which looks its
    registry up when made, is made on first use)."""

    ml: MLClient
    project_ml: MLClient
    resource_group_ml: MLClient
    msi: ManagedServiceIdentityClient
    authorization: AuthorizationManagementClient
    make_registry_ml: Callable[[], MLClient]
    make_blob_service: Callable[[str], BlobServiceClient]
    credential: TokenCredential  # the sign-in, for a token-auth endpoint's scoring tokens

    @cached_property
    def registry_ml(self) -> MLClient:
        return self.make_registry_ml()


@dataclass(frozen=True)
class SignedInPrincipal:
    """Who the pipeline signed in as: a user, a service principal or a managed identity."""

    object_id: str
    principal_type: str | None  # "User" or "ServicePrincipal"; None: not said, Azure works it out


def signed_in_principal(credential: TokenCredential) -> SignedInPrincipal:
    """Read from the claims of the sign-in's own Resource Manager token (`oid`, and `idtyp` where the token has
    it); the token is the credential's own, so its signature is not checked here."""
    payload = credential.get_token(ARM_SCOPE).token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return SignedInPrincipal(object_id=claims["oid"],
                             principal_type={"user": "User", "app": "ServicePrincipal"}.get(claims.get("idtyp")))


def scoring_token(credential: TokenCredential) -> str:
    """A Microsoft Entra token for a token-auth online endpoint (audience https://ml.azure.com)."""
    return credential.get_token(SCORING_TOKEN_SCOPE).token


def sign_in(azure: AzureSettings, credential: TokenCredential | None = None) -> TokenCredential:
    """DefaultAzureCredential (az login, environment, managed identity), proven by asking for one token,
    so that a missing sign-in is one clear error before anything else happens."""
    credential = credential or DefaultAzureCredential()
    try:
        credential.get_token(ARM_SCOPE)
    except ClientAuthenticationError as error:
        reason = (str(error.message or error).strip().splitlines() or ["unknown"])[0]
        raise ConfigError(SIGN_IN_HELP.format(subscription=azure.subscription_id, reason=reason)) from None
    return credential


def make_clients(azure: AzureSettings, credential: TokenCredential, storage_options: dict | None = None,
                 **client_options) -> AzureClients:
    """`client_options` go to every client (azure-core pipeline options such as `transport`), `storage_options`
    to Blob Storage's instead where given (another service: tests answer it with another fake)."""
    scope = (azure.subscription_id, azure.resource_group)
    return AzureClients(
        ml=MLClient(credential, *scope, azure.workspace_name, **client_options),
        project_ml=MLClient(credential, *scope, azure.project_name, **client_options),
        resource_group_ml=MLClient(credential, *scope, **client_options),
        msi=ManagedServiceIdentityClient(credential, azure.subscription_id, **client_options),
        authorization=AuthorizationManagementClient(credential, azure.subscription_id, **client_options),
        make_registry_ml=lambda: MLClient(credential, registry_name=azure.registry_name, **client_options),
        make_blob_service=lambda account_url: BlobServiceClient(account_url, credential,
                                                                **(storage_options or client_options)),
        credential=credential,
    )


def connect(azure: AzureSettings) -> AzureClients:
    return make_clients(azure, sign_in(azure))


def found(call: Callable[[], object]) -> bool:
    """Make a read or delete call; False if Azure answered "not found" (for a delete: already gone)."""
    try:
        call()
    except ResourceNotFoundError:
        return False
    return True


# How long a write waits out a busy resource, and the backoff between tries (tests shorten them).
BUSY_RETRY = {"first_wait_s": 5.0, "max_wait_s": 60.0, "total_s": 900.0}


def _busy(error: BaseException) -> bool:
    """409 (an operation in progress: a deployment still Creating, Updating or Deleting) or a long-running
    operation that ended Failed or Canceled (azure-core raises it from OperationFailed, with the poll's 200):
    what Azure's troubleshooting guide for online endpoints says to retry later."""
    return isinstance(error, HttpResponseError) and (error.status_code == 409
                                                      or isinstance(error.__cause__, OperationFailed))


def when_not_busy(what: str, call: Callable[[], T]) -> T:
    """Make a write (a delete) that a busy resource refuses for now, retrying with backoff for a bounded time;
    then one PipelineError naming the resource, its state and what to run."""
    retrying = Retrying(retry=retry_if_exception(_busy), reraise=True,
                        wait=wait_exponential_jitter(initial=BUSY_RETRY["first_wait_s"], max=BUSY_RETRY["max_wait_s"]),
                        stop=stop_after_delay(BUSY_RETRY["total_s"]))
    try:
        return retrying(call)
    except HttpResponseError as error:
        if not _busy(error):
            raise
        reason = error.error.message if error.error and error.error.message else str(error.message).splitlines()[0]
        raise PipelineError(f"{what} is still busy after {BUSY_RETRY['total_s']:g} s ({reason}); it may still "
                            "bill: run the teardown again later (python -m flows.teardown)") from None


def delete_if_made_here(what: str, get: Callable[[], object], delete: Callable[[], object],
                        tags_of: Callable[[object], dict | None] = lambda resource: resource.tags) -> str:
    """Delete what `get` finds only if this pipeline made it (its `managed-by` tag): 'removed', 'gone' (nothing
    there) or 'kept' (adopted by name: someone else's)."""
    try:
        resource = get()
    except ResourceNotFoundError:
        return "gone"
    if not made_here(tags_of(resource)):
        return "kept"
    return "removed" if when_not_busy(what, lambda: found(delete)) else "gone"


def get_or_create(get: Callable[[], T], create: Callable[[], T]) -> tuple[T, bool]:
    """What `get` finds, else what `create` makes (only on "not found"); (resource, created)."""
    try:
        return get(), False
    except ResourceNotFoundError:
        return create(), True
