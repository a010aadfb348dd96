"""A lock held through the tracking store itself, for jobs on different machines that share one MLflow server.

A file lock only reaches the processes of one machine (or one shared filesystem); SLURM nodes that share a
tracking server share nothing else for sure. MLflow offers one atomic operation every store has: an experiment
name is unique, so `create_experiment(name)` succeeds for exactly one caller. The lease is such an experiment:
its holder creates it, refreshes a heartbeat tag on it from a daemon thread, and on release renames it out of the
way and deletes it (MLflow keeps deleted experiments' names reserved, so the rename frees the name). A holder
that dies without releasing (SIGKILL, a lost node) stops the heartbeat; a waiter that sees the same heartbeat
for `ttl_s` seconds of its own clock (no clock agreement between machines is needed) breaks the lease by
renaming that experiment, and competes for a new one.

Nothing in MLflow or filelock does this across machines; it is written here for the foundation cache, where two
nodes training the same foundation would waste hours and leave two "the" foundations.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid

log = logging.getLogger(__name__)

PREFIX = "trainwise-lease-"
HOLDER_TAG = "trainwise.lease_holder"
HEARTBEAT_TAG = "trainwise.lease_heartbeat"


class StoreLease:
    """`with StoreLease(client, "foundation-<hash>"):` holds the lease for the block (re-entrant it is not)."""

    def __init__(self, client, name: str, ttl_s: float = 120.0, heartbeat_s: float = 10.0, poll_s: float = 2.0):
        self.client, self.name = client, PREFIX + name
        self.ttl_s, self.heartbeat_s, self.poll_s = ttl_s, heartbeat_s, poll_s
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._experiment_id: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> StoreLease:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        seen: tuple[str, str] | None = None  # (experiment id, heartbeat) last seen on someone else's lease
        seen_since = time.monotonic()
        told = False
        while True:
            if self._try_create():
                return
            lease = self.client.get_experiment_by_name(self.name)
            if lease is None:  # released between our create and our look: try again at once
                continue
            beat = (lease.experiment_id, lease.tags.get(HEARTBEAT_TAG, ""))
            if beat != seen:
                seen, seen_since = beat, time.monotonic()
            elif time.monotonic() - seen_since >= self.ttl_s:
                holder = lease.tags.get(HOLDER_TAG, "?")
                log.warning("lease %s: %s sent no heartbeat for %.0f s; breaking it", self.name, holder, self.ttl_s)
                self._retire(lease.experiment_id, "broken")
                continue
            if not told:
                holder = lease.tags.get(HOLDER_TAG, "?")
                print(f"Waiting for {holder} (another job on this tracking store) to finish {self.name[len(PREFIX):]}.",
                      flush=True)  # fmt: skip
                told = True
            time.sleep(self.poll_s)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.heartbeat_s + 5)
        if self._experiment_id is not None:
            self._retire(self._experiment_id, "released")
            self._experiment_id = None

    def _try_create(self) -> bool:
        from mlflow.exceptions import MlflowException

        tags = {
            HOLDER_TAG: self.holder,
            HEARTBEAT_TAG: "0",
            "mlflow.note.content": f"trainwise: {self.holder} holds this lock; the experiment goes when it ends.",
        }
        try:
            self._experiment_id = self.client.create_experiment(self.name, tags=tags)
        except MlflowException as err:
            if "already exists" in str(err) or getattr(err, "error_code", "") == "RESOURCE_ALREADY_EXISTS":
                return False
            raise
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"lease {self.name}", daemon=True)
        self._thread.start()
        return True

    def _beat(self) -> None:
        count = 0
        while not self._stop.wait(self.heartbeat_s):
            count += 1
            try:
                self.client.set_experiment_tag(self._experiment_id, HEARTBEAT_TAG, str(count))
            except Exception as err:  # noqa: BLE001 - a missed beat is retried; the TTL is many beats long
                log.warning("lease %s: heartbeat failed (%s)", self.name, str(err).splitlines()[0] if str(err) else err)

    def _retire(self, experiment_id: str, how: str) -> None:
        """Free the name (rename) and hide the experiment (delete). Renaming by id is harmless if another waiter
        retired it first: the name it frees is then already free."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.rename_experiment(experiment_id, f"{PREFIX}{how}-{uuid.uuid4().hex}")
            self.client.delete_experiment(experiment_id)
        except MlflowException as err:
            log.warning("lease %s: could not %s it (%s)", self.name, how, str(err).splitlines()[0])
