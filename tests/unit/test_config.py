import subprocess
import sys
from pathlib import Path

import pytest

from spotguard.config import (
    Action,
    format_duration,
    load_settings,
    parse_duration,
    unknown_environment_keys,
)
from spotguard.errors import ConfigError
from spotguard.model import Kind

REPO = Path(__file__).parents[2]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("1s", 1.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("3", 3.0),
        (2, 2.0),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1d", "fast", "-1s", "1 s s", True])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError, match="duration like 500ms"):
        parse_duration(text)


def test_format_duration_round_trips() -> None:
    for seconds in (0.5, 1.0, 2.0, 120.0, 90.0):
        assert parse_duration(format_duration(seconds)) == seconds


def test_defaults_match_design() -> None:
    s = load_settings(None, {})
    assert str(s.imds_url) == "http://169.254.169.254/"
    assert s.imds_events_api_version == "2020-07-01"
    assert (s.poll_interval, s.safety_margin, s.stop_budget, s.blind_after) == (1, 2, 3, 30)
    assert s.http_address == "0.0.0.0:9464"
    assert s.dry_run is False
    assert s.policy[Kind.PREEMPT].action is Action.DRAIN
    assert s.policy[Kind.PREEMPT].acknowledge is False
    assert s.policy[Kind.TERMINATE].acknowledge is True
    assert s.policy[Kind.FREEZE].action is Action.RECORD


def test_environment_wins_over_file_and_policy_merges(tmp_path: Path) -> None:
    config = tmp_path / "spotguard.yaml"
    config.write_text(
        "poll_interval: 2s\ncluster_name: from-file\npolicy:\n  reboot: {action: cordon}\n"
    )
    s = load_settings(
        config,
        {
            "SPOTGUARD_POLL_INTERVAL": "500ms",
            "SPOTGUARD_POLICY__PREEMPT__ACKNOWLEDGE": "true",
            "UNRELATED": "x",
        },
    )
    assert s.poll_interval == 0.5
    assert s.cluster_name == "from-file"
    assert s.policy[Kind.REBOOT].action is Action.CORDON
    assert s.policy[Kind.REBOOT].acknowledge is True  # untouched default kept
    assert s.policy[Kind.PREEMPT].acknowledge is True
    assert s.policy[Kind.PREEMPT].delete_on_pdb_block is True  # default of that kind kept


@pytest.mark.parametrize(
    ("env", "line"),
    [
        (
            {"SPOTGUARD_POLL_INTERVAL": "soon"},
            "invalid setting SPOTGUARD_POLL_INTERVAL='soon': expected a duration like 500ms",
        ),
        (
            {"SPOTGUARD_POLL_INTERVAL": "100ms"},
            "SPOTGUARD_POLL_INTERVAL='100ms': expected greater than or equal to 0.25",
        ),
        ({"SPOTGUARD_LOG_FORMAT": "xml"}, "SPOTGUARD_LOG_FORMAT='xml': expected one of 'json'"),
        ({"SPOTGUARD_POLICY__PREEMPT__ACTION": "nuke"}, "expected one of 'drain', 'cordon'"),
        ({"SPOTGUARD_HTTP_ADDRESS": "9464"}, "expected HOST:PORT"),
        ({"SPOTGUARD_SERVICEBUS_NAMESPACE": "mybus"}, "servicebus\\.windows\\.net"),
    ],
)
def test_invalid_values_name_key_value_and_what_is_allowed(env: dict[str, str], line: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, env)
    assert line in str(info.value)
    assert len(str(info.value).splitlines()) == 1


def test_secrets_are_redacted_in_effective_config_and_errors() -> None:
    s = load_settings(None, {"SPOTGUARD_SERVICEBUS_CONNECTION_STRING": "Endpoint=sb://x;Key=k"})
    assert s.effective()["servicebus_connection_string"] == "**redacted**"
    assert "Key=k" not in repr(s)


def test_unknown_keys_are_reported_not_fatal() -> None:
    env = {"SPOTGUARD_PORT": "tcp://10.0.0.1:80", "SPOTGUARD_NODE_NAME": "n", "HOME": "/"}
    assert unknown_environment_keys(env) == ["SPOTGUARD_PORT"]
    assert load_settings(None, env).node_name == "n"


def test_shipped_config_file_documents_every_key_with_its_default() -> None:
    shipped = load_settings(REPO / "config" / "spotguard.yaml", {})
    assert shipped == load_settings(None, {})
    text = (REPO / "config" / "spotguard.yaml").read_text()
    from spotguard.config import Settings

    for key in Settings.model_fields:
        assert f"\n{key}:" in text or f"\n# {key}:" in text, key


def test_cli_exits_2_with_one_line_per_bad_key(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "spotguard", "watch"],
        env={"SPOTGUARD_POLL_INTERVAL": "often", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "spotguard: invalid setting SPOTGUARD_POLL_INTERVAL='often': expected a duration like "
        "500ms, 1s, 2m or 1h"
    ]
