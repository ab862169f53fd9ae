import socket
import subprocess
import sys

import pytest


def test_connection_to_imds_address_is_refused_in_process() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock, pytest.raises(ConnectionRefusedError, match="test network guard"):
        sock.connect(("169.254.169.254", 80))


def test_loopback_is_allowed() -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname(), timeout=2):
            pass


def test_child_python_processes_are_guarded_too() -> None:
    code = (
        "import socket\n"
        "s = socket.socket()\n"
        "try:\n"
        "    s.connect(('10.0.0.1', 80))\n"
        "except ConnectionRefusedError as e:\n"
        "    print('refused:', e)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert "test network guard" in result.stdout
