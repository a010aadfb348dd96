"""trainwise's SLURM launcher for `hydra/launcher=slurm` (Hydra finds launchers in the hydra_plugins package)."""
