"""spotguard.step in the container a pipeline step really has: a bare virtualenv with only
``pip install --no-deps spotguard`` plus fsspec and adlfs, installed from the local wheelhouse
that ``make setup`` fills (``--no-index``: no registry at test time)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from spotguard.step import YIELD_EXIT_CODE
from tests.step.conftest import (
    ROOT,
    TOKEN,
    Azurite,
    Location,
    Step,
    free_port,
    make_csvs,
    post,
    request_body,
    step_env,
)

WHEELHOUSE = ROOT / "wheelhouse"


def pip(*args: str) -> subprocess.CompletedProcess[str]:
    # No pip configuration and no PIP_* variables: only the wheelhouse can supply anything.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 0, f"{' '.join(command)}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    if not any(WHEELHOUSE.glob("adlfs-*.whl")) or not any(WHEELHOUSE.glob("hatchling-*.whl")):
        pytest.fail(f"the wheelhouse ({WHEELHOUSE}) is not filled: run `make setup`")
    tmp = tmp_path_factory.mktemp("bare")
    # Build the wheel from the work tree as it is now (offline: hatchling from the wheelhouse),
    # so the test never runs a stale copy.
    pip(
        "wheel",
        "-q",
        "--no-index",
        "--find-links",
        str(WHEELHOUSE),
        "--no-deps",
        "-w",
        str(tmp / "dist"),
        str(ROOT),
    )
    (wheel,) = (tmp / "dist").glob("spotguard-*.whl")
    venv = tmp / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60
    )
    python = str(venv / "bin" / "python")
    index = ["--no-index", "--find-links", str(WHEELHOUSE)]
    pip("--python", python, "install", "-q", *index, "fsspec", "adlfs")
    pip("--python", python, "install", "-q", *index, "--no-deps", str(wheel))
    return python


def test_the_step_helper_needs_nothing_of_the_agent(bare_python: str) -> None:
    probe = (
        "import sys, spotguard, spotguard.step\n"
        "print(spotguard.__file__)\n"
        "try:\n"
        "    import spotguard.config\n"
        "except ImportError as exc:\n"
        "    print('agent unavailable:', exc.name)\n"
    )
    done = subprocess.run(
        [bare_python, "-c", probe], capture_output=True, text=True, timeout=60, cwd="/"
    )
    assert done.returncode == 0, done.stderr
    installed, missing = done.stdout.splitlines()
    assert installed.startswith(str(Path(bare_python).parent.parent))  # not the work tree
    assert missing.startswith("agent unavailable:")  # pydantic & co. are really absent


def test_the_example_yields_and_resumes_on_azurite_in_the_bare_venv(
    bare_python: str, azurite: Azurite, tmp_path: Path, steps: list[Step]
) -> None:
    inputs = tmp_path / "in"
    make_csvs(inputs, 6, seed=3)
    reference = tmp_path / "reference.csv"
    plain = Step(
        step_env(Location(str(tmp_path / "ckpt"), {})), inputs, reference, python=bare_python
    )
    steps.append(plain)
    assert plain.finish() == 0, plain.stderr

    container = azurite.new_container()
    location = Location(
        f"abfs://{container}/run-1/concat",
        {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string},
    )
    env = step_env(
        location, SPOTGUARD_CHECKPOINT_TOKEN=TOKEN, SPOTGUARD_CHECKPOINT_PORT=str(free_port())
    )
    output = tmp_path / "out.csv"
    first = Step(env, inputs, output, pace=0.3, python=bare_python)
    steps.append(first)
    first.wait_event(lambda e: e.get("index") == 1, 30)
    status, answer = post(first.port, request_body())
    assert status == 200, answer
    assert answer["location"].startswith(f"abfs://{container}/run-1/concat/ckpt-")
    assert first.finish() == YIELD_EXIT_CODE, first.stderr

    retry = Step({**env, "KFP_RETRY_INDEX": "1"}, inputs, output, python=bare_python)
    steps.append(retry)
    assert retry.finish() == 0, retry.stderr
    assert output.read_bytes() == reference.read_bytes()
    assert len(first.units()) + len(retry.units()) <= 6 + 1
