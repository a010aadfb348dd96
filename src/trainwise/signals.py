"""SIGINT (Ctrl+C) and SIGTERM (SLURM preemption, `docker stop`, Kubernetes) for the whole life of a run.

Python's defaults would leave the MLflow run RUNNING: SIGTERM kills the process on the spot, and a
KeyboardInterrupt inside `Trainer.fit` makes Lightning call `sys.exit(1)`. Here a signal raises `Interrupted`
(not a KeyboardInterrupt), which every layer passes up, so the run ends KILLED and can be resumed:

- while the run prepares or finishes (data, feature caching, foundation download, artifact upload): at once;
- while it trains: the first signal asks training to stop after the current batch (`callbacks.GracefulStop`
  decides where, so that `last.ckpt` always holds a whole epoch); a second one stops at once, for a job that hangs.

Hand-written: Lightning's own SIGTERM handling raises SystemExit at an epoch end, and only inside `fit`.
"""

from __future__ import annotations

import signal
import sys
import threading

from trainwise.errors import Interrupted

HANDLED = (signal.SIGINT, signal.SIGTERM)


class RunSignals:
    """Context manager: SIGINT/SIGTERM handling while one run lives (main thread only; elsewhere a no-op)."""

    def __init__(self):
        self.received: int | None = None  # the first signal, once one came
        self.training = False  # set by GracefulStop while Lightning trains
        self._previous: dict[int, object] = {}

    def __enter__(self) -> RunSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.getsignal(signum) for signum in HANDLED}
            self.install()
        return self

    def __exit__(self, *exc) -> bool:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        return False

    def install(self) -> None:
        """(Re)install the handler: Lightning puts its own SIGTERM handler in place while it fits."""
        if self._previous:
            for signum in HANDLED:
                signal.signal(signum, self._handle)

    def _handle(self, signum, frame) -> None:
        first = self.received is None
        if first:
            self.received = signum
        name = signal.Signals(signum).name
        if self.training and first:
            print(f"\nReceived {name}: stopping after this batch ({name} again: at once).", file=sys.stderr, flush=True)
            return
        print(f"\nReceived {name}: stopping now.", file=sys.stderr, flush=True)
        raise Interrupted(signum)
