"""The Kubeflow "build a pipeline" demo on spot nodes: download a .tgz of CSV files, extract it and
concatenate the CSV files into one, checkpointing after every file.

    python examples/concat_csv_pipeline.py [OUTPUT]      # default: concat_csv_pipeline.yaml here

needs kfp and kfp-kubernetes (``pip install 'spotguard[kfp]'``; in this repository ``make setup``
builds ``.cache/kfp-venv``, so ``.cache/kfp-venv/bin/python examples/concat_csv_pipeline.py``
regenerates the committed ``concat_csv_pipeline.yaml``; tests/kfp/test_example.py fails when the
two differ). Upload the YAML to Kubeflow Pipelines as usual.

Both tasks are made spot-ready with ``spotguard.kfp.spot_ready``: spot toleration and affinity,
5 retries 5 minutes apart and a retry window that fits them. The concatenation is the step of
``examples/concat_csv_step.py`` (one CSV file per unit of work, checkpointed under
``CHECKPOINT_ROOT/<run>/concat-csv``), so a step stopped by a preemption resumes on another node
from the last file it finished. The download does not use ``spotguard.step``: it only gets
placement and retries (``checkpoint=False``).

The concatenation runs in ``STEP_IMAGE``, an image with spotguard (``--no-deps``), fsspec and
adlfs, and the step script::

    FROM python:3.11-slim
    COPY wheelhouse/spotguard-0.1.0-py3-none-any.whl /tmp/
    RUN pip install --no-cache-dir fsspec adlfs \\
     && pip install --no-cache-dir --no-deps /tmp/spotguard-0.1.0-py3-none-any.whl
    COPY examples/concat_csv_step.py /opt/spotguard/concat_csv_step.py

Push it to your registry and set ``STEP_IMAGE``; set ``CHECKPOINT_ROOT`` to a Blob container the
pipeline's service account can write (e.g. with AKS workload identity), then regenerate. Create
the token Secret in the run's namespace before the first run (README, "Checkpointing pipeline
steps").
"""

# No `from __future__ import annotations`: KFP reads the components' annotations as types.
import sys
from pathlib import Path

from kfp import compiler, dsl
from spotguard.kfp import spot_ready

#: The CSV archive of the Kubeflow Pipelines "build a pipeline" tutorial (its CSV files sit at the
#: top level of the archive, where the step looks for them).
DEFAULT_URL = "https://storage.googleapis.com/ml-pipeline-playground/iris-csv-files.tar.gz"
STEP_IMAGE = "myregistry.azurecr.io/spotguard-step:0.1.0"
CHECKPOINT_ROOT = "abfs://checkpoints/concat-csv"

DOWNLOAD = """\
import os, sys, urllib.request
os.makedirs(os.path.dirname(sys.argv[2]), exist_ok=True)
urllib.request.urlretrieve(sys.argv[1], sys.argv[2])
"""
# exec: the step is the process the launcher runs, so it gets the signals, and its exit code (75
# when it yielded after a checkpoint) is the step's.
CONCAT = """\
work=$(mktemp -d)
tar -xzf "$0" -C "$work"
mkdir -p "$(dirname "$1")"
exec python /opt/spotguard/concat_csv_step.py --input "$work" --output "$1"
"""


@dsl.container_component
def download(url: str, archive: dsl.Output[dsl.Artifact]) -> dsl.ContainerSpec:
    """Download the archive."""
    return dsl.ContainerSpec(
        image="python:3.11-slim", command=["python", "-c", DOWNLOAD], args=[url, archive.path]
    )


@dsl.container_component
def concat_csv(
    archive: dsl.Input[dsl.Artifact], merged: dsl.Output[dsl.Dataset]
) -> dsl.ContainerSpec:
    """Extract the archive and concatenate its CSV files (examples/concat_csv_step.py)."""
    return dsl.ContainerSpec(
        image=STEP_IMAGE, command=["sh", "-ec", CONCAT], args=[archive.path, merged.path]
    )


@dsl.pipeline(
    name="concat-csv-on-spot",
    description="Download a .tgz of CSV files and concatenate them, on spot nodes, checkpointed.",
)
def concat_csv_pipeline(url: str = DEFAULT_URL) -> None:
    fetched = spot_ready(download(url=url), expected_runtime="10m", checkpoint=False)
    spot_ready(
        concat_csv(archive=fetched.outputs["archive"]),
        expected_runtime="30m",
        checkpoint_root=CHECKPOINT_ROOT,
    )


def main(argv: list[str]) -> int:
    output = Path(argv[0]) if argv else Path(__file__).with_suffix(".yaml")
    compiler.Compiler().compile(concat_csv_pipeline, str(output))
    print(output)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
