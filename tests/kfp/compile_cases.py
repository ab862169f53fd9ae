"""Run by tests/kfp with the kfp virtualenv's Python (not collected by pytest):

    .cache/kfp-venv/bin/python tests/kfp/compile_cases.py OUTDIR

compiles one pipeline per case of ``spot_ready`` into OUTDIR/<case>.yaml and writes what each
misuse raised to OUTDIR/errors.json ({case: "ExceptionType: message"}). Offline."""

import json
import sys
from collections.abc import Callable
from pathlib import Path

from kfp import compiler, dsl
from spotguard.kfp import spot_ready


@dsl.container_component
def work() -> dsl.ContainerSpec:
    return dsl.ContainerSpec(image="python:3.11-slim", command=["true"])


@dsl.pipeline(name="inner")
def inner() -> None:
    work()


def case_defaults() -> None:
    spot_ready(work(), expected_runtime="1h", checkpoint_root="abfs://ckpt/root/")


def case_required() -> None:
    spot_ready(
        work(),
        expected_runtime=1800,
        checkpoint_root="/mnt/checkpoints",
        required_affinity=True,
        retries=3,
        backoff="2m",
        backoff_factor=2,
        port=9000,
        path="/ckpt",
        step="train.v2",
    )


def case_placement_only() -> None:
    spot_ready(work(), expected_runtime="45m", checkpoint=False)


def case_explicit_window() -> None:
    spot_ready(
        work(), expected_runtime="1h", checkpoint_root="abfs://ckpt", backoff_max_duration="10h"
    )


def case_loop_placement_only() -> None:
    with dsl.ParallelFor(items=["a", "b"]):
        spot_ready(work(), expected_runtime="5m", checkpoint=False)


def case_two_tasks() -> None:
    first = spot_ready(work(), expected_runtime="1h", checkpoint_root="abfs://ckpt")
    spot_ready(work().after(first), expected_runtime="2h", checkpoint_root="abfs://ckpt")


CASES: dict[str, Callable[[], None]] = {
    "defaults": case_defaults,
    "required": case_required,
    "placement_only": case_placement_only,
    "explicit_window": case_explicit_window,
    "loop_placement_only": case_loop_placement_only,
    "two_tasks": case_two_tasks,
}


def misuse_not_a_task() -> None:
    spot_ready("work", expected_runtime="1h", checkpoint_root="abfs://ckpt")


def misuse_sub_pipeline() -> None:
    spot_ready(inner(), expected_runtime="1h", checkpoint_root="abfs://ckpt")


def misuse_twice() -> None:
    task = spot_ready(work(), expected_runtime="1h", checkpoint_root="abfs://ckpt")
    spot_ready(task, expected_runtime="1h", checkpoint_root="abfs://ckpt")


def misuse_twice_placement_only() -> None:
    task = spot_ready(work(), expected_runtime="1h", checkpoint=False)
    spot_ready(task, expected_runtime="1h", checkpoint=False)


def misuse_in_loop() -> None:
    with dsl.ParallelFor(items=["a", "b"]):
        spot_ready(work(), expected_runtime="5m", checkpoint_root="abfs://ckpt")


def misuse_bad_step() -> None:
    spot_ready(work(), expected_runtime="1h", checkpoint_root="abfs://ckpt", step="a/b")


MISUSES: dict[str, Callable[[], None]] = {
    "not_a_task": misuse_not_a_task,
    "sub_pipeline": misuse_sub_pipeline,
    "twice": misuse_twice,
    "twice_placement_only": misuse_twice_placement_only,
    "in_loop": misuse_in_loop,
    "bad_step": misuse_bad_step,
}


def main(out: Path) -> None:
    for name, body in CASES.items():
        compiler.Compiler().compile(
            dsl.pipeline(name=name.replace("_", "-"))(body), str(out / f"{name}.yaml")
        )
    errors: dict[str, str] = {}
    for name, body in MISUSES.items():
        try:
            dsl.pipeline(name=name.replace("_", "-"))(body)
        except Exception as exc:
            errors[name] = f"{type(exc).__name__}: {exc}"
        else:
            errors[name] = "no error"
    (out / "errors.json").write_text(json.dumps(errors, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
