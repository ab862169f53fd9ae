"""One version for the release: deploy/set_version.py keeps __version__, the Dockerfile's
``ARG VERSION`` default and the base kustomization's image ``newTag`` together."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from spotguard import __version__
from spotguard.observability.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "set_version.py"
INIT = Path("daemon/spotguard/__init__.py")
DOCKERFILE = Path("Dockerfile")
KUSTOMIZATION = Path("deploy/base/kustomization.yaml")

#: Stand-in for deploy/base/kustomization.yaml (used only while that file does not exist).
MINIMAL_KUSTOMIZATION = f"""\
# a comment that must survive
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
configMapGenerator:
  - name: spotguard
    literals: [newTag=not-this-one]
images:
  # another comment
  - name: busybox
    newTag: "1.36"
  - name: spotguard
    newName: ghcr.io/spotguard/spotguard
    newTag: {__version__}  # trailing comment
"""


def set_version(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def image_tag(root: Path, name: str = "spotguard") -> str:
    document = yaml.safe_load((root / KUSTOMIZATION).read_text(encoding="utf-8"))
    tags = [str(i["newTag"]) for i in document["images"] if i["name"] == name]
    assert len(tags) == 1
    return tags[0]


def dockerfile_version(root: Path) -> str:
    text = (root / DOCKERFILE).read_text(encoding="utf-8")
    return str(re.findall(r"(?m)^ARG VERSION=(\S+)$", text)[0])


def init_version(root: Path) -> str:
    text = (root / INIT).read_text(encoding="utf-8")
    return str(re.findall(r'(?m)^__version__ = "([^"]+)"$', text)[0])


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """The three files in a temporary root (the real kustomization once it exists)."""
    for path in (INIT, DOCKERFILE):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / path, tmp_path / path)
    (tmp_path / KUSTOMIZATION).parent.mkdir(parents=True)
    if (ROOT / KUSTOMIZATION).exists():
        shutil.copy(ROOT / KUSTOMIZATION, tmp_path / KUSTOMIZATION)
    else:
        (tmp_path / KUSTOMIZATION).write_text(MINIMAL_KUSTOMIZATION, encoding="utf-8")
    return tmp_path


def snapshot(root: Path) -> dict[Path, str]:
    return {p: (root / p).read_text(encoding="utf-8") for p in (INIT, DOCKERFILE, KUSTOMIZATION)}


def test_check_passes_on_the_repository() -> None:
    """Fails (does not skip) while deploy/base/kustomization.yaml is missing."""
    result = set_version("--check")
    assert result.returncode == 0, result.stderr


def test_setting_a_version_updates_all_three_files(copy: Path) -> None:
    before = snapshot(copy)
    result = set_version("0.2.0", "--root", str(copy))
    assert result.returncode == 0, result.stderr
    assert init_version(copy) == "0.2.0"
    assert dockerfile_version(copy) == "0.2.0"
    assert image_tag(copy) == "0.2.0"
    after = snapshot(copy)
    for path in before:
        # One line changed, only in its version: comments and everything else are kept.
        old, new = before[path].splitlines(), after[path].splitlines()
        assert len(old) == len(new), path
        changed = [(o, n) for o, n in zip(old, new, strict=True) if o != n]
        assert len(changed) == 1, (path, changed)
        assert changed[0][1] == changed[0][0].replace(__version__, "0.2.0"), path
    assert set_version("--check", "--root", str(copy)).returncode == 0


def test_only_the_spotguard_image_entry_is_touched(tmp_path: Path) -> None:
    for path in (INIT, DOCKERFILE):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / path, tmp_path / path)
    (tmp_path / KUSTOMIZATION).parent.mkdir(parents=True)
    (tmp_path / KUSTOMIZATION).write_text(MINIMAL_KUSTOMIZATION, encoding="utf-8")
    assert set_version("1.0.0rc1", "--root", str(tmp_path)).returncode == 0
    text = (tmp_path / KUSTOMIZATION).read_text(encoding="utf-8")
    assert text == MINIMAL_KUSTOMIZATION.replace(f"newTag: {__version__}  #", "newTag: 1.0.0rc1  #")
    assert image_tag(tmp_path, "busybox") == "1.36"


def test_flow_style_images_are_read(copy: Path) -> None:
    (copy / KUSTOMIZATION).write_text(
        "images: [{name: other, newTag: '1'}, "
        f"{{name: spotguard, newName: ghcr.io/spotguard/spotguard, newTag: {__version__}}}]\n",
        encoding="utf-8",
    )
    assert set_version("0.3.0", "--root", str(copy)).returncode == 0
    assert image_tag(copy) == "0.3.0"
    assert image_tag(copy, "other") == "1"


@pytest.mark.parametrize("path", [DOCKERFILE, KUSTOMIZATION])
def test_a_hand_edited_copy_fails_the_check_naming_the_file(copy: Path, path: Path) -> None:
    text = (copy / path).read_text(encoding="utf-8")
    pattern = r"(?m)^(ARG VERSION=|\s+newTag: )" + re.escape(__version__)
    edited, count = re.subn(pattern, r"\g<1>9.9.9", text)
    assert count == 1
    (copy / path).write_text(edited, encoding="utf-8")
    result = set_version("--check", "--root", str(copy))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert str(path) in lines[0]
    assert "9.9.9" in lines[0]
    assert f"python deploy/set_version.py {__version__}" in lines[0]


def test_a_changed_version_source_names_both_copies(copy: Path) -> None:
    text = (copy / INIT).read_text(encoding="utf-8")
    (copy / INIT).write_text(text.replace(__version__, "0.9.0"), encoding="utf-8")
    result = set_version("--check", "--root", str(copy))
    assert result.returncode == 1
    named = result.stderr
    assert str(DOCKERFILE) in named
    assert str(KUSTOMIZATION) in named


@pytest.mark.parametrize(
    "version", ["0.2", "v0.2.0", "0.2.0-rc.1", "1.0.0+local", "01.2.3", "latest", "0.2.0 "]
)
def test_a_version_that_is_not_a_release_version_is_refused(copy: Path, version: str) -> None:
    before = snapshot(copy)
    result = set_version(version, "--root", str(copy))
    assert result.returncode == 2
    assert "not a release version" in result.stderr
    assert snapshot(copy) == before


@pytest.mark.parametrize(
    "kustomization",
    [
        "images:\n  - name: spotguard\n    newName: x\n",  # no newTag
        "images:\n  - name: spotguard\n    newTag: 0.1.0\n  - name: spotguard\n    newTag: 1\n",
        "resources: [daemonset.yaml]\n",  # no images
    ],
)
def test_a_version_not_found_exactly_once_stops_before_writing(
    copy: Path, kustomization: str
) -> None:
    (copy / KUSTOMIZATION).write_text(kustomization, encoding="utf-8")
    before = snapshot(copy)
    result = set_version("0.2.0", "--root", str(copy))
    assert result.returncode == 2
    assert str(KUSTOMIZATION) in result.stderr
    assert snapshot(copy) == before  # __init__.py and the Dockerfile were not written either
    assert set_version("--check", "--root", str(copy)).returncode == 2


def test_a_missing_file_fails_the_check(copy: Path) -> None:
    (copy / KUSTOMIZATION).unlink()
    result = set_version("--check", "--root", str(copy))
    assert result.returncode == 2
    assert str(KUSTOMIZATION) in result.stderr


def test_the_package_version_is_the_file_the_script_edits() -> None:
    assert init_version(ROOT) == __version__
    hatch = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert Path(hatch["tool"]["hatch"]["version"]["path"]) == INIT


def test_build_info_exposes_the_package_version() -> None:
    metrics = Metrics(CollectorRegistry())
    registry = metrics.registry
    assert registry.get_sample_value("spotguard_build_info", {"version": __version__}) == 1.0
