"""End-to-end tests: record spotguard's API requests for the exact-RBAC check.

Every emulated API server an e2e test starts writes its whole request log, as it stops, to a
``*requests.jsonl`` file in the test's ``tmp_path`` (``request_log=`` from
``RECORDER.request_log``; see ``agent_harness`` and ``test_queue_mode.stack``). After the test,
``record_rbac`` hands those files to ``tests.rbac_recorder``; ``tests/deploy/test_rbac.py`` (run
last) compares what the agent and queue mode asked for with ``deploy/``'s RBAC. See
``tests/rbac_recorder.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.agent_harness import HARNESS_UA
from tests.rbac_recorder import RECORDER


@pytest.fixture(autouse=True)
def record_rbac(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[None]:
    """Reads the test's request logs after it. Autouse, so it is set up before the test's own
    fixtures and torn down after them: every emulator has stopped (and written its file) by then,
    whether the test body or one of its fixtures started it."""
    yield
    RECORDER.collect_dir(tmp_path, test=request.node.nodeid, own_agents=[HARNESS_UA])
