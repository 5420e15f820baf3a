"""The catalog model, read from the `azureml` registry through the real registry MLClient (its discovery call
included) against tests/azure_fakes.FakeRegistry, which serves every metadata shape: a current model (Phi-4 v8
with system_metadata and no compute tags, or with its properties only), a retired and archived one
(Phi-3-mini-4k-instruct, system_metadata and tags) and a deprecated one (tags)."""

from __future__ import annotations

import warnings
from datetime import date

import pytest
from azure.ai.ml import MLClient

from phi3_pipeline.config.errors import ConfigError
from phi3_pipeline.config.settings import AzureTrainingSettings
from phi3_pipeline.targets.azure import catalog
from tests.azure_fakes import AZURE, PHI4_COMPUTES, FakeArm, OfflineCredential, ScriptedTransport, phi4_entry

warnings.filterwarnings("ignore", message=".*experimental")
TODAY = date(2026, 11, 25)


@pytest.fixture
def registry(arm: FakeArm) -> tuple[MLClient, ScriptedTransport]:
    transport = ScriptedTransport(arm)
    return MLClient(OfflineCredential(), registry_name="azureml", transport=transport,
                    retry_backoff_factor=0.01), transport


def resolve(registry_ml: MLClient, **azure) -> catalog.CatalogModel:
    return catalog.resolve(registry_ml, AZURE.model_copy(update=azure), TODAY)


def test_the_default_is_phi4_pinned_to_its_newest_active_version_read_only(registry):
    registry_ml, transport = registry
    model = resolve(registry_ml)
    assert (model.name, model.version) == ("Phi-4", "8"), "v7 is archived"
    assert model.asset_id == "azureml://registries/azureml/models/Phi-4/versions/8"
    assert "Standard_NC24ads_A100_v4" in model.finetune_computes
    assert "Standard_NC40ads_H100_v5" in model.inference_computes
    assert model.defaults["learning_rate"] == "5e-6" and model.deprecations(TODAY) == []
    assert model.sources["finetune computes"] == "system metadata (supportedComputes.finetuneComputes)"
    assert {r.method for r in transport.requests} == {"GET"}


def test_catalog_properties_phi4_v8_read_without_system_metadata_is_planned_with_its_property_skus(registry, arm):
    """The likely first-run shape: the registry read returns no system metadata and the compute tags are gone."""
    arm.registry.add("Phi-4", "8", phi4_entry("properties"))
    model = resolve(registry[0])
    assert model.refusal(TODAY) is None and model.finetune_computes == tuple(PHI4_COMPUTES)
    assert model.finetune_tasks == ("chat-completion",)
    assert model.inference_computes == tuple(PHI4_COMPUTES)
    assert model.sources == {"finetune computes": "properties (finetune-recommended-sku)",
                             "inference computes": "the fine-tuning computes (none named for it)",
                             "fine-tuning tasks": "properties (finetuning-tasks)", "lifecycle dates": "nowhere"}


def entry(**places) -> dict:
    return {"id": "azureml://registries/azureml/models/M/versions/1", "properties": places}


def test_catalog_properties_each_fact_comes_from_the_first_place_that_has_it():
    model = catalog.read_model(entry(
        systemMetadata={"supportedComputes": {"inferenceComputes": ["Standard_S"]}},
        properties={"finetune-recommended-sku": "Standard_P1, Standard_P2", "inference-recommended-sku": "Standard_X",
                    "finetuning-tasks": "chat-completion"},
        tags={"finetune_compute_allow_list": "[Standard_T]", "FinetuneRetirementDate": "2099-01-01"}), "azureml")
    assert (model.finetune_computes, model.inference_computes) == (("Standard_P1", "Standard_P2"), ("Standard_S",))
    assert model.sources == {"finetune computes": "properties (finetune-recommended-sku)",
                             "inference computes": "system metadata (supportedComputes.inferenceComputes)",
                             "fine-tuning tasks": "properties (finetuning-tasks)", "lifecycle dates": "tags"}
    assert model.dates["finetune_retirement"] == date(2099, 1, 1)


def test_catalog_properties_a_model_with_its_facts_nowhere_is_refused_naming_where_it_looked():
    message = catalog.read_model(entry(properties={"finetuning-tasks": "chat-completion"}), "azureml").refusal(TODAY)
    assert "M v1 lists no managed compute to fine-tune on" in message
    assert "system metadata supportedComputes.finetuneComputes; properties finetune-recommended-sku; tags " \
           "finetune_compute_allow_list" in message


@pytest.mark.parametrize("place", ["systemMetadata", "tags"])
def test_a_model_in_the_legacy_stage_gets_a_warning_as_a_deprecated_one_does(place):
    dates = ({"deprecation": {"inferenceLegacyDate": "2026-06-09T00:00:00.000000Z",
                              "inferenceRetirementDate": "2027-03-01T00:00:00.000000Z"}}
             if place == "systemMetadata" else {"InferenceLegacyDate": "2026-06-09",
                                                "InferenceRetirementDate": "2027-03-01"})
    model = catalog.read_model(entry(**{place: dates, "properties": {"finetuning-tasks": "chat-completion",
                                                                      "finetune-recommended-sku": "Standard_P"}}),
                               "azureml")
    assert model.refusal(TODAY) is None
    assert model.deprecations(TODAY) == ["M v1 is in the Legacy stage for inference since 2026-06-09, retires "
                                         "2027-03-01"]


@pytest.mark.parametrize("version", ["15", "14"], ids=["system_metadata", "tags"])
def test_a_retired_model_is_refused_in_either_shape_naming_dates_and_what_can_be_fine_tuned(registry, version):
    registry_ml, _ = registry
    with pytest.raises(ConfigError) as refused:
        resolve(registry_ml, base_model="Phi-3-mini-4k-instruct", base_model_version=version)
    message = str(refused.value)
    assert f"Phi-3-mini-4k-instruct v{version}" in message
    assert "retired for fine-tuning on 2025-08-30 and retired for inference on 2025-08-30" in message
    assert ("archived" in message) is (version == "15")
    assert "can be fine-tuned now: Phi-4 (v8)" in message and "Llama" not in message
    assert "Phi-legacy-test (v2)" in message, "deprecated is not retired: it can still be fine-tuned"


def test_the_newest_active_version_of_a_retired_model_is_refused_too(registry):
    with pytest.raises(ConfigError, match="Phi-3-mini-4k-instruct v14 is retired for fine-tuning"):
        resolve(registry[0], base_model="Phi-3-mini-4k-instruct")  # v15 is archived: v14 is the newest active


def test_an_archived_version_of_a_current_model_is_refused(registry):
    with pytest.raises(ConfigError, match="Phi-4 v7 is archived in the registry"):
        resolve(registry[0], base_model_version="7")


def test_an_unknown_model_and_a_missing_version_are_clear_errors(registry):
    registry_ml, _ = registry
    with pytest.raises(ConfigError, match="azure.base_model Phi-9 in registry azureml: no such model; models of "
                                          "that family that can be fine-tuned now: Phi-4"):
        resolve(registry_ml, base_model="Phi-9")
    with pytest.raises(ConfigError, match="azure.base_model_version 99 of Phi-4 does not exist .* versions: 7, 8"):
        resolve(registry_ml, base_model_version="99")


def test_a_deprecated_model_resolves_with_a_warning(registry):
    model = resolve(registry[0], base_model="Phi-legacy-test")
    assert model.deprecations(TODAY) == ["Phi-legacy-test v2 is deprecated for fine-tuning since 2026-01-15, "
                                         "retires 2099-01-15"]


def test_hyperparameters_default_to_the_models_own_and_a_learning_rate_is_range_checked(registry):
    registry_ml, _ = registry
    phi4 = resolve(registry_ml)
    assert catalog.hyperparameters(phi4, AzureTrainingSettings()) == {
        "learning_rate": "5e-6", "lr_scheduler_type": "cosine", "num_train_epochs": "1",
        "per_device_train_batch_size": "1"}
    assert catalog.hyperparameters(phi4, AzureTrainingSettings(learning_rate=0.005, epochs=2))["learning_rate"] == \
        "0.005", "Phi-4 publishes no range"
    legacy = resolve(registry_ml, base_model="Phi-legacy-test")
    assert catalog.hyperparameters(legacy, AzureTrainingSettings(learning_rate=1e-4))["learning_rate"] == "0.0001"
    with pytest.raises(ConfigError, match="azure.training.learning_rate 0.005 is outside Phi-legacy-test v2's range "
                                          "2e-06 to 0.0002"):
        catalog.hyperparameters(legacy, AzureTrainingSettings(learning_rate=0.005))


@pytest.mark.parametrize(("text", "items"), [
    ("[ Standard_A,\n Standard_B, ]", ("Standard_A", "Standard_B")),
    ('["Standard_A", "Standard_B"]', ("Standard_A", "Standard_B")),
    ("Standard_A, Standard_B", ("Standard_A", "Standard_B")),
    (["Standard_A"], ("Standard_A",)),
    ("", ()),
])
def test_compute_lists_are_read_in_every_shape_the_registry_has_used(text, items):
    assert catalog._as_list(text) == items
