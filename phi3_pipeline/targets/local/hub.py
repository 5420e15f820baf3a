"""Base models named by a Hugging Face Hub id (`microsoft/Phi-4-mini-instruct`): resolved to a commit, which is
part of the fine-tune job's identity, and kept in the Hugging Face cache.

Online, the Hub says which commit a revision names (a branch moves; a commit is pinned) and how large its weights
are, before anything is downloaded. Offline (`HF_HUB_OFFLINE`, or the Hub cannot be reached), the cache says it:
`refs/<revision>` and `snapshots/<commit>/`, as `hf download` leaves them. A model that is missing, gated, or not
in the cache while offline is one ConfigError naming training.base_model. Anyone may read a gated model's info
(its `gated` field says it is gated), so the Hub's auth check says whether this token may download it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx2
from huggingface_hub import HfApi, constants, is_offline_mode, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from phi3_pipeline.config.errors import ConfigError, TransientError
from phi3_pipeline.targets.local.machine import checkpoint_bytes

DEFAULT_REVISION = "main"
# the files of a checkpoint that are downloaded (its config, tokenizer, chat template and safetensors weights)
SAFETENSORS = ".safetensors"
CHECKPOINT_PATTERNS = ["*.json", f"*{SAFETENSORS}", "*.model", "*.jinja", "*.txt", "*.py"]


@dataclass(frozen=True)
class HubModel:
    """A Hub model at one commit; `snapshot` is its folder in the cache once there."""

    repo_id: str
    commit: str
    weight_bytes: int
    snapshot: Path | None

    @property
    def identity(self) -> str:
        return f"{self.repo_id}@{self.commit}"


def _named(repo_id: str, revision: str) -> str:
    return f"training.base_model {repo_id}" + (f" (training.base_model_revision {revision})" if revision else "")


def _refusal(named: str, repo_id: str, error: RepositoryNotFoundError) -> ConfigError:
    """What to do about a model the Hub will not give this token: asked before any work, and again if the download
    is refused (access lost since), where retrying would not help."""
    if isinstance(error, GatedRepoError):
        return ConfigError(f"{named} is gated: accept its terms at {constants.ENDPOINT}/{repo_id} and sign in "
                           "(`hf auth login`, or HF_TOKEN)")
    return ConfigError(f"{named} is not on the Hugging Face Hub (or it is private: sign in with "
                       "`hf auth login`, or HF_TOKEN)")


def _cached(repo_id: str, revision: str) -> Path | None:
    try:
        return Path(snapshot_download(repo_id, revision=revision or DEFAULT_REVISION, local_files_only=True,
                                      allow_patterns=CHECKPOINT_PATTERNS))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, FileNotFoundError):
        return None


def cache_dir() -> Path:
    """Where models are downloaded to (HF_HUB_CACHE, or HF_HOME/hub, or ~/.cache/huggingface/hub)."""
    return Path(constants.HF_HUB_CACHE)


def resolve(repo_id: str, revision: str = "") -> HubModel:
    """The commit `revision` (default: main) names and its weights' size: asked of the Hub, or read from the cache
    when offline. ConfigError for a missing or gated model, or for one not cached while offline."""
    named = _named(repo_id, revision)
    if not is_offline_mode():
        api = HfApi()
        try:
            info = api.model_info(repo_id, revision=revision or None, files_metadata=True)
            if info.gated:
                api.auth_check(repo_id)
        except RevisionNotFoundError:
            raise ConfigError(f"{named}: no such revision on the Hugging Face Hub") from None
        except RepositoryNotFoundError as error:
            raise _refusal(named, repo_id, error) from None
        except (httpx2.TransportError, OfflineModeIsEnabled):
            pass  # no network: the cache answers
        else:
            weights = [sibling.size or 0 for sibling in info.siblings or () if sibling.rfilename.endswith(SAFETENSORS)]
            if not weights:
                raise ConfigError(f"{named} has no safetensors weights on the Hugging Face Hub (the only kind "
                                  "downloaded): choose another model or a local folder")
            return HubModel(repo_id, info.sha, sum(weights), _cached(repo_id, info.sha))
    snapshot = _cached(repo_id, revision)
    if snapshot is None:
        why = "HF_HUB_OFFLINE is set" if is_offline_mode() else "the Hugging Face Hub cannot be reached"
        raise ConfigError(f"{named} is not in the Hugging Face cache ({cache_dir()}) and {why}: download "
                          f"it where there is a network (`hf download {repo_id}"
                          f"{' --revision ' + revision if revision else ''}`) into that cache")
    return HubModel(repo_id, snapshot.name, checkpoint_bytes(snapshot), snapshot)


def download(model: HubModel) -> Path:
    """The model's folder in the cache at its commit, with the Hub's progress bars for what is missing (online,
    the Hub's own download also completes a folder an interrupted download left); offline, the cached folder.
    ConfigError when the Hub refuses the model (access lost, or the model deleted, since resolve), as
    retrying would not help; TransientError otherwise."""
    if is_offline_mode() and model.snapshot is not None:
        return model.snapshot
    try:
        return Path(snapshot_download(model.repo_id, revision=model.commit, allow_patterns=CHECKPOINT_PATTERNS))
    except RepositoryNotFoundError as error:
        raise _refusal(_named(model.repo_id, ""), model.repo_id, error) from None
    except (httpx2.TransportError, HfHubHTTPError) as error:
        raise TransientError(f"downloading {model.identity} from the Hugging Face Hub failed ({error}); what was "
                             "downloaded is kept, and the next try goes on from there") from None
