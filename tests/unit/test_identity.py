import pytest

from spotguard.errors import IdentityError
from spotguard.sources.identity import (
    concerns,
    parse_vm_resource_id,
    same_resource_id,
    vm_name_from_compute,
    vm_name_from_provider_id,
)

SUB = "8d5e2f0a-1b3c-4d5e-9f60-7a8b9c0d1e2f"


@pytest.mark.parametrize(
    ("provider_id", "expected"),
    [
        # AKS uniform scale set, as written by the Azure cloud provider
        (
            f"azure:///subscriptions/{SUB}/resourceGroups/MC_ml-prod_kfp-aks_westeurope"
            "/providers/Microsoft.Compute/virtualMachineScaleSets/aks-spot-12345678-vmss"
            "/virtualMachines/3",
            "aks-spot-12345678-vmss_3",
        ),
        # node resource groups appear lower-cased on many clusters
        (
            f"azure:///subscriptions/{SUB}/resourceGroups/mc_ml-prod_kfp-aks_westeurope"
            "/providers/Microsoft.Compute/virtualMachineScaleSets/aks-spotcpu2d2as-24469130-vmss"
            "/virtualMachines/1",
            "aks-spotcpu2d2as-24469130-vmss_1",
        ),
        # all-lower-case segment names, as some tools write them
        (
            f"azure:///subscriptions/{SUB}/resourcegroups/mc_rg_c_uksouth/providers"
            "/microsoft.compute/virtualmachinescalesets/aks-gpu-31415926-vmss/virtualmachines/42",
            "aks-gpu-31415926-vmss_42",
        ),
        # a standalone VM (availability-set pools, VMSS Flex)
        (
            f"azure:///subscriptions/{SUB}/resourceGroups/MC_rg_c_eastus/providers"
            "/Microsoft.Compute/virtualMachines/aks-flex-27182818-vm0",
            "aks-flex-27182818-vm0",
        ),
        # a bare resource id works as well
        (
            f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute"
            "/virtualMachineScaleSets/ss/virtualMachines/0",
            "ss_0",
        ),
    ],
)
def test_provider_id_to_imds_name(provider_id: str, expected: str) -> None:
    assert vm_name_from_provider_id(provider_id) == expected


@pytest.mark.parametrize(
    "provider_id",
    [
        "",
        "kind://docker/kind/kind-control-plane",
        "aws:///eu-west-1a/i-0123456789abcdef0",
        f"azure:///subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Network/x/y",
        f"azure:///subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute"
        "/virtualMachineScaleSets/ss",
    ],
)
def test_not_a_vm_provider_id(provider_id: str) -> None:
    with pytest.raises(IdentityError, match="not an Azure VM resource id"):
        vm_name_from_provider_id(provider_id)


def test_resource_ids_compare_case_insensitively() -> None:
    node = (
        f"azure:///subscriptions/{SUB}/resourceGroups/MC_ml-prod_kfp-aks_westeurope"
        "/providers/Microsoft.Compute/virtualMachineScaleSets/aks-spot-12345678-vmss"
        "/virtualMachines/3"
    )
    imds = (
        f"/subscriptions/{SUB.upper()}/resourceGroups/mc_ml-prod_kfp-aks_westeurope"
        "/providers/Microsoft.Compute/virtualMachineScaleSets/AKS-SPOT-12345678-VMSS"
        "/virtualMachines/3"
    )
    assert same_resource_id(node, imds)
    assert not same_resource_id(node, imds.replace("/virtualMachines/3", "/virtualMachines/4"))
    ident = parse_vm_resource_id(node)
    assert same_resource_id(ident.resource_id, node)


@pytest.mark.parametrize(
    ("compute", "expected"),
    [
        (
            {
                "name": "aks-spot-12345678-vmss_3",
                "vmScaleSetName": "aks-spot-12345678-vmss",
                "osProfile": {"computerName": "aks-spot-12345678-vmss000003"},
                "priority": "Spot",
            },
            "aks-spot-12345678-vmss_3",
        ),
        ({"name": " standalone-vm "}, "standalone-vm"),
    ],
)
def test_vm_name_from_instance_metadata(compute: dict[str, object], expected: str) -> None:
    assert vm_name_from_compute(compute) == expected


@pytest.mark.parametrize("compute", [{}, {"name": ""}, {"name": 3}])
def test_instance_metadata_without_name(compute: dict[str, object]) -> None:
    with pytest.raises(IdentityError):
        vm_name_from_compute(compute)


def test_event_resources_match_case_insensitively() -> None:
    assert concerns(("FrontEnd_IN_0", "AKS-SPOT-12345678-VMSS_3"), "aks-spot-12345678-vmss_3")
    assert not concerns(("aks-spot-12345678-vmss_31",), "aks-spot-12345678-vmss_3")
    assert not concerns((), "aks-spot-12345678-vmss_3")
