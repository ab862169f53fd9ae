"""The simulated VMs: their names, Azure ids and the AKS-like values instance metadata shows.

Names and resource ids are built by ``spotguard.sources.identity``, the code the agent reads them
with, so the simulator cannot drift from the formats the agent expects.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from typing import Any, Final

from spotguard.sources.identity import VmIdentity

DEFAULT_SCALE_SET: Final = "aks-spot-12345678-vmss"
DEFAULT_SUBSCRIPTION: Final = "3f2c9a51-7d4e-4b8a-9c61-2e5d8f0a7b13"
DEFAULT_RESOURCE_GROUP: Final = "MC_spotguard-rg_spotguard-aks_westeurope"
DEFAULT_LOCATION: Final = "westeurope"


def default_vm_name(index: int) -> str:
    """``aks-spot-12345678-vmss_<index>``: instance ``index`` of the default scale set."""
    return VmIdentity(
        DEFAULT_SUBSCRIPTION, DEFAULT_RESOURCE_GROUP, DEFAULT_SCALE_SET, str(index)
    ).resource_name


def _base36(number: int, width: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
        if number == 0:
            return out.rjust(width, "0")


@dataclass(frozen=True, slots=True)
class SimVm:
    """One simulated VM. ``name`` is how IMDS names it in ``Resources`` and ``compute.name``.

    ``identity`` is the same VM as the agent's ``spotguard.sources.identity.VmIdentity``.
    """

    name: str
    scale_set: str  # "" for a standalone VM
    instance_id: str  # "" for a standalone VM
    computer_name: str  # the Kubernetes node name on AKS
    vm_id: str
    subscription_id: str = DEFAULT_SUBSCRIPTION
    resource_group: str = DEFAULT_RESOURCE_GROUP
    location: str = DEFAULT_LOCATION
    zone: str = "1"
    vm_size: str = "Standard_D4s_v5"
    priority: str = "Spot"
    eviction_policy: str = "Delete"
    platform_fault_domain: str = "0"
    private_ip: str = "10.224.0.4"

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> SimVm:
        """AKS-style VM: ``<vmss>_<n>`` is instance n of a scale set (computer name ``<vmss>``
        + n in base 36, padded to 6); any other name is a standalone VM."""
        scale_set, sep, instance = name.rpartition("_")
        if sep and scale_set and instance.isdecimal():
            number = int(instance)
            values: dict[str, Any] = {
                "scale_set": scale_set,
                "instance_id": instance,
                "computer_name": scale_set + _base36(number, 6),
                "platform_fault_domain": str(number % 3),
                "private_ip": f"10.224.{(number + 4) // 256}.{(number + 4) % 256}",
            }
        else:
            values = {"scale_set": "", "instance_id": "", "computer_name": name}
        values["vm_id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"spotguard-sim:{name}"))
        values.update(overrides)
        return cls(name=name, **values)

    @property
    def identity(self) -> VmIdentity:
        if self.scale_set:
            return VmIdentity(
                self.subscription_id, self.resource_group, self.scale_set, self.instance_id
            )
        return VmIdentity(self.subscription_id, self.resource_group, None, self.name)

    @property
    def resource_id(self) -> str:
        return self.identity.resource_id

    @property
    def provider_id(self) -> str:
        """The Node's ``spec.providerID`` as AKS writes it (resource group in lower case)."""
        lower = replace(self.identity, resource_group=self.resource_group.lower())
        return "azure://" + lower.resource_id

    @property
    def nodepool(self) -> str:
        parts = self.scale_set.split("-")
        return parts[1] if len(parts) >= 4 and parts[0] == "aks" else ""

    def instance_name(self, instance: int) -> str:
        """The ``Resources`` name of instance ``instance`` of this VM's scale set."""
        return replace(self.identity, name=str(instance)).resource_name

    def to_json(self) -> dict[str, str]:
        return {
            "name": self.name,
            "computer_name": self.computer_name,
            "scale_set": self.scale_set,
            "instance_id": self.instance_id,
            "resource_id": self.resource_id,
            "provider_id": self.provider_id,
            "vm_id": self.vm_id,
        }
