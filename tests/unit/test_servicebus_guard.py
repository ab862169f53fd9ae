"""An exception in one of the Service Bus broker's event handlers is logged and counted; it never
reaches proton's reactor (which would stop on it)."""

from __future__ import annotations

from proton import Event
from structlog.testing import capture_logs

from spotguard.clock import SystemClock
from spotguard.observability.logging import get_logger
from spotguard.sim.servicebus_faults import FaultQueue
from spotguard.sim.servicebus_handler import BrokerHandler, guarded
from spotguard.sim.servicebus_store import Store


class Exploding(BrokerHandler):
    @guarded
    def on_boom(self, event: Event) -> None:
        raise RuntimeError(f"bad input: {event!r}")


def test_a_failing_handler_is_logged_and_counted_not_raised() -> None:
    store = Store(clock=SystemClock())
    handler = Exploding(store=store, faults=FaultQueue(now=store.now), log=get_logger())
    with capture_logs() as logs:
        for _ in range(25):
            handler.on_boom(None)  # type: ignore[arg-type]
    assert handler.stats.handler_errors == 25
    assert len(handler.stats.errors) == 20  # the latest ones only
    assert handler.stats.errors[-1] == "on_boom: RuntimeError('bad input: None')"
    assert logs[0]["event"] == "servicebus_handler_error"
    assert logs[0]["handler"] == "on_boom"
