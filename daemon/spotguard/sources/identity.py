"""Which VM is this? Names as they appear in IMDS ``Resources``.

Azure lists scale-set VMs in ``Resources`` as ``<scale set>_<instance id>`` (for example
``aks-spot-12345678-vmss_3``), which is neither the Kubernetes node name
(``aks-spot-12345678-vmss000003``) nor the VM's computer name. Two sources give it: IMDS
``compute.name`` and the node's ``spec.providerID``. Azure resource names and ids are
case-insensitive (AKS node resource groups appear both as ``MC_rg_...`` and ``mc_rg_...``), so every
comparison here is too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from spotguard.errors import IdentityError

_PROVIDER_PREFIX = "azure://"


@dataclass(frozen=True, slots=True)
class VmIdentity:
    subscription: str
    resource_group: str
    scale_set: str | None
    name: str  # VM name, or instance id for a scale-set VM

    @property
    def resource_name(self) -> str:
        """The name IMDS uses in ``Resources``."""
        return f"{self.scale_set}_{self.name}" if self.scale_set else self.name

    @property
    def resource_id(self) -> str:
        base = f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}"
        if self.scale_set:
            return (
                f"{base}/providers/Microsoft.Compute/virtualMachineScaleSets/{self.scale_set}"
                f"/virtualMachines/{self.name}"
            )
        return f"{base}/providers/Microsoft.Compute/virtualMachines/{self.name}"


def parse_vm_resource_id(resource_id: str) -> VmIdentity:
    """``/subscriptions/.../virtualMachines/<vm>`` or the scale-set form → VmIdentity.

    Accepts a node's ``spec.providerID`` (``azure:///subscriptions/...``) as well.
    """
    text = resource_id.strip()
    if text.lower().startswith(_PROVIDER_PREFIX):
        text = text[len(_PROVIDER_PREFIX) :]
    parts = [p for p in text.split("/") if p]
    lower = [p.lower() for p in parts]
    prefix_ok = (
        len(parts) >= 8
        and lower[0] == "subscriptions"
        and lower[2] == "resourcegroups"
        and lower[4] == "providers"
        and lower[5] == "microsoft.compute"
    )
    if prefix_ok and len(parts) == 8 and lower[6] == "virtualmachines":
        return VmIdentity(parts[1], parts[3], None, parts[7])
    if (
        prefix_ok
        and len(parts) == 10
        and lower[6] == "virtualmachinescalesets"
        and lower[8] == "virtualmachines"
    ):
        return VmIdentity(parts[1], parts[3], parts[7], parts[9])
    raise IdentityError(
        f"not an Azure VM resource id: {resource_id[:200]!r} (expected "
        "azure:///subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.Compute/"
        "virtualMachineScaleSets/<vmss>/virtualMachines/<id> or .../virtualMachines/<vm>)"
    )


def vm_name_from_provider_id(provider_id: str) -> str:
    """A node's ``spec.providerID`` → its VM's name in IMDS ``Resources``."""
    return parse_vm_resource_id(provider_id).resource_name


def same_name(a: str, b: str) -> bool:
    return a.casefold() == b.casefold()


def same_resource_id(a: str, b: str) -> bool:
    """Compare Azure resource ids (or provider ids) the way Azure does: case-insensitively."""
    return _casefold_identity(parse_vm_resource_id(a)) == _casefold_identity(
        parse_vm_resource_id(b)
    )


def _casefold_identity(identity: VmIdentity) -> tuple[str, str, str, str]:
    return (
        identity.subscription.casefold(),
        identity.resource_group.casefold(),
        (identity.scale_set or "").casefold(),
        identity.name.casefold(),
    )


def vm_name_from_compute(compute: Mapping[str, Any]) -> str:
    """IMDS instance metadata ``compute`` → the VM's name in ``Resources``.

    ``compute.name`` already has the ``<vmss>_<instance>`` form for uniform scale sets.
    """
    name = compute.get("name")
    if not isinstance(name, str) or not name.strip():
        raise IdentityError("IMDS instance metadata has no compute.name")
    return name.strip()


def concerns(resources: tuple[str, ...], vm_name: str) -> bool:
    """Does an event listing ``resources`` affect the VM called ``vm_name``?"""
    return any(same_name(r, vm_name) for r in resources)
