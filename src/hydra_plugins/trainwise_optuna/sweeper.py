"""The Hydra side of trainwise's Optuna search: Hydra instantiates this sweeper for `hydra/sweeper=trainwise_optuna`
(which `hparams_search=optuna` selects); the study itself is run by trainwise.hparams_search."""

from __future__ import annotations

import sys

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper


class TrainwiseOptunaSweeper(Sweeper):
    def __init__(self) -> None:
        self.config = None
        self.launcher = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> None:
        from trainwise.errors import UserError
        from trainwise.hparams_search import run_study

        try:
            run_study(self.config, list(arguments), lambda overrides, idx: self.launcher.launch(overrides, idx))
        except UserError as err:
            # SystemExit, not the error: Hydra prints any Exception with a traceback and exits 1.
            print(f"error: {err}", file=sys.stderr, flush=True)
            raise SystemExit(err.exit_code) from None
