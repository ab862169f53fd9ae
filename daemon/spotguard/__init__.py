"""spotguard: deadline-aware preemption handling for Azure spot nodes running Kubeflow Pipelines."""

__version__ = "0.1.0"
