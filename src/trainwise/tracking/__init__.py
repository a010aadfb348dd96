"""Everything MLflow: the store, experiments, a run's lifecycle, what is logged, and queries.

The rest of trainwise never imports mlflow directly; `trainwise report` and `reproduce` read only what is
written here (see "What MLflow holds" in DESIGN.md).
"""

from trainwise.tracking.queries import find_finished_run, find_foundation_run, register_foundation
from trainwise.tracking.run import RunLogger, TrackedRun
from trainwise.tracking.store import Store, open_store

__all__ = [
    "RunLogger",
    "Store",
    "TrackedRun",
    "find_finished_run",
    "find_foundation_run",
    "open_store",
    "register_foundation",
]
