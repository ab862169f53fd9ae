"""Exceptions of the step helper (it shares nothing with the agent, not even its error types).

CheckpointError
├── SettingError          an invalid or missing SPOTGUARD_* setting (also a ValueError)
├── StoreError            the checkpoint storage failed (I/O, network, permissions, credentials)
│   ├── AlreadyExists     a create-only write found the name taken
│   └── ConditionFailed   a conditional write lost a race (etag or content changed under it)
├── ConcurrentWriter      another writer committed a newer checkpoint at the same location
└── StaleWriter           a later retry of this step already writes to the same location
"""

from __future__ import annotations


class CheckpointError(Exception):
    pass


class SettingError(CheckpointError, ValueError):
    pass


class StoreError(CheckpointError):
    pass


class AlreadyExists(StoreError):
    pass


class ConditionFailed(StoreError):
    pass


class ConcurrentWriter(CheckpointError):
    pass


class StaleWriter(CheckpointError):
    pass
