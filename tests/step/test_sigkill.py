"""A saver killed with SIGKILL at seeded random moments never leaves a checkpoint that restores
wrong: after every kill, restore returns exactly the data of a save that was started, no older
than the last save that returned, and the folder keeps the last N once a save completes again."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.step.conftest import LocationFactory
from tests.step.saver import payload

SAVER = Path(__file__).with_name("saver.py")
ROOT = Path(__file__).resolve().parents[2]
# (kills, longest wait before a kill in seconds) per backend: bounded, about 10 s each.
PLAN = {"local": (60, 0.12), "azurite": (40, 0.35)}


def test_sigkill_at_random_points_never_leaves_a_bad_checkpoint(
    new_location: LocationFactory,
) -> None:
    location = new_location()
    backend = "azurite" if location.url.startswith("abfs://") else "local"
    kills, longest = PLAN[backend]
    rng = random.Random(20261128)
    env = {
        **os.environ,
        **location.env,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    zygote = subprocess.Popen(
        [sys.executable, str(SAVER), location.url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert zygote.stdin is not None
    assert zygote.stdout is not None
    reader = location.store(keep=2)
    acknowledged = 0  # the last save that returned
    started = 0  # the last save that began
    mid_save = 0  # kills that landed between "start" and "saved"
    running = ""  # a saver not yet killed (only set between its start and its kill)
    try:
        for _ in range(kills):
            zygote.stdin.write("go\n")
            zygote.stdin.flush()
            kind, running = zygote.stdout.readline().split()
            assert kind == "pid"
            time.sleep(rng.uniform(0, longest))
            os.kill(int(running), signal.SIGKILL)
            running = ""
            last = ""
            for line in iter(zygote.stdout.readline, ""):
                word, value = line.split()
                if word == "end":
                    break
                if word == "start":
                    started = int(value)
                else:
                    acknowledged = int(value)
                last = word
            mid_save += last == "start"

            restored = reader.restore()
            if acknowledged == 0 and restored is None:
                continue
            assert restored is not None, "a committed checkpoint was lost"
            assert acknowledged <= restored.progress <= started
            assert restored.data == payload(restored.progress), "restored the wrong bytes"
    finally:
        zygote.stdin.close()
        if running.isdigit():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(running), signal.SIGKILL)  # left running by a failed assertion
        try:
            zygote.wait(10)
        except subprocess.TimeoutExpired:
            zygote.kill()
            zygote.wait(10)
        zygote.stdout.close()
    assert acknowledged > kills / 4, "too few saves completed to mean anything"
    assert mid_save > kills / 4, "too few kills landed inside a save"

    # One save that completes removes every left-over and keeps the last two.
    saved = reader.save(payload(started + 1), progress=started + 1)
    names = reader.store.names()
    assert sorted(n for n in names if n.endswith(".bin"))[-1] == f"ckpt-{saved.seq:012d}.bin"
    assert len([n for n in names if n.endswith(".json") and n.startswith("ckpt-")]) == 2
    assert len([n for n in names if n.endswith(".bin")]) == 2
