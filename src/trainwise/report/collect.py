"""Read a sweep or an experiment back from MLflow: the runs, their histories and their foundations."""

from __future__ import annotations

from dataclasses import dataclass, field

from trainwise.errors import UserError


@dataclass
class RunRecord:
    run_id: str
    status: str
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]
    start_ms: int
    val_acc: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, val/acc) per epoch
    # (optimizer steps, seconds of fit, val/acc) per epoch: the fit time is cost/fit_seconds at that epoch's end
    val_curve: list[tuple[int, float | None, float]] = field(default_factory=list)
    foundation_seconds: float | None = None  # fit time of the full run a fine-tune started from

    @property
    def strategy(self) -> str:
        return self.tags.get("trainwise.strategy", "?")

    @property
    def failed(self) -> bool:
        return self.status != "FINISHED"

    @property
    def on_target(self) -> bool:
        """Trained on the target data; a `full` run (a foundation) trains and validates on the source data."""
        return self.params.get("strategy.data") != "source" and "trainwise.foundation_hash" not in self.tags

    @property
    def labelled_size(self) -> int:
        """Every labelled target image the run used: trained on, or selected its checkpoint on."""
        params = self.params
        if "data.labelled_size" in params:
            return int(float(params["data.labelled_size"]))
        # A run logged before data.labelled_size: its split sizes.
        return int(float(params.get("data.train_size", "0"))) + int(float(params.get("data.val_size", "0")))

    @property
    def pretraining_unknown(self) -> bool:
        """Started from a foundation whose fit time this store does not hold (a file, timm's weights, a run of
        another store or deleted, a run that logged no cost): its total cost is unknown, not just its fit."""
        return bool(self.tags.get("trainwise.foundation_run")) and self.foundation_seconds is None


def _record(client, run, with_history: bool) -> RunRecord:
    record = RunRecord(
        run_id=run.info.run_id,
        status=run.info.status,
        tags=dict(run.data.tags),
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
        start_ms=run.info.start_time,
    )
    if with_history and not record.failed:
        history = sorted(client.get_metric_history(run.info.run_id, "val/acc"), key=lambda m: (m.step, m.timestamp))
        record.val_acc = [((m.timestamp - run.info.start_time) / 1000.0, m.value) for m in history]
        costs = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "cost/fit_seconds"))
        if len(costs) < len(history):  # a run from before fit time was logged per epoch: only the total is known
            costs = []
        record.val_curve = [(m.step, _fit_seconds_at(costs, m.step), m.value) for m in history]
    return record


def _fit_seconds_at(costs: list[tuple[int, float]], step: int) -> float | None:
    """The fit time logged at the end of the epoch validated at `step` (the first at or after it)."""
    return next((seconds for at, seconds in costs if at >= step), None)


def collect_runs(
    store, sweep_run_id: str | None = None, experiment: str | None = None, pool: bool = False
) -> tuple[list[RunRecord], str]:
    """Job runs of a sweep (its children, plus finished runs it reused) or of an experiment. For an experiment,
    by default one sweep's worth: the newest run of each setting and seed, reproduced runs left out (`pool`: every
    run, as recorded). Returns the records and the experiment id."""
    client = store.client
    if sweep_run_id:
        try:
            parent = client.get_run(sweep_run_id)
        except Exception:  # noqa: BLE001
            raise UserError(f"--sweep {sweep_run_id}: no such run in {store.uri}") from None
        experiment_id = parent.info.experiment_id
        runs = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{sweep_run_id}'", max_results=5000)
        reused = [k.split(".", 2)[2] for k in parent.data.tags if k.startswith("trainwise.reused.")]
        runs += [client.get_run(run_id) for run_id in reused if run_id not in {r.info.run_id for r in runs}]
        runs += _earlier_trials(client, parent, experiment_id, {r.info.run_id for r in runs})
    else:
        found = client.get_experiment_by_name(experiment or "")
        if found is None:
            names = ", ".join(e.name for e in client.search_experiments())
            raise UserError(f"--experiment {experiment!r}: no such experiment in {store.uri}; there are: {names}")
        experiment_id = found.experiment_id
        runs = client.search_runs([experiment_id], "tags.`trainwise.role` = 'job'", max_results=5000)
    records = [_record(client, run, with_history=True) for run in runs if run.data.tags.get("trainwise.role") == "job"]
    if not records:
        raise UserError("no trainwise runs to report on there yet; run `trainwise train -m ...` first")
    if experiment and not pool:
        records = _one_of_each(records)
    _attach_foundation_costs(client, records)
    records.sort(key=lambda r: r.start_ms)
    return records, experiment_id


def _earlier_trials(client, parent, experiment_id: str, have: set[str]) -> list:
    """An Optuna sweep that continued a study: the trials earlier commands ran for it (other parents), so that the
    report covers the whole study."""
    study, storage = parent.data.tags.get("trainwise.optuna_study"), parent.data.tags.get("trainwise.optuna_storage")
    if not study:
        return []
    found = client.search_runs([experiment_id], f"tags.`trainwise.optuna_study` = '{study}'", max_results=5000)
    return [r for r in found if r.info.run_id not in have and r.data.tags.get("trainwise.optuna_storage") == storage]


def _one_of_each(records: list[RunRecord]) -> list[RunRecord]:
    """The newest run of each (setting, seed), reproductions left out: an experiment that ran the same sweep
    twice, or reproduced a run, is not counted as more seeds."""
    newest: dict[tuple, RunRecord] = {}
    for record in sorted(records, key=lambda r: r.start_ms):
        if "trainwise.reproduced_from" in record.tags:
            continue
        setting = record.tags.get("trainwise.setting") or record.tags.get("trainwise.config_hash") or record.run_id
        newest[(record.strategy, setting, record.params.get("seed"))] = record
    return list(newest.values())


def _attach_foundation_costs(client, records: list[RunRecord]) -> None:
    known = {r.run_id: r for r in records}
    for record in records:
        foundation = record.tags.get("trainwise.foundation_run")
        if not foundation:
            continue
        if foundation in known:
            record.foundation_seconds = known[foundation].metrics.get("cost/fit_seconds")
            continue
        try:
            record.foundation_seconds = client.get_run(foundation).data.metrics.get("cost/fit_seconds")
        except Exception:  # noqa: BLE001 - a local file or a deleted run: the cost is unknown
            record.foundation_seconds = None
