"""``spotguard simulate-servicebus`` as a real child process, used by the real SDK."""

from __future__ import annotations

import asyncio
import signal

from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient

from spotguard.sim.child_process import read_listening, spawn, stop_process


async def test_cli_serves_the_sdk_and_exits_cleanly_on_sigterm() -> None:
    proc = await spawn(
        "simulate-servicebus",
        "--port", "0", "--topic", "notices:fleet,audit", "--queue", "events",
        "--log-level", "warning",
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        listening = await read_listening(proc, "simulate-servicebus", timeout=20)
        assert listening["event"] == "listening"
        assert listening["entities"] == [
            "events", "notices", "notices/subscriptions/audit", "notices/subscriptions/fleet",
        ]  # fmt: skip
        port = listening["port"]
        assert listening["connection_string"] == (
            f"Endpoint=sb://127.0.0.1:{port};SharedAccessKeyName=RootManageSharedAccessKey;"
            "SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true;"
        )
        async with ServiceBusClient.from_connection_string(listening["connection_string"]) as sb:
            async with sb.get_topic_sender("notices") as sender:
                await sender.send_messages(ServiceBusMessage("hello", message_id="h-1"))
            async with sb.get_subscription_receiver("notices", "audit") as receiver:
                [got] = await receiver.receive_messages(max_wait_time=2)
                assert (got.message_id, str(got)) == ("h-1", "hello")
                await receiver.complete_message(got)
    finally:
        code = await stop_process(proc, sig=signal.SIGTERM)
    assert code == 0
    assert proc.stderr is not None
    assert await proc.stderr.read() == b""  # nothing at warning level, no proton noise


async def test_cli_refuses_bad_arguments_with_exit_code_2() -> None:
    for args in (["--lock-duration", "0"], ["--topic", ":sub"], ["--port", "70000"]):
        proc = await spawn("simulate-servicebus", *args, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 2, args
        assert err.decode().startswith("spotguard simulate-servicebus: ")
