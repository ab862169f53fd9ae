"""examples/concat_csv_pipeline.py: the committed YAML is what the example compiles to today, and
both of its tasks are spot-ready (the concatenation with the checkpoint protocol)."""

from __future__ import annotations

from pathlib import Path

from tests.kfp.conftest import ROOT, container_env, executor, load, run_kfp

EXAMPLE = ROOT / "examples" / "concat_csv_pipeline.py"
COMMITTED = EXAMPLE.with_suffix(".yaml")


def test_committed_yaml_is_what_the_example_compiles_to(kfp_python: Path, tmp_path: Path) -> None:
    fresh = tmp_path / "concat_csv_pipeline.yaml"
    run_kfp(kfp_python, str(EXAMPLE), str(fresh))
    assert fresh.read_text() == COMMITTED.read_text(), (
        "examples/concat_csv_pipeline.yaml is stale: regenerate it with "
        "`.cache/kfp-venv/bin/python examples/concat_csv_pipeline.py`"
    )


def test_the_example_runs_the_step_script_spot_ready() -> None:
    spec, platform = load(COMMITTED)
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"download", "concat-csv"}
    for name, runtime in (("download", 10 * 60), ("concat-csv", 30 * 60)):
        assert tasks[name]["retryPolicy"] == {
            "maxRetryCount": 5,
            "backoffDuration": "300s",
            "backoffFactor": 1.0,
            "backoffMaxDuration": f"{5 * 300 + 6 * runtime}s",
        }
        assert executor(platform, name)["tolerations"][0]["value"] == "spot"
    # The download does not use spotguard.step: placement and retries only.
    assert set(executor(platform, "download")) == {"tolerations", "nodeAffinity"}
    concat = executor(platform, "concat-csv")
    assert concat["podMetadata"]["annotations"]["spotguard.io/checkpoint-url"] == (
        "abfs://checkpoints/concat-csv/{{workflow.uid}}/concat-csv"
    )
    assert container_env(spec, "concat-csv")["SPOTGUARD_STEP"] == "concat-csv"
    command = spec["deploymentSpec"]["executors"]["exec-concat-csv"]["container"]["command"]
    assert "exec python /opt/spotguard/concat_csv_step.py" in command[-1]
