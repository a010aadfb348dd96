"""trainwise's Hydra sweeper for `hparams_search=optuna` (Hydra finds sweepers in the hydra_plugins package)."""
