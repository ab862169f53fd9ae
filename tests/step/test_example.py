"""Done-when: the example step is asked to checkpoint mid-way through the real endpoint, answers
200, exits with the yield code, and its retry produces output byte-identical to an uninterrupted
run with at most one unit of work redone — on the local disk and on Azurite."""

from __future__ import annotations

from pathlib import Path

from spotguard.step import YIELD_EXIT_CODE
from tests.step.conftest import (
    TOKEN,
    LocationFactory,
    Step,
    free_port,
    make_csvs,
    post,
    request_body,
    step_env,
)

FILES = 12


def test_checkpoint_mid_run_then_retry_gives_identical_output(
    tmp_path: Path, new_location: LocationFactory, steps: list[Step]
) -> None:
    inputs = tmp_path / "in"
    make_csvs(inputs, FILES, seed=42)

    reference = tmp_path / "reference.csv"
    uninterrupted = Step(step_env(new_location()), inputs, reference)
    steps.append(uninterrupted)
    assert uninterrupted.finish() == 0, uninterrupted.stderr
    assert uninterrupted.units() == list(range(FILES))

    location = new_location()
    env = step_env(
        location,
        SPOTGUARD_CHECKPOINT_TOKEN=TOKEN,
        SPOTGUARD_CHECKPOINT_PORT=str(free_port()),
    )
    output = tmp_path / "out" / "concat.csv"
    first = Step(env, inputs, output, pace=0.15)
    steps.append(first)
    first.wait_event(lambda e: e.get("index") == 4, 30)
    status, answer = post(first.port, request_body(seconds=10))
    assert status == 200, answer
    assert first.finish() == YIELD_EXIT_CODE, first.stderr
    assert not output.exists()
    done_first = first.units()
    assert 5 <= len(done_first) < FILES, "the request did not land mid-way"

    # The answer names the committed checkpoint, with its size.
    latest = location.store().restore()
    assert latest is not None
    assert answer == {"location": latest.location, "bytes": len(latest.data)}
    assert latest.meta["retry_index"] == 0
    assert (latest.meta["reason"], latest.meta["event_id"]) == ("request", "evt-1")
    assert (latest.meta["run_id"], latest.meta["step"]) == ("run-1", "concat")

    # The retry: same environment, next retry index (Argo sets KFP_RETRY_INDEX).
    retry = Step({**env, "KFP_RETRY_INDEX": "1"}, inputs, output)
    steps.append(retry)
    assert retry.finish() == 0, retry.stderr
    restored = [e for e in retry.seen if e["event"] == "restored"]
    assert restored == [
        {"event": "restored", "progress": latest.progress, "seq": latest.seq, "retry_index": 0}
    ]
    assert output.read_bytes() == reference.read_bytes()
    redone = len(done_first) + len(retry.units()) - FILES
    assert 0 <= redone <= 1
    assert retry.units() == list(range(latest.progress, FILES))

    final = location.store().restore()
    assert final is not None
    assert (final.progress, final.meta["retry_index"]) == (FILES, 1)
