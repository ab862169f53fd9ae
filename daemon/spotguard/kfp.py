"""Make a Kubeflow Pipelines (v2) task spot-ready in one call (``pip install 'spotguard[kfp]'``).

    from spotguard.kfp import spot_ready

    @dsl.pipeline
    def pipeline():
        spot_ready(concat(...), expected_runtime="2h", checkpoint_root="abfs://checkpoints/etl")

``spot_ready`` adds to the task, in the pipeline's compiled YAML:

- the toleration ``kubernetes.azure.com/scalesetpriority=spot:NoSchedule`` and a node affinity to
  that label (preferred with weight 100, so the step may fall back to on-demand nodes, or required
  with ``required_affinity=True``);
- ``set_retry``: ``retries`` (5) retries, ``backoff`` (5 min) before the first and ``backoff`` x
  ``backoff_factor``^n before the next (factor 1: the seed article's fixed 5 minutes), and a
  ``backoff_max_duration`` that fits the whole retry window (``retry_window``). KFP compiles this
  to an Argo ``retryStrategy`` with ``limit`` and ``backoff {duration, factor, maxDuration}`` and
  no ``retryPolicy``, so Argo retries ``OnFailure``: a failed main container (a step that yields
  exits with 75), not a pod deleted with its node. Argo measures ``maxDuration`` from the start of
  the *first* attempt: it stops retrying once the next wait would end past it, and gives every
  retry pod that moment as its deadline. KFP's own default (3600 s) is shorter than 5 retries at
  5, 10, 20, 40 min, so with it the late retries never run or are killed;
- with ``checkpoint=True`` (the default) the checkpoint protocol: pod annotations
  ``spotguard.io/checkpoint: "http"``, ``spotguard.io/checkpoint-port`` and ``-path`` (what the
  agent reads), the token from key ``token`` of the namespace's Secret ``spotguard-checkpoint`` as
  ``SPOTGUARD_CHECKPOINT_TOKEN`` (the pod does not start without that Secret), and the settings
  ``spotguard.step`` reads: ``SPOTGUARD_CHECKPOINT_URL``, ``SPOTGUARD_RUN_ID``, ``SPOTGUARD_STEP``,
  ``SPOTGUARD_CHECKPOINT_PORT`` / ``_PATH`` (``KFP_RETRY_INDEX`` is set by KFP itself).

The checkpoint location is per run: ``<checkpoint_root>/<Argo Workflow UID>/<step>``. KFP v2
passes a task's environment values to the pod verbatim (its driver resolves no placeholder there,
so ``dsl.PIPELINE_JOB_ID_PLACEHOLDER`` would stay literal), but Argo substitutes its global
variables in the DAG task arguments that carry pod annotations. The location is therefore written
as the annotation ``spotguard.io/checkpoint-url`` with ``{{workflow.uid}}`` in it, and reaches the
step as ``SPOTGUARD_CHECKPOINT_URL`` through the downward API; ``SPOTGUARD_RUN_ID`` is the KFP run
id, the pod label ``pipeline/runid``. A retry of the same run (also KFP's "Retry" of a failed run,
which reuses the Workflow) finds its checkpoints; another run starts afresh.

Not for tasks inside ``dsl.ParallelFor``: every iteration would share one location. kfp itself is
imported only when ``spot_ready`` is called, so ``import spotguard`` never needs it.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Any, TypeVar

__all__ = [
    "RUN_PLACEHOLDER",
    "SPOT_LABEL",
    "TOKEN_KEY",
    "TOKEN_SECRET",
    "parse_duration",
    "retry_window",
    "spot_ready",
]

#: AKS labels and taints the nodes of a spot pool with this key and the value "spot".
SPOT_LABEL = "kubernetes.azure.com/scalesetpriority"
SPOT_VALUE = "spot"
#: The namespace's Secret and key holding the checkpoint token (the agent reads only this name).
TOKEN_SECRET = "spotguard-checkpoint"  # noqa: S105 (a name, not a secret)
TOKEN_KEY = "token"  # noqa: S105
#: Pod annotations of the checkpoint protocol (docs/checkpoint.md).
ANNOTATION_CHECKPOINT = "spotguard.io/checkpoint"
ANNOTATION_PORT = "spotguard.io/checkpoint-port"
ANNOTATION_PATH = "spotguard.io/checkpoint-path"
ANNOTATION_URL = "spotguard.io/checkpoint-url"
#: The pod label KFP's API server puts on every pod of a run (Workflow ``spec.podMetadata``).
RUN_ID_LABEL = "pipeline/runid"
#: Argo's global variable for the Workflow's UID, one per KFP run.
RUN_PLACEHOLDER = "{{workflow.uid}}"
DEFAULT_PORT = 8471
DEFAULT_PATH = "/checkpoint"
PREFERRED_WEIGHT = 100

Duration = timedelta | int | float | str
T = TypeVar("T")

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d)")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_STEP = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def parse_duration(value: Duration, *, name: str = "duration") -> int:
    """Whole seconds (rounded up) of a ``timedelta``, a number of seconds, or ``"90s"``, ``"30m"``,
    ``"2h"``, ``"1d"``. Negative values and anything else raise ``ValueError``."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a duration, not a bool")
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.fullmatch(value.strip())
        if match is None:
            raise ValueError(
                f"{name}={value!r}: write a number and a unit s, m, h or d (e.g. '30m', '2h')"
            )
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise TypeError(f"{name} must be a timedelta, a number of seconds or a string like '2h'")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{name}={value!r} must be a finite duration of 0 or more")
    return math.ceil(seconds)


def retry_window(
    *,
    expected_runtime: Duration,
    retries: int = 5,
    backoff: Duration = 300,
    backoff_factor: int = 1,
) -> int:
    """Seconds of ``backoff_max_duration`` that let every retry run: all the waits between
    attempts plus ``retries + 1`` expected runtimes (each attempt may run nearly its full time
    before it is stopped; pending time on a full spot pool also counts)."""
    runtime = parse_duration(expected_runtime, name="expected_runtime")
    return _waits(backoff, retries, backoff_factor) + (retries + 1) * runtime


def spot_ready(
    task: T,
    *,
    expected_runtime: Duration,
    checkpoint_root: str | None = None,
    checkpoint: bool = True,
    required_affinity: bool = False,
    retries: int = 5,
    backoff: Duration = 300,
    backoff_factor: int = 1,
    backoff_max_duration: Duration | None = None,
    port: int = DEFAULT_PORT,
    path: str = DEFAULT_PATH,
    step: str | None = None,
) -> T:
    """Make a KFP v2 ``PipelineTask`` run on spot nodes, be retried, and (``checkpoint=True``)
    take part in the checkpoint protocol; returns the task. See the module docstring.

    ``expected_runtime``: how long the step runs when nothing interrupts it (sizes the retry
    window). ``checkpoint_root``: where checkpoints go (an ``abfs://`` URL, or an absolute path
    on a shared volume); required unless ``checkpoint=False`` (a step that does not use
    ``spotguard.step``: placement and retries only). ``backoff_factor``: an integer, as Argo
    requires. ``backoff_max_duration``: defaults to ``retry_window(...)``. ``port`` / ``path``:
    the step's endpoint (a port other than 8471 needs the NetworkPolicy widened). ``step``: the
    step's name in the location and the manifests (default: the task's name).
    """
    runtime = parse_duration(expected_runtime, name="expected_runtime")
    if runtime == 0:
        raise ValueError("expected_runtime must be more than 0")
    wait = parse_duration(backoff, name="backoff")
    waits = _waits(wait, retries, backoff_factor)
    minimum = waits + runtime
    if backoff_max_duration is None:
        window = waits + (retries + 1) * runtime
    else:
        window = parse_duration(backoff_max_duration, name="backoff_max_duration")
        if window < minimum:
            raise ValueError(
                f"backoff_max_duration={backoff_max_duration!r} ({window} s) is shorter than the "
                f"{retries} waits plus one expected runtime ({minimum} s): Argo counts it from the "
                "first attempt's start, stops retrying when the next wait would end after it and "
                "kills a retry still running then; leave it unset to get retry_window(...)"
            )
    for flag, given in (("checkpoint", checkpoint), ("required_affinity", required_affinity)):
        if not isinstance(given, bool):
            raise TypeError(f"{flag} must be True or False, not {given!r}")
    location = None
    if checkpoint:
        location = _checkpoint_root(checkpoint_root)
        _check_endpoint(port, path)
    elif checkpoint_root is not None:
        raise ValueError("checkpoint_root is given but checkpoint=False: drop one of them")

    dsl, kubernetes = _import_kfp()
    if not isinstance(task, dsl.PipelineTask):
        raise TypeError(
            f"spot_ready needs a task of a KFP pipeline (dsl.PipelineTask), not {type(task)!r}"
        )
    if task.container_spec is None:
        raise ValueError(
            f"task {task.name!r} does not run a container (a pipeline used as a component, or an "
            "importer): call spot_ready on the container tasks inside it"
        )
    tolerations = task.platform_config.get("kubernetes", {}).get("tolerations", [])
    if any(t.get("key") == SPOT_LABEL for t in tolerations):
        raise ValueError(
            f"task {task.name!r} is already spot-ready (it tolerates {SPOT_LABEL}): call "
            "spot_ready once, and not with a spot toleration of its own"
        )
    group = task.parent_task_group
    while group is not None:
        if isinstance(group, dsl.ParallelFor) and checkpoint:
            raise ValueError(
                f"task {task.name!r} is inside dsl.ParallelFor: its iterations would share one "
                "checkpoint location; use checkpoint=False there"
            )
        group = group.parent_task_group
    step_name = task.name if step is None else step
    if not isinstance(step_name, str) or _STEP.fullmatch(step_name) is None:
        raise ValueError(f"step={step_name!r}: use letters, digits, '.', '_' and '-'")

    kubernetes.add_toleration(
        task, key=SPOT_LABEL, operator="Equal", value=SPOT_VALUE, effect="NoSchedule"
    )
    kubernetes.add_node_affinity(
        task,
        match_expressions=[{"key": SPOT_LABEL, "operator": "In", "values": [SPOT_VALUE]}],
        weight=None if required_affinity else PREFERRED_WEIGHT,
    )
    task.set_retry(
        num_retries=retries,
        backoff_duration=f"{wait}s",
        backoff_factor=float(backoff_factor),
        backoff_max_duration=f"{window}s",
    )
    if location is None:
        return task

    url = f"{location}/{RUN_PLACEHOLDER}/{step_name}"
    for key, value in (
        (ANNOTATION_CHECKPOINT, "http"),
        (ANNOTATION_PORT, str(port)),
        (ANNOTATION_PATH, path),
        (ANNOTATION_URL, url),
    ):
        kubernetes.add_pod_annotation(task, key, value)
    kubernetes.use_secret_as_env(
        task, secret_name=TOKEN_SECRET, secret_key_to_env={TOKEN_KEY: "SPOTGUARD_CHECKPOINT_TOKEN"}
    )
    kubernetes.use_field_path_as_env(
        task,
        env_name="SPOTGUARD_CHECKPOINT_URL",
        field_path=f"metadata.annotations['{ANNOTATION_URL}']",
    )
    kubernetes.use_field_path_as_env(
        task, env_name="SPOTGUARD_RUN_ID", field_path=f"metadata.labels['{RUN_ID_LABEL}']"
    )
    task.set_env_variable("SPOTGUARD_STEP", step_name)
    task.set_env_variable("SPOTGUARD_CHECKPOINT_PORT", str(port))
    task.set_env_variable("SPOTGUARD_CHECKPOINT_PATH", path)
    return task


def _waits(backoff: Duration, retries: int, backoff_factor: int) -> int:
    """Seconds of all the waits before the retries: backoff x factor^n for n = 0 .. retries-1."""
    wait = parse_duration(backoff, name="backoff")
    _check_counts(retries, backoff_factor)
    return sum(wait * int(backoff_factor) ** n for n in range(retries))


def _check_counts(retries: int, backoff_factor: int) -> None:
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 1:
        raise ValueError(f"retries={retries!r} must be a whole number of 1 or more")
    if isinstance(backoff_factor, bool) or not isinstance(backoff_factor, int | float):
        raise TypeError(f"backoff_factor={backoff_factor!r} must be a whole number")
    if backoff_factor != int(backoff_factor) or backoff_factor < 1:
        # Argo reads the factor with strconv.Atoi: "1.5" fails the retry; 0 would mean 2 in KFP.
        raise ValueError(f"backoff_factor={backoff_factor!r} must be a whole number of 1 or more")


def _checkpoint_root(root: str | None) -> str:
    if root is None:
        raise ValueError(
            "checkpoint_root is required (where checkpoints go, e.g. 'abfs://checkpoints/etl'), "
            "or pass checkpoint=False for a step that does not use spotguard.step"
        )
    if not isinstance(root, str):
        raise TypeError(
            f"checkpoint_root must be a string known when the pipeline compiles, not {root!r}"
        )
    root = root.rstrip("/")
    if not root or any(c.isspace() for c in root) or "{{" in root or "}}" in root:
        raise ValueError(f"checkpoint_root={root!r}: no spaces and no '{{{{' / '}}}}'")
    if "://" not in root and not root.startswith("/"):
        raise ValueError(f"checkpoint_root={root!r}: use a URL (abfs://...) or an absolute path")
    return root


def _check_endpoint(port: int, path: str) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"port={port!r} must be a TCP port (1-65535)")
    if not isinstance(path, str) or not path.startswith("/") or any(c.isspace() for c in path):
        raise ValueError(f"path={path!r} must start with '/' and contain no spaces")


def _import_kfp() -> tuple[Any, Any]:
    try:
        from kfp import dsl, kubernetes
    except ImportError as exc:
        raise ImportError(
            "spotguard.kfp needs kfp and kfp-kubernetes: pip install 'spotguard[kfp]'"
        ) from exc
    return dsl, kubernetes
