"""Ray Tune over training runs: each trial is a Ray Train run (``deblur.train.driver.run_training``).

``run_tuning`` grid-searches settings (default: the paper's Table 1 variants x m, and the
optimiser's two knobs), stopping trials whose validation PSNR falls behind early (ASHA).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deblur.train.driver import run_training
from deblur.train.step import TrainConfig

__all__ = ["TABLE1_SPACE", "TuningResult", "format_tuning_table", "run_tuning"]

# The paper's Table 1 grid (variant x number of input frames) plus the optimiser's two knobs, the
# learning rate (the paper's 1e-4 and the faster cpu-small one) and lambda of Eq. 4 (the paper's
# 1e-5 and ten times that): 36 trials, most of them stopped early by ASHA.
TABLE1_SPACE: dict[str, list[Any]] = {
    "variant": ["cnn", "strcnn", "strcnn_dtb"],
    "m": [1, 2, 3],
    "lr": [1e-4, 5e-4],
    "weight_decay": [1e-5, 1e-4],
}


def _validation_reports_to_tune() -> Any:
    """A ``TuneReportCallback`` that passes on only the reports that carry a validation PSNR.

    Workers report at every log step, but only evaluation steps carry ``val_psnr``, the metric
    Tune's scheduler ranks trials by; Tune rejects a result without it. Filtering here keeps the
    Train side unchanged (every worker reports equally often) and lets ASHA compare trials only
    on fresh validations.
    """
    from ray.tune.integration.ray_train import TuneReportCallback

    class ValidationReports(TuneReportCallback):
        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            if metrics and "val_psnr" in metrics[0]:
                TuneReportCallback.after_report(self, run_context, metrics, checkpoint)

    return ValidationReports()


def _tune_trial(trial: dict[str, Any]) -> None:
    """One Tune trial: drives a Ray Train run whose reports are passed on to Tune."""
    import ray.tune

    config = TrainConfig.from_dict({**trial["base"], **trial["params"]})
    name = f"{trial['name']}-{ray.tune.get_context().get_trial_id()}"
    run_training(
        config,
        dataset=trial["dataset"],
        storage_path=trial["storage_path"],
        name=name,
        callbacks=[_validation_reports_to_tune()],
    )


@dataclass(frozen=True)
class TuningResult:
    rows: list[dict[str, Any]]  # one per trial, best first
    table: str  # Markdown

    @property
    def best(self) -> dict[str, Any]:
        return self.rows[0]


def run_tuning(
    base: TrainConfig,
    *,
    dataset: str,
    storage_path: str,
    name: str,
    space: dict[str, list[Any]] | None = None,
    max_concurrent: int = 1,
    grace_steps: int | None = None,
    trial_cpus: float = 0.1,
) -> TuningResult:
    """Grid-search ``space`` (default: Table 1's variants x m) with early stopping of poor trials.

    Every trial trains ``base`` with its overrides as its own Ray Train run (DDP, checkpoints,
    resume all as in ``run_training``). ASHA stops trials whose validation PSNR falls behind at
    ``grace_steps``, 2x, 4x, ... (default: the first validation). The Tune driver of each trial
    needs almost no CPU (``trial_cpus``): the work happens in its Train workers.
    """
    space = space or TABLE1_SPACE
    unknown = sorted(set(space) - set(TrainConfig.model_fields))
    if unknown:
        raise ValueError(f"unknown training setting(s) in the search space: {unknown}")
    # Every value checked (and typed) here, so a bad one fails before any trial starts.
    space = {
        key: [getattr(TrainConfig.from_dict({**base.to_dict(), key: value}), key) for value in values]
        for key, values in space.items()
    }
    import ray.tune
    from ray.tune.schedulers import ASHAScheduler

    from deblur import storage
    from deblur.cluster import connect_ray

    dataset, storage_path = storage.absolute(dataset), storage.absolute(storage_path)
    connect_ray()
    filesystem, path = storage.filesystem_for(storage_path)
    grid = {key: ray.tune.grid_search(list(values)) for key, values in space.items()}
    scheduler = ASHAScheduler(
        time_attr="step",
        metric="val_psnr",
        mode="max",
        max_t=base.steps,
        grace_period=grace_steps or base.eval_every,
        reduction_factor=2,
    )
    tuner = ray.tune.Tuner(
        ray.tune.with_resources(_tune_trial, {"CPU": trial_cpus}),
        param_space={
            "base": base.to_dict(),
            "params": grid,
            "dataset": dataset,
            "storage_path": storage_path,
            "name": name,
        },
        tune_config=ray.tune.TuneConfig(scheduler=scheduler, max_concurrent_trials=max_concurrent),
        run_config=ray.tune.RunConfig(name=name, storage_path=path, storage_filesystem=filesystem),
    )
    grid_result = tuner.fit()
    rows = []
    for result in grid_result:
        metrics = result.metrics or {}
        rows.append(
            {
                **result.config["params"],
                "step": metrics.get("step"),
                "val_psnr": metrics.get("val_psnr"),
                "val_input_psnr": metrics.get("val_input_psnr"),
                "stopped_early": (metrics.get("step") or 0) < base.steps,
                "error": None if result.error is None else str(result.error).splitlines()[0],
            }
        )
    rows.sort(key=lambda r: -(r["val_psnr"] if r["val_psnr"] is not None else float("-inf")))
    return TuningResult(rows=rows, table=format_tuning_table(rows, list(space)))


def format_tuning_table(rows: list[dict[str, Any]], keys: list[str]) -> str:
    header = [*keys, "steps", "val PSNR", "input PSNR", "note"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for row in rows:
        psnr = "-" if row["val_psnr"] is None else f"{row['val_psnr']:.2f}"
        base = "-" if row["val_input_psnr"] is None else f"{row['val_input_psnr']:.2f}"
        note = row["error"] or ("stopped early" if row["stopped_early"] else "")
        cells = [str(row[k]) for k in keys] + [str(row["step"]), psnr, base, note]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
