"""The checkpoint endpoint and the SIGTERM handler, with the example step as a real child process
(local storage; the Done-when test covers Azurite)."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from spotguard.step import YIELD_EXIT_CODE, Checkpointer
from tests.step.conftest import (
    TOKEN,
    Location,
    Step,
    free_port,
    make_csvs,
    post,
    request_body,
    step_env,
)


def start(
    tmp_path: Path, steps: list[Step], *, pace: float, files: int = 40, **env: str
) -> tuple[Step, Path]:
    """The example step with only requested saves (EVERY=0) on a fresh local location."""
    inputs = tmp_path / "in"
    if not inputs.exists():
        make_csvs(inputs, files, seed=1, rows=5)
    ckpt = tmp_path / f"ckpt-{len(steps)}"
    settings = {
        "SPOTGUARD_CHECKPOINT_TOKEN": TOKEN,
        "SPOTGUARD_CHECKPOINT_PORT": str(free_port()),
        "SPOTGUARD_CHECKPOINT_EVERY": "0",
        **env,
    }
    step = Step(
        step_env(Location(str(ckpt), {}), **settings), inputs, tmp_path / "out.csv", pace=pace
    )
    steps.append(step)
    return step, ckpt


def saved_objects(ckpt: Path) -> list[str]:
    return (
        sorted(p.name for p in ckpt.iterdir() if not p.name.startswith("."))
        if ckpt.exists()
        else []
    )


def test_refused_requests_save_nothing_and_do_not_stop_the_step(
    tmp_path: Path, steps: list[Step]
) -> None:
    step, ckpt = start(tmp_path, steps, pace=0.1)
    step.wait_listening()
    good = request_body()
    refused = [
        (post(step.port, good, token=None), 401),
        (post(step.port, good, token="wrong"), 401),
        (post(step.port, good, token=TOKEN + "x"), 401),
        (post(step.port, good, token=None, headers={"Authorization": f"Basic {TOKEN}"}), 401),
        (post(step.port, b"{not json", token="wrong"), 401),  # the token is checked first
        (post(step.port, good, method="GET"), 405),
        (post(step.port, good, method="PUT"), 405),
        (post(step.port, good, method="BREW"), 405),
        (post(step.port, good, path="/other"), 404),
        (post(step.port, good, path="/checkpoint/x"), 404),
        (post(step.port, b"{not json"), 400),
        (post(step.port, b"[1, 2]"), 400),
        (post(step.port, {**good, "event_id": ""}), 400),
        (post(step.port, {k: v for k, v in good.items() if k != "node"}), 400),
        (post(step.port, {**good, "deadline": "soon"}), 400),
        (post(step.port, {**good, "deadline": "2030-01-01T00:00:00"}), 400),  # no time zone
        (post(step.port, b"x" * 70_000), 413),
    ]
    for (status, answer), expected in refused:
        assert status == expected, answer
        assert "error" in answer
    # Garbage on the wire, a request without a length, a client that hangs up: still serving.
    for raw in (
        b"\x00\x01 garbage\r\n\r\n",
        b"POST /checkpoint HTTP/1.1\r\nAuthorization: " + f"Bearer {TOKEN}".encode() + b"\r\n\r\n",
        b"POST /checkp",
    ):
        with socket.create_connection(("127.0.0.1", step.port), timeout=5) as sock:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
            answer = sock.recv(4096)
            assert answer == b"" or b"400" in answer or b"411" in answer, answer

    time.sleep(0.3)
    assert step.running(), step.stderr
    assert saved_objects(ckpt) == []

    status, answer = post(step.port, good)
    assert status == 200, answer
    assert step.finish() == YIELD_EXIT_CODE
    location = Path(answer["location"])
    assert location.parent == ckpt
    assert location.stat().st_size == answer["bytes"]
    assert "refused: missing or wrong token" in step.stderr


def test_sigterm_saves_and_exits_with_the_yield_code(tmp_path: Path, steps: list[Step]) -> None:
    step, ckpt = start(tmp_path, steps, pace=0.1)
    step.wait_event(lambda e: e.get("index") == 2, 20)
    step.signal(signal.SIGTERM)
    assert step.finish() == YIELD_EXIT_CODE
    done = len(step.units())
    restored = Location(str(ckpt), {}).store().restore()
    assert restored is not None
    assert restored.progress == done
    assert restored.meta["reason"] == "sigterm"


def test_sigterm_without_a_safe_point_exits_at_the_end_of_the_grace_period(
    tmp_path: Path, steps: list[Step]
) -> None:
    # One unit takes 60 s: no safe point comes. Grace 2 s; the helper gives up 1 s before it.
    step, ckpt = start(tmp_path, steps, pace=60, SPOTGUARD_TERMINATION_GRACE="2")
    step.wait_listening()
    sent = time.monotonic()
    step.signal(signal.SIGTERM)
    assert step.finish(timeout=10) == YIELD_EXIT_CODE
    assert 0.8 < time.monotonic() - sent < 5
    assert saved_objects(ckpt) == []
    assert "no safe point within the grace period" in step.stderr


def test_a_deadline_missed_answers_504_and_the_step_still_yields_at_its_safe_point(
    tmp_path: Path, steps: list[Step]
) -> None:
    step, ckpt = start(tmp_path, steps, pace=1.5)
    step.wait_listening()
    sent = time.monotonic()
    status, answer = post(step.port, request_body(seconds=0.6))
    assert status == 504, answer
    assert time.monotonic() - sent < 1.5
    assert step.finish() == YIELD_EXIT_CODE
    restored = Location(str(ckpt), {}).store().restore()
    assert restored is not None
    assert restored.progress == len(step.units()) == 1
    assert restored.meta["event_id"] == "evt-1"


def test_repeated_requests_share_one_checkpoint(tmp_path: Path, steps: list[Step]) -> None:
    step, ckpt = start(tmp_path, steps, pace=0.5)
    step.wait_listening()
    answers: list[tuple[int, dict[str, Any]]] = []

    def ask() -> None:
        answers.append(post(step.port, request_body()))

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert [status for status, _ in answers] == [200, 200, 200]
    assert len({json.dumps(a, sort_keys=True) for _, a in answers}) == 1
    assert step.finish() == YIELD_EXIT_CODE
    assert len([n for n in saved_objects(ckpt) if n.endswith(".bin")]) == 1


def test_a_failed_save_answers_503_and_the_step_keeps_working(
    tmp_path: Path, steps: list[Step]
) -> None:
    step, ckpt = start(tmp_path, steps, pace=0.1)
    step.wait_event(lambda e: e["event"] == "unit", 20)
    shutil.rmtree(ckpt)
    ckpt.write_text("a file where the checkpoint folder was")
    status, answer = post(step.port, request_body())
    assert status == 503, answer
    assert "checkpoint failed" in answer["error"]
    time.sleep(0.3)
    assert step.running(), step.stderr

    ckpt.unlink()
    ckpt.mkdir()
    status, answer = post(step.port, request_body(event_id="evt-2"))
    assert status == 200, answer
    assert step.finish() == YIELD_EXIT_CODE


def test_the_token_can_come_from_a_file(tmp_path: Path, steps: list[Step]) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("file-token\n")
    step, _ = start(
        tmp_path,
        steps,
        pace=0.2,
        SPOTGUARD_CHECKPOINT_TOKEN="",
        SPOTGUARD_CHECKPOINT_TOKEN_FILE=str(token_file),
    )
    step.wait_listening()
    assert post(step.port, request_body(), token=TOKEN)[0] == 401
    status, answer = post(step.port, request_body(), token="file-token")
    assert status == 200, answer
    assert step.finish() == YIELD_EXIT_CODE


def test_without_a_token_there_is_no_endpoint(tmp_path: Path, steps: list[Step]) -> None:
    step, _ = start(tmp_path, steps, pace=0, files=3, SPOTGUARD_CHECKPOINT_TOKEN="")
    assert step.finish() == 0
    assert "endpoint not started" in step.stderr


def test_a_request_to_a_step_that_finishes_is_answered_409(tmp_path: Path) -> None:
    port = free_port()
    ckpt = Checkpointer(
        str(tmp_path / "ckpt"), token=TOKEN, host="127.0.0.1", port=port, handle_sigterm=False
    )
    answers: list[tuple[int, dict[str, Any]]] = []
    with ckpt:
        asker = threading.Thread(target=lambda: answers.append(post(port, request_body())))
        asker.start()
        assert ckpt.requested.wait(10)
    asker.join(10)
    assert answers[0][0] == 409, answers
    assert saved_objects(tmp_path / "ckpt") == []


def test_safe_points_save_every_n_units(tmp_path: Path) -> None:
    ckpt = Checkpointer(str(tmp_path / "ckpt"), save_every=3, handle_sigterm=False)
    calls = []

    def state() -> dict[str, int]:
        calls.append(1)
        return {"n": len(calls)}

    for _ in ckpt.units(7, state=state):
        pass
    assert len(calls) == 2  # after units 3 and 6; the callable is not called otherwise
    restored = ckpt.restore()
    assert restored is not None
    assert restored.progress == 6


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "SPOTGUARD_CHECKPOINT_URL is not set"),
        ({"SPOTGUARD_CHECKPOINT_URL": "/ckpt/{{workflow.uid}}/s"}, "still holds a template"),
        ({"SPOTGUARD_CHECKPOINT_URL": "/tmp/x", "KFP_RETRY_INDEX": "one"}, "KFP_RETRY_INDEX"),
        ({"SPOTGUARD_CHECKPOINT_URL": "/tmp/x", "SPOTGUARD_CHECKPOINT_KEEP": "0"}, "KEEP"),
        ({"SPOTGUARD_CHECKPOINT_URL": "/tmp/x", "SPOTGUARD_TERMINATION_GRACE": "-1"}, "GRACE"),
        ({"SPOTGUARD_CHECKPOINT_URL": "/tmp/x", "SPOTGUARD_CHECKPOINT_PATH": "x"}, "path"),
    ],
)
def test_invalid_settings_name_the_key(env: dict[str, str], message: str) -> None:
    env = {"SPOTGUARD_CHECKPOINT_TOKEN_FILE": "/nonexistent", **env}
    with pytest.raises(ValueError, match=message):
        Checkpointer.from_env(env)
