"""Everything MLflow: the store, experiments, a run's lifecycle, what is logged, and queries.

`trainwise report` and `reproduce` read only what is written here (docs/tracking.md).
The run lifecycle (`trainwise.tracking.run`: TrackedRun, RunLogger) needs Lightning and is imported from its
module directly, so that reading the store (`report`) never loads torch.
"""

from trainwise.tracking.queries import find_finished_run, find_foundation_run, register_foundation
from trainwise.tracking.store import Store, open_store

__all__ = ["Store", "find_finished_run", "find_foundation_run", "open_store", "register_foundation"]
