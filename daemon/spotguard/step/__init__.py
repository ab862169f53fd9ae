"""Checkpoint-and-yield for Kubeflow pipeline steps on spot nodes (runs in the step's container).

Needs only the standard library, plus fsspec for other storage, and adlfs (or azure-storage-blob)
for ``abfs://`` locations; it imports nothing of the spotguard agent::

    pip install --no-deps spotguard && pip install fsspec adlfs

Work in units; the state after each unit is consistent, and that is where checkpoints happen::

    from spotguard.step import Checkpointer

    files = sorted(input_dir.glob("*.csv"))
    with Checkpointer.from_env() as ckpt:        # endpoint + SIGTERM handler, from SPOTGUARD_*
        last = ckpt.restore()                     # latest good checkpoint of this step, or None
        rows = last.state["rows"] if last else 0
        for i in ckpt.units(len(files), start=last.progress if last else 0,
                            state=lambda: {"rows": rows}):
            rows += count_rows(files[i])          # one unit of work
    print(rows)

``units`` is ``range`` with a safe point after every unit: it saves the state every
``save_every`` units (``SPOTGUARD_CHECKPOINT_EVERY``, default 1, 0 = only when asked), and once a
checkpoint has been requested — by the spotguard agent over HTTP or by SIGTERM — it saves it,
answers the agent ``200 {"location", "bytes"}`` and ends the process with ``YIELD_EXIT_CODE``
(75) by raising ``YieldExit``. Kubeflow's retry (``set_retry``) then runs the step again on
another node, where ``restore()`` returns that checkpoint. Without ``units``: call
``ckpt.safe_point(state, progress=...)`` wherever the state is consistent; ``ckpt.save(...)``
saves without yielding; ``ckpt.requested`` is a ``threading.Event`` set once a checkpoint is
asked for, for work that wants to cut a long unit short.

The request handler and the SIGTERM handler never touch the state: they only ask, and the thread
that owns the state saves it at its next safe point. Keep a unit well under the notice (a Preempt
gives 30 s at best) or call ``safe_point`` inside it too. Protocol, settings and exit code:
docs/checkpoint.md.
"""

from spotguard.step.checkpoint import Checkpoint, CheckpointStore, Saved
from spotguard.step.checkpointer import YIELD_EXIT_CODE, Checkpointer, YieldExit
from spotguard.step.errors import (
    AlreadyExists,
    CheckpointError,
    ConcurrentWriter,
    ConditionFailed,
    SettingError,
    StaleWriter,
    StoreError,
)
from spotguard.step.store import open_store

__all__ = [
    "YIELD_EXIT_CODE",
    "AlreadyExists",
    "Checkpoint",
    "CheckpointError",
    "CheckpointStore",
    "Checkpointer",
    "ConcurrentWriter",
    "ConditionFailed",
    "Saved",
    "SettingError",
    "StaleWriter",
    "StoreError",
    "YieldExit",
    "open_store",
]
