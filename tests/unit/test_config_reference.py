"""docs/configuration.md is the settings model rendered; `spotguard config-reference --check`."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from pydantic import Field, SecretStr

from spotguard.cli import main
from spotguard.config import Duration, KindPolicy, Settings
from spotguard.config_reference import SECTIONS, is_current, render
from spotguard.model import Kind

REPO = Path(__file__).parents[2]
PAGE = REPO / "docs" / "configuration.md"


class ChangedDescription(Settings):
    """Settings with one description edited, as a developer would in config.py."""

    poll_interval: Duration = Field(
        default=1.0, ge=0.25, le=60, description="How often IMDS is asked (edited)."
    )


class WithSecretDefault(Settings):
    servicebus_connection_string: SecretStr | None = Field(
        default=SecretStr("Endpoint=sb://x/;SharedAccessKey=hunter2"),
        description="Service Bus connection string (from a Secret).",
    )


class Undescribed(Settings):
    brand_new: str = "x"


def test_the_committed_page_is_the_generators_output() -> None:
    assert PAGE.read_text(encoding="utf-8") == render(), (
        "docs/configuration.md is stale: run `spotguard config-reference`"
    )


def test_every_setting_appears_with_its_env_var_and_description() -> None:
    page = render()
    for name, info in Settings.model_fields.items():
        row = next((line for line in page.splitlines() if line.startswith(f"| `{name}` |")), None)
        assert row is not None, name
        assert f"`SPOTGUARD_{name.upper()}" in row, name
        assert info.description
        assert " ".join(info.description.split())[:30].replace("<", "&lt;") in row, name


def test_every_kind_lists_each_policy_field_with_its_default() -> None:
    page = render()
    defaults = Settings().policy
    for kind in Kind:
        for field in KindPolicy.model_fields:
            value = getattr(defaults[kind], field)
            shown = str(value).lower() if isinstance(value, bool) else str(value)
            env = f"SPOTGUARD_POLICY__{kind.value.upper()}__{field.upper()}"
            assert f"| `{kind.value}` | `policy.{kind.value}.{field}` | `{env}` | `{shown}` |" in (
                page
            )


def test_defaults_are_written_as_a_user_writes_them() -> None:
    page = render()
    assert "| `poll_interval` | `SPOTGUARD_POLL_INTERVAL` |" in page
    assert re.search(r"\| `poll_interval` .*\| `1s` \|", page)
    assert re.search(r"\| `imds_enable_timeout` .*\| `2m` \|", page)
    assert re.search(r"\| `log_format` \| .*one of `json`, `console` \| `json` \|", page)
    assert "duration (`500ms`, `1s`, `2m`, `1h`)" in page


def test_a_changed_description_makes_the_page_stale(tmp_path: Path) -> None:
    assert is_current(PAGE)
    changed = render(ChangedDescription)
    assert changed != render()
    assert "How often IMDS is asked (edited)." in changed
    assert not is_current(PAGE, ChangedDescription)
    stale = tmp_path / "configuration.md"
    stale.write_text(changed, encoding="utf-8")
    assert main(["config-reference", "--check", "--output", str(stale)]) == 1


def test_secrets_are_never_shown() -> None:
    page = render(WithSecretDefault)
    assert "hunter2" not in page
    assert "| `servicebus_connection_string` |" in page
    assert "*(hidden)*" in page


def test_a_field_without_description_is_refused() -> None:
    with pytest.raises(ValueError, match=r"Undescribed\.brand_new has no description"):
        render(Undescribed)


def test_cli_check_passes_on_the_committed_page_and_fails_on_a_stale_copy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config-reference", "--check", "--output", str(PAGE)]) == 0
    copy = tmp_path / "configuration.md"
    shutil.copy(PAGE, copy)
    assert main(["config-reference", "--check", "--output", str(copy)]) == 0
    copy.write_text(PAGE.read_text(encoding="utf-8").replace("Timeout", "Time-out", 1))
    capsys.readouterr()
    assert main(["config-reference", "--check", "--output", str(copy)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"spotguard: {copy} is out of date: run `spotguard config-reference --output {copy}`"
    ]
    assert main(["config-reference", "--check", "--output", str(tmp_path / "missing.md")]) == 1


def test_cli_writes_the_page(tmp_path: Path) -> None:
    out = tmp_path / "configuration.md"
    assert main(["config-reference", "--output", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == PAGE.read_text(encoding="utf-8")


def test_sections_follow_the_shipped_config_files_sections() -> None:
    """The page's sections start where config/spotguard.yaml's `# --- title ---` comments do."""
    text = (REPO / "config" / "spotguard.yaml").read_text(encoding="utf-8")
    shipped: list[tuple[str, str]] = []
    title: str | None = None
    for line in text.splitlines():
        if header := re.match(r"^# --- (.+?) -+$", line):
            title = header.group(1)
        elif (key := re.match(r"^([a-z_]+):", line)) and title is not None:
            shipped.append((key.group(1), title))
            title = None
    assert [first for first, _ in SECTIONS] == [first for first, _ in shipped]
    for (_, ours), (_, theirs) in zip(SECTIONS, shipped, strict=True):
        assert theirs.lower().startswith(ours.lower()), (ours, theirs)
