"""A preemption-safe pipeline step: concatenate CSV files into one, one file per unit of work.

    python examples/concat_csv_step.py --input DIR --output FILE [--pace SECONDS]

It reads every ``*.csv`` in DIR in name order and writes FILE: the first file's header, then the
data rows of every file (the Kubeflow "build a pipeline" demo's concatenation step). It needs
only ``spotguard.step`` and the standard library, and reads its checkpoint settings from the
environment (``SPOTGUARD_CHECKPOINT_URL``, the token, ``KFP_RETRY_INDEX``; docs/checkpoint.md).

The checkpointed state is the output so far, so a retry on another node, which starts with an
empty output folder, rebuilds FILE from the checkpoint alone. Progress is the number of input
files done. (For outputs too large to keep in memory, write each unit's part to the checkpoint
storage instead and keep only the part list in the state.)

It prints one JSON line per event on stdout (``restored``, ``unit``, ``done``); ``--pace`` slows
each unit down, for demos and tests. Exit codes: 0 done, 75 yielded after a checkpoint (retry
it), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
from pathlib import Path

from spotguard.step import Checkpointer


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def rows_of(path: Path, *, with_header: bool) -> bytes:
    """The CSV rows of ``path`` re-written canonically (``\\n`` line ends, minimal quoting)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    with path.open(newline="", encoding="utf-8") as f:
        for number, row in enumerate(csv.reader(f)):
            if number == 0 and not with_header:
                continue
            writer.writerow(row)
    return out.getvalue().encode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--input", type=Path, required=True, help="folder of *.csv files")
    parser.add_argument("--output", type=Path, required=True, help="the concatenated CSV")
    parser.add_argument("--pace", type=float, default=0.0, help="extra seconds per file")
    args = parser.parse_args(argv)
    files = sorted(args.input.glob("*.csv"))

    with Checkpointer.from_env() as ckpt:
        last = ckpt.restore()
        output = bytearray(last.data if last else b"")
        done = int(last.progress) if last else 0
        if last:
            emit("restored", progress=done, seq=last.seq, retry_index=last.meta["retry_index"])
        # `output` is updated in place, so the helper saves whatever it holds after each unit.
        for index in ckpt.units(len(files), start=done, state=output):
            output += rows_of(files[index], with_header=index == 0)
            if args.pace:
                time.sleep(args.pace)
            emit("unit", index=index, file=files[index].name)

    # The output is written once, whole, under a temporary name first: a step killed here is
    # retried and rewrites it from the last checkpoint.
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(f".{args.output.name}.tmp")
    tmp.write_bytes(output)
    os.replace(tmp, args.output)
    emit("done", files=len(files), bytes=len(output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
