"""spotguard.kfp's tests: kfp pins requests and urllib3 exactly, so it lives in a virtualenv of its
own (``.cache/kfp-venv``, built by ``make setup``); these tests run in the main pytest run and
start that virtualenv's Python to compile pipelines offline, then read the YAML here."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KFP_PYTHON = ROOT / ".cache" / "kfp-venv" / "bin" / "python"
CASES = Path(__file__).with_name("compile_cases.py")


def kfp_pins() -> dict[str, str]:
    """The `kfp` extra of pyproject.toml as {package: exact version}."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        extra = tomllib.load(f)["project"]["optional-dependencies"]["kfp"]
    return dict(pin.split("==", 1) for pin in extra)


def run_kfp(python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(python), *args], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, f"{' '.join(args)} exited {done.returncode}\n{done.stderr}"
    return done


@pytest.fixture(scope="session")
def kfp_python() -> Path:
    if not KFP_PYTHON.exists():
        pytest.fail(
            f"{KFP_PYTHON.relative_to(ROOT)} is missing: `make setup` builds it (the kfp "
            "virtualenv with kfp, kfp-kubernetes and spotguard)"
        )
    return KFP_PYTHON


@pytest.fixture(scope="session")
def compiled(kfp_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder where compile_cases.py wrote one YAML per case and errors.json."""
    out = tmp_path_factory.mktemp("kfp-compiled")
    run_kfp(kfp_python, str(CASES), str(out))
    return out


def load(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A compiled pipeline: the pipeline spec and the Kubernetes platform spec."""
    documents = list(yaml.safe_load_all(path.read_text()))
    assert len(documents) == 2, f"{path.name}: {len(documents)} YAML documents"
    return documents[0], documents[1]


def executor(platform: dict[str, Any], name: str) -> dict[str, Any]:
    executors: dict[str, Any] = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    return executors[f"exec-{name}"]


def container_env(spec: dict[str, Any], name: str) -> dict[str, str]:
    container = spec["deploymentSpec"]["executors"][f"exec-{name}"]["container"]
    return {e["name"]: e["value"] for e in container.get("env", [])}
