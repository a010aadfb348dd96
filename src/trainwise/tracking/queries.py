"""Questions asked of the store."""

from __future__ import annotations

FOUNDATION_HASH_TAG = "trainwise.foundation_hash"


def find_foundation_run(store, foundation_hash: str):
    """The newest FINISHED `full` run, in any experiment of the store, trained with these foundation settings."""
    experiments = [e.experiment_id for e in store.client.search_experiments()]
    if not experiments:
        return None
    runs = store.client.search_runs(
        experiment_ids=experiments,
        filter_string=f"tags.`{FOUNDATION_HASH_TAG}` = '{foundation_hash}' AND attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def find_finished_run(store, experiment_id: str, config_hash: str):
    """The newest FINISHED job run of the experiment with this config hash."""
    runs = store.client.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"tags.`trainwise.config_hash` = '{config_hash}' AND attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def register_foundation(store, run_id: str, model: str, source: str, model_uri: str | None = None) -> str:
    """Register a full run's MLflow Model as a new version of `trainwise-<model>-<source>` and move the alias
    `newest` to it: `strategy.pretrained=models:/trainwise-<model>-<source>@newest` (or `/latest`, MLflow's own
    name for the highest version; MLflow reserves `latest` as an alias name)."""
    from mlflow.exceptions import MlflowException

    name = f"trainwise-{model}-{source}"
    try:
        store.client.create_registered_model(name)
    except MlflowException:
        pass  # already registered
    # The run's MLflow Model when it logged one (tracking.log_model), else its checkpoints folder.
    from trainwise.tracking.store import tracking_env

    location = model_uri or f"runs:/{run_id}/checkpoints"
    with tracking_env(store.uri):  # MLflow resolves a models:/ source through the environment's store
        model_id = model_uri[len("models:/") :] if model_uri and model_uri.startswith("models:/m-") else None
        version = store.client.create_model_version(name, source=location, run_id=run_id, model_id=model_id)
    store.client.set_registered_model_alias(name, "newest", version.version)
    return version.version
