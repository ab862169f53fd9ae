"""Instance metadata (``/metadata/instance``) of a simulated VM, by api-version.

Values are those of an AKS spot VMSS instance; every primitive is a string and a missing value is
``""``, as in Azure's answers.
"""

from __future__ import annotations

import uuid
from typing import Any, Final

from spotguard.sim.imds_vm import SimVm

# As listed by Azure's IMDS documentation ("Supported API versions"), oldest first.
INSTANCE_API_VERSIONS: Final = (
    "2017-03-01", "2017-04-02", "2017-08-01", "2017-10-01", "2017-12-01", "2018-02-01",
    "2018-04-02", "2018-10-01", "2019-02-01", "2019-03-11", "2019-04-30", "2019-06-01",
    "2019-06-04", "2019-08-01", "2019-08-15", "2019-11-01", "2020-06-01", "2020-07-15",
    "2020-09-01", "2020-10-01", "2020-12-01", "2021-01-01", "2021-02-01", "2021-03-01",
    "2021-05-01", "2021-08-01", "2021-10-01", "2021-11-01", "2021-11-15", "2021-12-13",
    "2023-07-01", "2023-11-15", "2024-03-15", "2024-07-17", "2025-04-07",
)  # fmt: skip


def instance_document(vm: SimVm, api_version: str) -> dict[str, Any]:
    """``/metadata/instance`` for ``vm``: fields newer than ``api_version`` are left out."""
    tags = [
        {"name": "aks-managed-orchestrator", "value": "Kubernetes:1.31.2"},
        {"name": "aks-managed-poolName", "value": vm.nodepool},
    ]
    placement_group = str(uuid.uuid5(uuid.NAMESPACE_URL, f"spotguard-sim:pg:{vm.scale_set}"))
    compute: list[tuple[str, str, Any]] = [
        ("azEnvironment", "2018-10-01", "AzurePublicCloud"),
        ("additionalCapabilities", "2021-11-01", {"hibernationEnabled": "false"}),
        ("evictionPolicy", "2020-12-01", vm.eviction_policy),
        ("extendedLocation", "2021-03-01", {"type": "", "name": ""}),
        ("host", "2021-11-15", {"id": ""}),
        ("hostGroup", "2021-11-15", {"id": ""}),
        ("isHostCompatibilityLayerVm", "2020-06-01", "false"),
        ("licenseType", "2020-09-01", ""),
        ("location", "2017-04-02", vm.location),
        ("name", "2017-04-02", vm.name),
        ("offer", "2017-04-02", ""),
        (
            "osProfile",
            "2020-07-15",
            {
                "adminUsername": "azureuser",
                "computerName": vm.computer_name,
                "disablePasswordAuthentication": "true",
            },
        ),
        ("osType", "2017-04-02", "Linux"),
        ("physicalZone", "2023-11-15", ""),
        ("placementGroupId", "2017-08-01", placement_group if vm.scale_set else ""),
        ("plan", "2018-04-02", {"name": "", "product": "", "publisher": ""}),
        ("platformFaultDomain", "2017-04-02", vm.platform_fault_domain),
        ("platformSubFaultDomain", "2021-10-01", ""),
        ("platformUpdateDomain", "2017-04-02", "0"),
        ("priority", "2020-12-01", vm.priority),
        ("provider", "2018-10-01", "Microsoft.Compute"),
        ("publicKeys", "2018-04-02", []),
        ("publisher", "2017-04-02", ""),
        ("resourceGroupName", "2017-08-01", vm.resource_group),
        ("resourceId", "2019-03-11", vm.resource_id),
        (
            "securityProfile",
            "2020-06-01",
            {
                "secureBootEnabled": "false",
                "virtualTpmEnabled": "false",
                "encryptionAtHost": "false",
                "securityType": "",
            },
        ),
        ("sku", "2017-04-02", ""),
        (
            "storageProfile",
            "2019-06-01",
            {
                "dataDisks": [],
                "imageReference": {
                    "id": "",
                    "offer": "",
                    "publisher": "",
                    "sku": "",
                    "version": "",
                },
                "osDisk": {
                    "caching": "ReadOnly",
                    "createOption": "FromImage",
                    "diskSizeGB": "128",
                    "name": f"{vm.name}_OsDisk_1",
                    "osType": "Linux",
                    "writeAcceleratorEnabled": "false",
                },
                "resourceDisk": {"size": "153600"},
            },
        ),
        ("subscriptionId", "2017-08-01", vm.subscription_id),
        ("tags", "2017-08-01", ";".join(f"{t['name']}:{t['value']}" for t in tags)),
        ("tagsList", "2019-06-04", tags),
        ("userData", "2021-01-01", ""),
        ("version", "2017-04-02", ""),
        ("virtualMachineScaleSet", "2021-03-01", {"id": ""}),  # Flexible scale sets only
        ("vmId", "2017-04-02", vm.vm_id),
        ("vmScaleSetName", "2017-12-01", vm.scale_set),
        ("vmSize", "2017-04-02", vm.vm_size),
        ("zone", "2017-12-01", vm.zone),
    ]
    network = {
        "interface": [
            {
                "ipv4": {
                    "ipAddress": [{"privateIpAddress": vm.private_ip, "publicIpAddress": ""}],
                    "subnet": [{"address": "10.224.0.0", "prefix": "16"}],
                },
                "ipv6": {"ipAddress": []},
                "macAddress": vm.vm_id.replace("-", "")[:12].upper(),
            }
        ]
    }
    return {
        "compute": {key: value for key, since, value in compute if since <= api_version},
        "network": network,
    }


def select(document: Any, route: str) -> Any:
    """The node of ``document`` at ``route`` (``compute/osProfile/computerName``, list items by
    index: ``network/interface/0``); LookupError if there is none."""
    node = document
    for key in [k for k in route.split("/") if k]:
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdecimal() and int(key) < len(node):
            node = node[int(key)]
        else:
            raise LookupError(route)
    return node
