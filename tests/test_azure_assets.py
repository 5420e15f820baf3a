"""Azure cluster and model registration through the real MLClient against an in-memory Resource Manager."""

from __future__ import annotations

import warnings

from targets.azure import assets
from targets.azure.entities import resource_tags
from tests.azure_fakes import AZURE, request_json

warnings.filterwarnings("ignore", message=".*experimental")
TAGS = resource_tags("run-1")


def test_the_cluster_is_created_once_with_the_tutorials_settings(cloud):
    ml_client, transport = cloud
    cluster, created = assets.ensure_cluster(ml_client, AZURE, TAGS)
    assert created
    assert (cluster.size, cluster.min_instances, cluster.max_instances) == ("Standard_NC24ads_A100_v4", 0, 1)
    assert cluster.idle_time_before_scale_down == 120
    assert assets.ensure_cluster(ml_client, AZURE, TAGS)[1] is False
    assert len(transport.calls("PUT", "/computes/")) == 1


def test_a_job_output_registers_once_and_a_new_job_gets_the_next_version(cloud):
    ml_client, transport = cloud
    first, created = assets.register_job_output(ml_client, "phi3-custom", "phi3-custom-ft-aaa", TAGS)
    assert created and first.version == "1" and first.type == "mlflow_model"
    (put,) = transport.calls("PUT", "/models/phi3-custom/versions/1")
    assert request_json(put)["properties"]["modelUri"] == "azureml://jobs/phi3-custom-ft-aaa/outputs/registered_model"
    again, created = assets.register_job_output(ml_client, "phi3-custom", "phi3-custom-ft-aaa", TAGS)
    assert (again.version, created) == ("1", False)
    second, created = assets.register_job_output(ml_client, "phi3-custom", "phi3-custom-ft-bbb", TAGS)
    assert (second.version, created) == ("2", True)
    assert len(transport.calls("PUT", "/models/")) == 2
