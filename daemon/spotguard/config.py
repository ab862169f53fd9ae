"""Settings: one pydantic-settings model.

Precedence (highest first): ``SPOTGUARD_*`` environment variables, the YAML file given with
``--config`` (same names in lower case), the defaults below. Keys are flat except the per-kind
policy map (``SPOTGUARD_POLICY__PREEMPT__ACKNOWLEDGE=false``). Durations are written ``500ms``,
``1s``, ``2m``, ``1h`` (a bare number means seconds). ``config/spotguard.yaml`` documents every key.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from spotguard.errors import ConfigError
from spotguard.model import Kind

ENV_PREFIX = "SPOTGUARD_"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
DURATION_HELP = "a duration like 500ms, 1s, 2m or 1h"


def parse_duration(value: object) -> float:
    """``"500ms"`` → 0.5; numbers are seconds. Raises ValueError with the accepted forms."""
    if isinstance(value, bool):
        raise ValueError(f"expected {DURATION_HELP}")  # noqa: TRY004 - pydantic wants ValueError
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise ValueError(f"expected {DURATION_HELP}")
    if seconds < 0:
        raise ValueError(f"expected {DURATION_HELP}, not negative")
    return seconds


def format_duration(seconds: float) -> str:
    if seconds and seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"


Duration = Annotated[float, BeforeValidator(parse_duration)]


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected HOST:PORT, for example 0.0.0.0:9464")
    return value


HostPort = Annotated[str, AfterValidator(_host_port)]

_TAINT = re.compile(
    r"^(?P<key>(?:[a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)"
    r"(?:=(?P<value>[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?)?"
    r":(?P<effect>NoSchedule|PreferNoSchedule|NoExecute)$"
)
TAINT_HELP = "a taint written key=value:Effect (Effect: NoSchedule, PreferNoSchedule, NoExecute)"


@dataclass(frozen=True, slots=True)
class Taint:
    key: str
    value: str
    effect: str

    def __str__(self) -> str:
        value = f"={self.value}" if self.value else ""
        return f"{self.key}{value}:{self.effect}"

    def to_json(self) -> dict[str, str]:
        taint = {"key": self.key, "effect": self.effect}
        if self.value:
            taint["value"] = self.value
        return taint


def parse_taint(value: object) -> Taint:
    """``key=value:Effect`` (as kubectl writes it) → Taint; ValueError says what is allowed."""
    if isinstance(value, Taint):
        return value
    match = _TAINT.match(value.strip()) if isinstance(value, str) else None
    if match is None or len(match.group("key").rpartition("/")[2]) > 63:
        raise ValueError(f"expected {TAINT_HELP}")
    return Taint(match.group("key"), match.group("value") or "", match.group("effect"))


def _taint_text(value: str) -> str:
    return str(parse_taint(value))


#: A taint as text (``parse_taint`` reads it): a plain string in the environment and in YAML.
TaintText = Annotated[str, AfterValidator(_taint_text)]


class LogFormat(enum.StrEnum):
    JSON = "json"
    CONSOLE = "console"


class LogLevel(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class Action(enum.StrEnum):
    """What the agent does for a kind of notice."""

    DRAIN = "drain"  # cordon, taint, checkpoint, drain
    CORDON = "cordon"  # cordon and taint only
    RECORD = "record"  # log, count, publish; touch nothing


class KindPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    action: Action = Field(
        default=Action.DRAIN,
        description="What to do for this kind of notice: drain (cordon, taint, checkpoint, "
        "drain), cordon (cordon and taint only) or record (log, count, publish; touch nothing).",
    )
    acknowledge: bool = Field(
        default=False,
        description="POST StartRequests after our drain finished, only when this VM is the only "
        "one in the event's Resources or every listed node has drained (acknowledging releases "
        "them all).",
    )
    delete_on_pdb_block: bool = Field(
        default=False,
        description="Delete a pod whose PodDisruptionBudget still refuses eviction once its grace "
        "period would no longer fit before the deadline.",
    )


def _default_policy() -> dict[Kind, KindPolicy]:
    return {
        Kind.PREEMPT: KindPolicy(action=Action.DRAIN, acknowledge=False, delete_on_pdb_block=True),
        Kind.TERMINATE: KindPolicy(action=Action.DRAIN, acknowledge=True),
        Kind.REDEPLOY: KindPolicy(action=Action.DRAIN, acknowledge=True),
        Kind.REBOOT: KindPolicy(action=Action.DRAIN, acknowledge=True),
        Kind.FREEZE: KindPolicy(action=Action.RECORD, acknowledge=False),
    }


def _complete_policy(value: object) -> object:
    """A partial map (``policy: {preempt: {acknowledge: false}}``) keeps every other default."""
    if not isinstance(value, Mapping):
        return value
    merged: dict[Any, Any] = {k.value: v.model_dump() for k, v in _default_policy().items()}
    for kind, entry in value.items():
        base = merged.get(str(kind).lower())
        if isinstance(base, dict) and isinstance(entry, Mapping):
            merged[str(kind).lower()] = {**base, **entry}
        else:
            merged[str(kind).lower() if isinstance(kind, str) else kind] = entry
    return merged


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        case_sensitive=False,
        extra="forbid",
        frozen=True,
    )

    # --- identity -------------------------------------------------------------------------
    node_name: str | None = Field(
        default=None, description="This node's name (downward API); required for `run`."
    )
    cluster_name: str | None = Field(
        default=None,
        description="Cluster name for metrics, alerts and messages. The node label "
        "kubernetes.azure.com/cluster is the node resource group, not the cluster name.",
    )
    vm_name: str | None = Field(
        default=None,
        description="Override this VM's name as it appears in IMDS Resources "
        "(default: IMDS compute.name, e.g. aks-spot-12345678-vmss_3).",
    )

    pod_name: str | None = Field(
        default=None,
        description="The agent's own pod (downward API), never evicted by its own drain.",
    )
    pod_namespace: str | None = Field(default=None, description="The agent's own namespace.")
    kube_request_timeout: Duration = Field(
        default=5.0, gt=0, le=60, description="Timeout of one Kubernetes API call."
    )

    # --- IMDS -----------------------------------------------------------------------------
    imds_url: AnyHttpUrl = Field(
        default=AnyHttpUrl("http://169.254.169.254"), description="Base URL of IMDS."
    )
    imds_events_api_version: str = Field(
        default="2020-07-01",
        pattern=r"^\d{4}-\d{2}-\d{2}$",
        description="Scheduled Events API version (2020-07-01 adds DurationInSeconds).",
    )
    imds_instance_api_version: str = Field(
        default="2021-02-01",
        pattern=r"^\d{4}-\d{2}-\d{2}$",
        description="Instance metadata API version (used for the identity: compute.name).",
    )
    poll_interval: Duration = Field(
        default=1.0,
        ge=0.25,
        le=60,
        description="Scheduled Events poll interval (Azure recommends 1s; IMDS allows 5 req/s).",
    )
    imds_request_timeout: Duration = Field(
        default=2.0, gt=0, le=30, description="Timeout of one IMDS poll request."
    )
    imds_enable_timeout: Duration = Field(
        default=120.0,
        gt=0,
        le=600,
        description="Timeout of the first Scheduled Events request, which enables the feature "
        "and can take up to 2 minutes.",
    )
    imds_max_backoff: Duration = Field(
        default=5.0, gt=0, le=60, description="Cap of the backoff after IMDS errors."
    )
    blind_after: Duration = Field(
        default=30.0,
        gt=0,
        description="IMDS silent longer than this = blind (readiness fails, alert fires).",
    )

    # --- response -------------------------------------------------------------------------
    dry_run: bool = Field(default=False, description="Log every external write; send none.")
    safety_margin: Duration = Field(
        default=2.0, ge=0, le=60, description="Deadline = NotBefore minus this."
    )
    stop_budget: Duration = Field(
        default=3.0,
        ge=0,
        le=120,
        description="Checkpoint deadline = notice deadline minus this (time for steps to stop).",
    )
    policy: Annotated[dict[Kind, KindPolicy], BeforeValidator(_complete_policy)] = Field(
        default_factory=_default_policy, description="What to do per kind of notice."
    )

    # --- HTTP, logging --------------------------------------------------------------------
    http_address: HostPort = Field(
        default="0.0.0.0:9464", description="Listen address of /metrics, /healthz, /readyz."
    )
    log_format: LogFormat = Field(
        default=LogFormat.JSON,
        description="Log lines: json (one object per line) or console (for people).",
    )
    log_level: LogLevel = Field(
        default=LogLevel.INFO, description="The lowest level that is logged."
    )

    # --- Service Bus, alerts --------------------------------------------------------------
    servicebus_connection_string: SecretStr | None = Field(
        default=None, description="Service Bus connection string (from a Secret)."
    )
    servicebus_namespace: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9-]+\.servicebus\.windows\.net$",
        description="Fully qualified namespace for workload identity.",
    )
    servicebus_entity: str | None = Field(
        default=None, description="Topic or queue that notices and outcomes are published to."
    )
    events_queue: str | None = Field(
        default=None, description="Queue mode: the queue Event Grid delivers to."
    )
    alertmanager_url: AnyHttpUrl | None = Field(
        default=None, description="Alertmanager for direct alerts (optional)."
    )
    runbook_base_url: str = Field(
        default="https://github.com/spotguard/spotguard/blob/main/docs/runbooks/",
        description="Base of runbook links in direct alerts.",
    )

    # --- queue mode -----------------------------------------------------------------------
    queue_not_ready_after: Duration = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="A node whose VM was evicted gets the out-of-service taint once it has "
        "not been Ready for this long.",
    )
    queue_taint: TaintText = Field(
        default="node.kubernetes.io/out-of-service=nodeshutdown:NoExecute",
        description="The taint queue mode puts on a node whose VM is gone (key=value:Effect).",
    )
    queue_reconcile_interval: Duration = Field(
        default=30.0,
        ge=1,
        le=3600,
        description="How often queue mode looks for nodes it tainted that are Ready again.",
    )
    queue_notices_subscription: str | None = Field(
        default=None,
        pattern=r"^[^/\s]+/[^/\s]+$",
        description="Queue mode's own subscription of the agents' notices topic, "
        "<topic>/<subscription>: each Preempt notice counts one fleet eviction.",
    )
    queue_lease_duration: Duration = Field(
        default=15.0, ge=1, le=300, description="Leader election: how long a lease is valid."
    )
    queue_renew_deadline: Duration = Field(
        default=10.0,
        gt=0,
        le=300,
        description="Leader election: the leader steps down when it could not renew for this "
        "long (less than queue_lease_duration).",
    )
    queue_retry_period: Duration = Field(
        default=2.0,
        ge=0.1,
        le=60,
        description="Leader election: interval between tries to acquire or renew.",
    )

    @field_validator("queue_renew_deadline")
    @classmethod
    def _renew_before_expiry(cls, value: float, info: ValidationInfo) -> float:
        lease = info.data.get("queue_lease_duration")
        if lease is not None and value >= lease:
            raise ValueError(f"expected less than queue_lease_duration ({format_duration(lease)})")
        return value

    @field_validator("queue_retry_period")
    @classmethod
    def _retry_within_deadline(cls, value: float, info: ValidationInfo) -> float:
        renew = info.data.get("queue_renew_deadline")
        if renew is not None and value * 1.2 >= renew:
            raise ValueError(
                f"expected less than queue_renew_deadline / 1.2 ({format_duration(renew / 1.2)})"
            )
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # load_settings merges the YAML file and an explicit environment mapping itself, so
        # nothing is read from the process behind the caller's back.
        return (init_settings,)

    def effective(self) -> dict[str, Any]:
        """The settings as they took effect, secrets redacted, durations readable."""
        out: dict[str, Any] = {}
        for name, info in type(self).model_fields.items():
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = "**redacted**"
            elif info.metadata and any(
                getattr(m, "func", None) is parse_duration for m in info.metadata
            ):
                value = format_duration(value)
            elif name == "policy":
                value = {k.value: v.model_dump(mode="json") for k, v in value.items()}
            elif isinstance(value, enum.Enum):
                value = value.value
            elif value is not None and not isinstance(value, bool | int | float | str):
                value = str(value)
            out[name] = value
        return out


def _describe_allowed(error: Mapping[str, Any]) -> str:
    ctx = error.get("ctx") or {}
    kind = error.get("type", "")
    if kind == "enum" and "expected" in ctx:
        return f"one of {ctx['expected']}"
    if kind in {"greater_than_equal", "greater_than", "less_than_equal", "less_than"}:
        return str(error.get("msg", "")).removeprefix("Input should be ")
    if kind == "string_pattern_mismatch":
        return f"a value matching {ctx.get('pattern')}"
    if kind == "extra_forbidden":
        return "a known setting (see config/spotguard.yaml)"
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    return message.removeprefix("expected ").removeprefix("Input should be ")


def _key_name(loc: tuple[int | str, ...], from_env: bool) -> str:
    parts = [str(p) for p in loc if p != "[key]"]
    if from_env:
        return ENV_PREFIX + "__".join(parts).upper()
    return ".".join(parts)


def describe_validation_error(exc: ValidationError, environ: Mapping[str, str]) -> list[str]:
    """One line per bad key: the key, the value given and what is allowed."""
    lines = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        env_key = _key_name(loc, from_env=True)
        from_env = any(k.upper().startswith(env_key) for k in environ)
        key = env_key if from_env else _key_name(loc, from_env=False)
        value = error.get("input")
        if from_env:
            value = next((v for k, v in environ.items() if k.upper() == env_key), value)
        if key.lower().endswith("connection_string"):
            value = "**redacted**"
        lines.append(f"invalid setting {key}={value!r}: expected {_describe_allowed(error)}")
    return lines


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment parsing (prefix, ``__`` nesting) over a given mapping."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = {k.lower(): v for k, v in environ.items()}
        super().__init__(Settings)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return self._environ


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def read_config_file(config_file: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config file {config_file}: {exc}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {config_file}: expected a mapping of settings")
    return {str(k).lower(): v for k, v in loaded.items()}


def unknown_environment_keys(environ: Mapping[str, str]) -> list[str]:
    """``SPOTGUARD_*`` variables that name no setting: typos, or Kubernetes service links.

    Reported, not fatal: a Service called ``spotguard`` makes the kubelet inject
    ``SPOTGUARD_PORT`` and friends into every pod of its namespace.
    """
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    return sorted(
        key
        for key in environ
        if key.upper().startswith(ENV_PREFIX) and key.upper().split("__")[0] not in known
    )


def load_settings(config_file: Path | None, environ: Mapping[str, str]) -> Settings:
    """Settings from the YAML file and ``environ`` (which wins); ConfigError lists every bad key."""
    data = read_config_file(config_file) if config_file is not None else {}
    try:
        env_data = _MappingEnvSource(environ)()
        return Settings(**_deep_merge(data, env_data))
    except ValidationError as exc:
        raise ConfigError("\n".join(describe_validation_error(exc, environ))) from exc
    except ValueError as exc:  # pydantic-settings' own parsing of complex env values
        raise ConfigError(f"invalid setting in the environment: {exc}") from exc
