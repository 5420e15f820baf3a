"""Configuration: precedence, validation before any work, and the CLI's one-line errors."""

import pytest

from phi3_pipeline.cli.commands import load_settings
from phi3_pipeline.config.errors import ConfigError
from phi3_pipeline.config.settings import PipelineSettings
from phi3_pipeline.targets import get_target


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in [n for n in __import__("os").environ if n.startswith("PHI3_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_defaults_run_locally_offline():
    settings = PipelineSettings()
    assert settings.target == "local"
    assert settings.dataset.source == "builtin:ultrachat-sample"
    assert settings.training.base_model == "builtin:tiny-phi3"


def test_file_then_env_then_cli_precedence(tmp_path, monkeypatch):
    (tmp_path / "phi3-pipeline.toml").write_text(
        "question = 'from file'\n[training]\nepochs = 2\nlearning_rate = 0.01\nbatch_size = 4\n"
    )
    monkeypatch.setenv("PHI3_TRAINING__EPOCHS", "3")
    monkeypatch.setenv("PHI3_TRAINING__LEARNING_RATE", "0.02")
    settings = load_settings(["--training.learning_rate", "0.03"], "test")
    assert settings.question == "from file"          # file over default
    assert settings.training.batch_size == 4          # file value kept beside env/CLI in the same section
    assert settings.training.epochs == 3              # env over file
    assert settings.training.learning_rate == 0.03    # CLI over env


def test_a_deployment_run_from_the_ui_form_keeps_the_workers_file_and_environment(tmp_path, monkeypatch):
    """The UI's Custom run form sends every field, defaults included: what the user changed wins, the rest comes
    from phi3-pipeline.toml and PHI3_* where the run executes (not from the defaults the form showed)."""
    from flows.full_pipeline import full_pipeline
    from tasks.workspace_lock import settings_of_this_run

    form = PipelineSettings().model_dump(mode="json")  # what the form shows and sends back untouched
    form["training"]["epochs"] = 3  # the one field the user changed
    (tmp_path / "phi3-pipeline.toml").write_text("question = 'from the worker file'\n")
    monkeypatch.setenv("PHI3_LOCAL__WORKSPACE_DIR", str(tmp_path / "worker-ws"))
    monkeypatch.setenv("PHI3_DATASET__SAMPLE_SIZE", "300")
    given = full_pipeline.validate_parameters({"settings": form})["settings"]  # as Prefect hands it to the flow
    assert given.local.workspace_dir.name == ".phi3_workspace", "the form's defaults hide the worker's settings"

    settings = settings_of_this_run(given, from_a_deployment=True)
    assert settings.training.epochs == 3
    assert settings.local.workspace_dir == tmp_path / "worker-ws" and settings.dataset.sample_size == 300
    assert settings.question == "from the worker file"

    assert settings_of_this_run(given, from_a_deployment=False) is given  # the command line: as given


def test_explicit_config_file_and_missing_one(tmp_path):
    config = tmp_path / "other.toml"
    config.write_text("model_name = 'my-model'\n")
    assert load_settings(["--config", str(config)], "test").model_name == "my-model"
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(["--config", str(tmp_path / "absent.toml")], "test")


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--training.learning_rate", "-1"], "training.learning_rate"),
        (["--training.lr_scheduler_type", "sawtooth"], "training.lr_scheduler_type"),
        (["--dataset.test_fraction", "1.5"], "dataset.test_fraction"),
        (["--local.port", "70000"], "local.port"),
        (["--training.base_model", "/no/such/checkpoint"], "training"),
    ],
)
def test_invalid_values_are_rejected_naming_the_field(argv, field):
    with pytest.raises(ConfigError) as error:
        load_settings(argv, "test")
    assert f"{field}:" in str(error.value)
    assert "\n" not in str(error.value)


def test_bad_env_value_is_rejected(monkeypatch):
    monkeypatch.setenv("PHI3_TRAINING__EPOCHS", "zero")
    with pytest.raises(ConfigError, match="training.epochs"):
        load_settings([], "test")


def test_the_azure_target_needs_its_workspace_and_makes_no_request_until_used():
    with pytest.raises(ConfigError, match="azure.subscription_id"):
        load_settings(["--target", "azure"], "test")
    settings = load_settings(
        ["--target", "azure", "--azure.subscription_id", "s", "--azure.resource_group", "g",
         "--azure.workspace_name", "w", "--azure.location", "eastus2"], "test")
    target = get_target(settings)
    assert target.name == "azure" and "clients" not in vars(target)  # signs in on first use only


def test_a_renamed_azure_setting_names_its_successor(tmp_path):
    from phi3_pipeline.cli.commands import load_settings
    from phi3_pipeline.config.errors import ConfigError

    old = tmp_path / "old.toml"
    old.write_text('[azure]\nfinetune_model = "azureml://registries/azureml/models/Phi-3-mini-4k-instruct/labels/'
                   'latest"\nprobe_initial_delay_s = 600\n')
    with pytest.raises(ConfigError, match="azure.finetune_model: no such setting any more; use azure.base_model.*"
                                          "azure.probe_initial_delay_s: no such setting any more; use "
                                          "azure.cold_start_s"):
        load_settings(["--config", str(old)], "x")


def test_the_ui_form_shows_no_command_line_option():
    """`config`, `verbose`, `older_than_hours` and the web chat's `ui`, `ui_port` belong to the command line; the
    flow's form holds the run's settings only (the teardown flow takes `older_than_hours` as its own parameter)."""
    from flows.full_pipeline import full_pipeline
    from phi3_pipeline.cli.options import COMMAND_ONLY

    assert COMMAND_ONLY == {"config", "verbose", "older_than_hours", "ui", "ui_port"}
    form = full_pipeline.parameters.model_dump()["definitions"]["PipelineSettings"]["properties"]
    assert COMMAND_ONLY.isdisjoint(form) and "target" in form


def test_the_smoke_chats_summary_line_is_one_line_whatever_the_answers_hold():
    """A model's answer may hold line breaks: the run summary's row for the stage stays one line, each front end
    named (a multi-line answer once cut the row after the first front end's answer)."""
    from tasks.smoke_chat import SmokeChat

    label = SmokeChat(answers={"promptflow": "Microsoft\n\nwas founded\tby", "agent_framework": "Bill\r\nGates"}).label
    assert label == "Prompt flow answered: Microsoft was founded by; Agent Framework answered: Bill Gates"
