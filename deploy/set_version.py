"""Set the release version everywhere it is written, or check that those places agree.

    python deploy/set_version.py 0.2.0      # rewrite all three files
    python deploy/set_version.py --check    # exit 1 naming each file that disagrees

The single source is ``__version__`` in daemon/spotguard/__init__.py (the wheel's version through
hatch, ``spotguard --version`` and ``spotguard_build_info{version}``). Two copies follow it: the
Dockerfile's ``ARG VERSION=`` default and ``newTag`` of the ``spotguard`` image in
deploy/base/kustomization.yaml. Files are edited as text (comments and layout stay); a file whose
version is not found exactly once stops the script before anything is written.

Exit codes: 0 done / in sync; 1 out of sync (``--check``); 2 bad version, missing file or a
version that is not found exactly once.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INIT = Path("daemon/spotguard/__init__.py")
DOCKERFILE = Path("Dockerfile")
KUSTOMIZATION = Path("deploy/base/kustomization.yaml")
IMAGE = "spotguard"

#: PEP 440 in the normalised form the wheel reports (deploy/image/install.sh compares the two
#: strings) and that is also a valid image tag: X.Y.Z, optionally aN / bN / rcN, .postN, .devN.
VERSION = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:(?:a|b|rc)(0|[1-9]\d*))?(?:\.post(0|[1-9]\d*))?(?:\.dev(0|[1-9]\d*))?$"
)
VERSION_HELP = "X.Y.Z, optionally followed by aN, bN or rcN, .postN, .devN (e.g. 0.2.0, 1.0.0rc1)"


class VersionError(Exception):
    """A file is missing, or its version is not found exactly once."""


@dataclass(frozen=True, slots=True)
class Span:
    """Where a file writes the version: text[start:end]."""

    text: str
    start: int
    end: int

    @property
    def version(self) -> str:
        return self.text[self.start : self.end]

    def replaced(self, version: str) -> str:
        return self.text[: self.start] + version + self.text[self.end :]


def _only(matches: list[re.Match[str]], group: int, what: str, path: Path) -> Span:
    if len(matches) != 1:
        raise VersionError(f"{path}: expected {what} exactly once, found {len(matches)}")
    match = matches[0]
    return Span(match.string, match.start(group), match.end(group))


def init_span(text: str, path: Path = INIT) -> Span:
    matches = list(re.finditer(r"(?m)^__version__ = ([\"'])([^\"'\n]*)\1[ \t]*$", text))
    return _only(matches, 2, 'a line __version__ = "..."', path)


def dockerfile_span(text: str, path: Path = DOCKERFILE) -> Span:
    matches = list(re.finditer(r"(?m)^ARG[ \t]+VERSION=([\"']?)([^\"'\s]*)\1[ \t]*$", text))
    return _only(matches, 2, "a line ARG VERSION=...", path)


_IMAGES_BLOCK = re.compile(r"(?m)^images:[^\n]*(?:\n(?:[ \t]+[^\n]*|-[^\n]*|[ \t]*(?:#[^\n]*)?))*")
_ENTRY_START = re.compile(r"(?m)^[ \t]*-[ \t]")
_FLOW_ENTRY = re.compile(r"\{[^{}]*\}")
_NAME = re.compile(rf"(?<![\w])name:[ \t]*([\"']?){IMAGE}\1(?=[ \t]*(?:[,}}#\n]|$))")
_NEW_TAG = re.compile(r"(?<![\w])newTag:[ \t]*([\"']?)([^\"',}\s#]*)\1")


def kustomization_span(text: str, path: Path = KUSTOMIZATION) -> Span:
    """``newTag`` of the ``name: spotguard`` entry of the top-level ``images:`` list.

    Block entries (``- name: spotguard`` with ``newTag:`` below) and flow entries
    (``images: [{name: spotguard, newTag: 0.1.0}]``) are both read.
    """
    blocks = list(_IMAGES_BLOCK.finditer(text))
    if len(blocks) != 1:
        raise VersionError(f"{path}: expected one top-level images: list, found {len(blocks)}")
    block = blocks[0]
    starts = [m.start() for m in _ENTRY_START.finditer(text, block.start(), block.end())]
    if starts:
        entries = list(zip(starts, [*starts[1:], block.end()], strict=True))
    else:
        entries = [m.span() for m in _FLOW_ENTRY.finditer(text, block.start(), block.end())]
    ours = [(s, e) for s, e in entries if _NAME.search(text, s, e)]
    if len(ours) != 1:
        raise VersionError(
            f"{path}: expected one images: entry with name: {IMAGE}, found {len(ours)}"
        )
    start, end = ours[0]
    return _only(list(_NEW_TAG.finditer(text, start, end)), 2, f"newTag: of {IMAGE}", path)


#: The copies that follow __init__.py, each with how its version is found.
COPIES: dict[Path, Callable[[str, Path], Span]] = {
    DOCKERFILE: dockerfile_span,
    KUSTOMIZATION: kustomization_span,
}


def _read(root: Path, path: Path) -> str:
    try:
        return (root / path).read_text(encoding="utf-8")
    except OSError as exc:
        raise VersionError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _spans(root: Path) -> tuple[Span, dict[Path, Span]]:
    source = init_span(_read(root, INIT), INIT)
    return source, {path: find(_read(root, path), path) for path, find in COPIES.items()}


def check(root: Path) -> list[str]:
    """One line per file whose version differs from __init__.py's; empty when all agree."""
    source, copies = _spans(root)
    return [
        f"{path} has {span.version!r}, {INIT} has {source.version!r}: "
        f"run python deploy/set_version.py {source.version}"
        for path, span in copies.items()
        if span.version != source.version
    ]


def set_version(root: Path, version: str) -> list[Path]:
    """Write ``version`` into all three files (all are read and located before any is written)."""
    if not VERSION.match(version):
        raise ValueError(f"{version!r} is not a release version: expected {VERSION_HELP}")
    source, copies = _spans(root)
    updated = {INIT: source.replaced(version)}
    updated |= {path: span.replaced(version) for path, span in copies.items()}
    for path, text in updated.items():
        (root / path).write_text(text, encoding="utf-8")
    return list(updated)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="set_version.py",
        description="Set the release version in daemon/spotguard/__init__.py, the Dockerfile and "
        "deploy/base/kustomization.yaml, or check that they agree.",
    )
    parser.add_argument("version", nargs="?", help=f"the new version: {VERSION_HELP}")
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a file disagrees"
    )
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root")
    args = parser.parse_args(argv)
    if args.check == (args.version is not None):
        parser.error("give either a VERSION or --check")
    try:
        if args.check:
            problems = check(args.root)
            for line in problems:
                print(f"set_version: {line}", file=sys.stderr)
            return 1 if problems else 0
        written = set_version(args.root, args.version)
    except (ValueError, VersionError) as exc:
        print(f"set_version: {exc}", file=sys.stderr)
        return 2
    print(f"set_version: {args.version} in " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
