"""spot_ready, compiled with the real kfp and kfp-kubernetes: where each piece lands in the YAML
that Kubeflow Pipelines runs (pipeline spec, then the Kubernetes platform spec)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.kfp.conftest import container_env, executor, kfp_pins, load, run_kfp

SPOT = "kubernetes.azure.com/scalesetpriority"
TOLERATION = {"key": SPOT, "operator": "Equal", "value": "spot", "effect": "NoSchedule"}
SPOT_TERM = {"matchExpressions": [{"key": SPOT, "operator": "In", "values": ["spot"]}]}
SECRET_ENV = {
    "secretName": "spotguard-checkpoint",
    "secretNameParameter": {"runtimeValue": {"constant": "spotguard-checkpoint"}},
    "keyToEnv": [{"secretKey": "token", "envVar": "SPOTGUARD_CHECKPOINT_TOKEN"}],
    "optional": False,
}
FIELD_ENV = [
    {
        "name": "SPOTGUARD_CHECKPOINT_URL",
        "fieldPath": "metadata.annotations['spotguard.io/checkpoint-url']",
    },
    {"name": "SPOTGUARD_RUN_ID", "fieldPath": "metadata.labels['pipeline/runid']"},
]


def test_the_kfp_virtualenv_has_the_pinned_versions(kfp_python: Path) -> None:
    probe = "import json, importlib.metadata as m; print(json.dumps({p: m.version(p) for p in %r}))"
    pins = kfp_pins()
    done = run_kfp(kfp_python, "-c", probe % sorted(pins))
    assert json.loads(done.stdout) == pins, "stale .cache/kfp-venv: run `make setup`"


def test_defaults_place_retry_and_wire_the_checkpoint_protocol(compiled: Path) -> None:
    spec, platform = load(compiled / "defaults.yaml")
    task = spec["root"]["dag"]["tasks"]["work"]
    # 5 retries, 5 min apart (factor 1), window = 5 x 300 s + 6 x 1 h.
    assert task["retryPolicy"] == {
        "maxRetryCount": 5,
        "backoffDuration": "300s",
        "backoffFactor": 1.0,
        "backoffMaxDuration": f"{5 * 300 + 6 * 3600}s",
    }
    work = executor(platform, "work")
    assert work["tolerations"] == [TOLERATION]
    assert work["nodeAffinity"] == [{**SPOT_TERM, "weight": 100}]  # preferred
    assert work["podMetadata"] == {
        "annotations": {
            "spotguard.io/checkpoint": "http",
            "spotguard.io/checkpoint-port": "8471",
            "spotguard.io/checkpoint-path": "/checkpoint",
            # per run: Argo puts the Workflow's UID there; the trailing '/' of the root is dropped
            "spotguard.io/checkpoint-url": "abfs://ckpt/root/{{workflow.uid}}/work",
        }
    }
    assert work["secretAsEnv"] == [SECRET_ENV]
    assert work["fieldPathAsEnv"] == FIELD_ENV
    assert container_env(spec, "work") == {
        "SPOTGUARD_STEP": "work",
        "SPOTGUARD_CHECKPOINT_PORT": "8471",
        "SPOTGUARD_CHECKPOINT_PATH": "/checkpoint",
    }
    # The placeholder the brief suggested would stay literal at run time (KFP's driver copies env
    # values verbatim): it must not be used.
    assert "pipeline_job_uuid" not in (compiled / "defaults.yaml").read_text()


def test_every_option_lands(compiled: Path) -> None:
    spec, platform = load(compiled / "required.yaml")
    assert spec["root"]["dag"]["tasks"]["work"]["retryPolicy"] == {
        "maxRetryCount": 3,
        "backoffDuration": "120s",
        "backoffFactor": 2.0,
        # waits 2 + 4 + 8 min, plus 4 x 30 min
        "backoffMaxDuration": f"{120 + 240 + 480 + 4 * 1800}s",
    }
    work = executor(platform, "work")
    assert work["nodeAffinity"] == [SPOT_TERM]  # required: no weight
    assert work["tolerations"] == [TOLERATION]
    annotations = work["podMetadata"]["annotations"]
    assert annotations["spotguard.io/checkpoint-port"] == "9000"
    assert annotations["spotguard.io/checkpoint-path"] == "/ckpt"
    assert (
        annotations["spotguard.io/checkpoint-url"] == "/mnt/checkpoints/{{workflow.uid}}/train.v2"
    )
    assert container_env(spec, "work") == {
        "SPOTGUARD_STEP": "train.v2",
        "SPOTGUARD_CHECKPOINT_PORT": "9000",
        "SPOTGUARD_CHECKPOINT_PATH": "/ckpt",
    }


def test_placement_only_has_no_checkpoint_protocol(compiled: Path) -> None:
    for case in ("placement_only", "loop_placement_only"):
        spec, platform = load(compiled / f"{case}.yaml")
        work = executor(platform, "work")
        assert set(work) == {"tolerations", "nodeAffinity"}, case
        assert container_env(spec, "work") == {}, case
    spec, _ = load(compiled / "placement_only.yaml")
    assert spec["root"]["dag"]["tasks"]["work"]["retryPolicy"]["backoffMaxDuration"] == (
        f"{5 * 300 + 6 * 45 * 60}s"
    )


def test_an_explicit_window_is_kept(compiled: Path) -> None:
    spec, _ = load(compiled / "explicit_window.yaml")
    retry = spec["root"]["dag"]["tasks"]["work"]["retryPolicy"]
    assert retry["backoffMaxDuration"] == "36000s"


def test_two_tasks_get_their_own_step_and_location(compiled: Path) -> None:
    spec, platform = load(compiled / "two_tasks.yaml")
    for name in ("work", "work-2"):
        assert container_env(spec, name)["SPOTGUARD_STEP"] == name
        url = executor(platform, name)["podMetadata"]["annotations"]["spotguard.io/checkpoint-url"]
        assert url == f"abfs://ckpt/{{{{workflow.uid}}}}/{name}"


def test_misuse_is_refused_with_a_clear_error(compiled: Path) -> None:
    errors = json.loads((compiled / "errors.json").read_text())
    assert errors["not_a_task"].startswith("TypeError: spot_ready needs a task of a KFP pipeline")
    assert errors["sub_pipeline"].startswith("ValueError: task 'inner' does not run a container")
    for twice in ("twice", "twice_placement_only"):
        assert errors[twice].startswith("ValueError: task 'work' is already spot-ready"), twice
    assert "inside dsl.ParallelFor" in errors["in_loop"]
    assert "use checkpoint=False there" in errors["in_loop"]
    assert errors["bad_step"].startswith("ValueError: step='a/b'")
