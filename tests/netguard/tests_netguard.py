"""Refuse network connections to anything but loopback, in the test process and its children.

Tests may reach 127.0.0.0/8 and ::1 only; nothing else exists on the machines that run them, and
the default IMDS address (169.254.169.254) in particular must never be reached by accident. The
guard wraps ``socket.socket.connect``/``connect_ex`` (asyncio's connects go through them too) and
``sendto`` for UDP. Unix sockets are allowed.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Any

_ALLOWED_FAMILIES = {socket.AF_INET, socket.AF_INET6}
_installed = False


class ForbiddenConnection(ConnectionRefusedError):
    pass


def _check(sock: socket.socket, address: Any) -> None:
    if sock.family not in _ALLOWED_FAMILIES:
        return  # AF_UNIX and friends stay on this machine
    host = address[0] if isinstance(address, tuple) else address
    try:
        ip = ipaddress.ip_address(str(host).split("%")[0])
    except ValueError:
        raise ForbiddenConnection(f"test network guard: unresolved host {host!r}") from None
    if ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped and ip.ipv4_mapped.is_loopback):
        return
    raise ForbiddenConnection(
        f"test network guard: connection to {host} refused (tests may reach 127.0.0.1 only)"
    )


def install() -> None:
    global _installed
    if _installed or os.environ.get("SPOTGUARD_NETGUARD") == "off":
        return
    _installed = True
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_sendto = socket.socket.sendto

    def connect(self: socket.socket, address: Any) -> None:
        _check(self, address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        _check(self, address)
        return real_connect_ex(self, address)

    def sendto(self: socket.socket, data: Any, *args: Any) -> int:
        _check(self, args[-1])
        return real_sendto(self, data, *args)  # type: ignore[arg-type]

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    socket.socket.sendto = sendto  # type: ignore[method-assign,assignment]
