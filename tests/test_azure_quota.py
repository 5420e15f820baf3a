"""Azure GPU quota preflight through the real MLClient over a scripted offline transport."""

from __future__ import annotations

import warnings

import pytest
from azure.ai.ml import MLClient

from pipeline.errors import InsufficientResourcesError, PipelineError
from targets.azure.quota import vcpu_checks
from targets.base import raise_if_short
from tests.azure_fakes import AZURE, VM_SIZES, ScriptedTransport, offline_ml_client, vcpu_usages

warnings.filterwarnings("ignore", message=".*experimental")
SIZES = {"value": VM_SIZES}


def client(usage_body: dict, sizes: dict = SIZES) -> tuple[MLClient, ScriptedTransport]:
    def handler(request):
        if "/vmSizes" in request.url:
            return 200, sizes
        if "/usages" in request.url:
            return 200, usage_body
        return 404, {"error": {"code": "NotFound", "message": request.url}}

    return offline_ml_client(handler)


def test_the_tutorials_24_core_quotas_are_enough():
    ml_client, transport = client(vcpu_usages(0, 24, 0, 24))
    checks = vcpu_checks(ml_client, AZURE)
    assert [(c.needed, c.available) for c in checks] == [(24, 24), (12, 24)]  # 6 vCPUs x1, doubled for updates
    raise_if_short(checks)
    assert all(r.method == "GET" for r in transport.requests)  # read calls only


def test_short_quota_names_family_cores_region_and_where_to_ask():
    ml_client, _ = client(vcpu_usages(0, 0, 6, 12))
    with pytest.raises(InsufficientResourcesError) as error:
        raise_if_short(vcpu_checks(ml_client, AZURE))
    message = str(error.value)
    assert "standardNCADSA100v4Family vCPUs in eastus2" in message and "short by 24 vCPUs" in message
    assert "standardNCSv3Family vCPUs in eastus2" in message and "need 12, free 6" in message
    assert "Quotas > Machine learning" in message


def test_a_vm_size_the_region_does_not_offer_is_a_clear_error():
    ml_client, _ = client(vcpu_usages(0, 24, 0, 24), sizes={"value": SIZES["value"][1:]})
    with pytest.raises(PipelineError, match="Standard_NC24ads_A100_v4 is not offered in eastus2"):
        vcpu_checks(ml_client, AZURE)
