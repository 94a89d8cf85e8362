"""Ray Train on a local cluster: 2-worker DDP, checkpoints in the local S3 server, resume after a kill."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from deblur import storage
from deblur.checkpoint import load_checkpoint
from deblur.cli import main
from deblur.data.dataset import DataConfig
from deblur.data.synth_job import synthesize_dataset
from deblur.train.driver import TrainingRun, run_training
from deblur.train.step import TrainConfig, load_train_config
from faults import kill, own_ray_processes
from media import write_test_video

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.slow]


@pytest.fixture(scope="module")
def bucket(local_s3: object) -> str:
    """The module's own bucket: its dataset and its finished run are made once and shared."""
    uri = f"s3://train-{uuid.uuid4().hex[:12]}"
    storage.ensure_bucket(uri)
    return uri


@pytest.fixture(scope="module")
def dataset(bucket: str, tmp_path_factory: pytest.TempPathFactory, ray_session: None) -> str:
    """Synthesized once per module (about 15 s here); no test may change it."""
    videos = tmp_path_factory.mktemp("videos")
    for i in range(4):
        path = write_test_video(videos / f"v{i}.mp4", width=48, height=40, frames=160, fps=240, audio=False)
        storage.upload_file(path, f"{bucket}/raw/v{i}.mp4")
    config = DataConfig.from_dict({"scale": 1.0, "clip_frames": 8, "window_frames": 8, "min_window_frames": 5})
    run = synthesize_dataset(f"{bucket}/raw", f"{bucket}/data", config=config, cpus_per_task=0.5)
    assert run.usable == 4
    return f"{bucket}/data"


@dataclass(frozen=True)
class FinishedRun:
    config: TrainConfig
    runs: str  # the storage path it was run under
    run: TrainingRun


@pytest.fixture(scope="module")
def finished_run(dataset: str, bucket: str) -> FinishedRun:
    """A 2-worker DDP run to its end, once per module: its checks, and a later run of another model
    under its name, both start from it (each Ray Train run costs some 30 s of start-up here)."""
    config = _tiny(num_workers=2, batch_size=2, steps=6, checkpoint_every=3, eval_every=6)
    runs = f"{bucket}/runs"
    return FinishedRun(config, runs, run_training(config, dataset=dataset, storage_path=runs, name="ddp"))


@pytest.fixture(autouse=True)
def _cpus_given_back() -> Iterator[None]:
    """Each run gives its CPUs back when it ends: a placement group left behind once starved the
    next run's data tasks on this 2-CPU machine and hung it."""
    yield
    import ray

    timeout = 30.0
    deadline = time.monotonic() + timeout
    while (free := ray.available_resources().get("CPU", 0.0)) < ray.cluster_resources()["CPU"]:
        assert time.monotonic() < deadline, f"{free} CPUs free {timeout:.0f} s after the run ended"
        time.sleep(0.5)


def _tiny(**overrides: object) -> TrainConfig:
    return load_train_config("tiny", {"cpus_per_worker": 0.5, "eval_clips": 1, **overrides})


def test_two_worker_ddp_run_completes_and_checkpoints(finished_run: FinishedRun, dataset: str) -> None:
    config, runs, run = finished_run.config, finished_run.runs, finished_run.run
    assert run.metrics["step"] == 6
    # Both workers hold the same weights after their steps (they started from different seeds and
    # read different data: without DDP's broadcast and gradient averaging they would differ).
    assert run.metrics["replica_spread"] == 0.0
    # Validation scored the held-out clip with the trained weights: a finite PSNR of a real image.
    assert 5.0 < run.metrics["val_psnr"] < 60.0
    # Speed over every log window after the first (what `deblur bench train` prints).
    assert run.metrics["mean_samples_per_s"] > 0 and 0 <= run.metrics["mean_data_wait"] < 1
    assert run.checkpoint is not None and run.checkpoint.startswith(f"{runs}/ddp/")
    model = load_checkpoint(run.model).model
    assert load_checkpoint(run.model).provenance["step"] == 6
    assert sum(p.numel() for p in model.parameters()) > 0
    tensorboard = storage.list_files(storage.join_uri(run.checkpoint, "tensorboard"))
    assert tensorboard and "tfevents" in tensorboard[0]
    # Running the same name again resumes at the end: nothing left to do, no new checkpoint.
    again = run_training(config, dataset=dataset, storage_path=runs, name="ddp")
    assert again.metrics["step"] == 6 and again.checkpoint == run.checkpoint


def test_killed_worker_resumes_from_its_checkpoint(dataset: str, s3_bucket: str) -> None:
    # The workers read their own shards (reader "worker", the CPU presets'): the restarted worker
    # starts its reader thread again; the Ray Data reader is run by the other tests here.
    config = _tiny(steps=80, checkpoint_every=10, eval_every=80, log_every=10, max_failures=2, reader="worker")
    result: dict[str, TrainingRun | BaseException] = {}

    def train() -> None:
        try:
            result["run"] = run_training(config, dataset=dataset, storage_path=f"{s3_bucket}/runs", name="killed")
        except BaseException as error:
            result["run"] = error

    thread = threading.Thread(target=train)
    thread.start()
    deadline = time.monotonic() + 240
    # Wait until Ray Train has registered a checkpoint (its controller's snapshot names one: a
    # checkpoint uploaded but not yet collected from the worker dies with it), then kill the
    # worker process mid-run.
    while time.monotonic() < deadline and not _registered_checkpoint(f"{s3_bucket}/runs/killed"):
        time.sleep(0.2)
    # Only a Ray Train worker of this session's own Ray instance (a child of its raylet) is ever
    # killed: another Ray on the machine, e.g. a long training run, has its own raylet.
    pids = own_ray_processes("ray::RayTrainWorker")
    assert pids, "no Ray Train worker of this test session found"
    kill(pids[0])
    thread.join(timeout=300)
    run = result["run"]
    assert isinstance(run, TrainingRun), run
    assert run.metrics["step"] == 80  # ended at the final step: none skipped, none added
    assert 10 <= run.metrics["start_step"] < 80  # and it got there by resuming from a checkpoint
    final = load_checkpoint(run.model)
    assert final.provenance["step"] == 80
    state = torch.load(_download(storage.join_uri(run.checkpoint, "train_state.pt")), weights_only=True)
    assert state["step"] == 80 and state["scheduler"]["last_epoch"] == 80


def _registered_checkpoint(run: str) -> bool:
    try:
        snapshot = json.loads(storage.read_bytes(f"{run}/checkpoint_manager_snapshot.json"))
    except (storage.StorageError, ValueError):
        return False
    return snapshot.get("latest_checkpoint_result") is not None


def _list(prefix: str) -> list[str]:
    try:
        return storage.list_files(prefix)
    except storage.StorageError:
        return []


def _download(uri: str, name: str = "state.pt") -> Path:
    import tempfile

    path = Path(tempfile.mkdtemp()) / name
    storage.download_file(uri, path)
    return path


def test_tune_runs_trials_as_train_runs_stops_poor_ones_early_and_tabulates(dataset: str, s3_bucket: str) -> None:
    from deblur.train.tune import run_tuning

    # Reports at every step, validation every other one: Tune must cope with reports that carry
    # no val_psnr (the real presets log far more often than they validate).
    base = _tiny(steps=4, checkpoint_every=2, eval_every=2, log_every=1)
    # Without the global skip a freshly initialised network outputs nothing like the image, so
    # the second trial's PSNR at the first validation is far below the first's: ASHA (grace 2,
    # trials one at a time, in grid order) stops it there.
    result = run_tuning(
        base,
        dataset=dataset,
        storage_path=f"{s3_bucket}/tune",
        name="sweep",
        space={"variant": ["strcnn_dtb"], "residual": [True, False]},
        grace_steps=2,
    )
    by_residual = {row["residual"]: row for row in result.rows}
    assert set(by_residual) == {True, False}
    for row in result.rows:
        assert row["error"] is None and row["val_psnr"] is not None
    assert by_residual[True]["step"] == 4 and not by_residual[True]["stopped_early"]
    assert by_residual[False]["step"] == 2 and by_residual[False]["stopped_early"]
    assert result.rows[0]["val_psnr"] >= result.rows[1]["val_psnr"]  # best first
    assert "| variant | residual | steps | val PSNR |" in result.table and "stopped early" in result.table
    # Each trial was a Ray Train run with its own checkpoints in object storage.
    runs = {uri.split("/")[4] for uri in storage.list_files(f"{s3_bucket}/tune") if uri.endswith("model.safetensors")}
    assert len(runs) == 2 and all(r.startswith("sweep-") for r in runs)


def test_failures_end_the_run_with_one_clear_line(
    finished_run: FinishedRun, dataset: str, s3_bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    def train(name: str, *settings: str, data: str = dataset, runs: str = f"{s3_bucket}/runs") -> tuple[int, list[str]]:
        capsys.readouterr()
        args = ["train", data, "--storage", runs, "--name", name, "--preset", "tiny"]
        for setting in ("cpus_per_worker=0.5", "eval_clips=1", *settings):
            args += ["--set", setting]
        code = main(args)
        err = capsys.readouterr().err.strip().splitlines()
        assert not any("Traceback" in line for line in err), err
        return code, err

    # The finished run's name asked to go on with another model: stopped at once ("stopped": the
    # workers ended the run themselves, it was not failed and retried max_failures times).
    code, err = train("ddp", "steps=9", "variant=cnn", runs=finished_run.runs)
    assert code == 1 and err[-1].startswith("deblur: error: run ddp stopped: "), err
    assert f"{finished_run.runs}/ddp/checkpoint_" in err[-1]  # the checkpoint by its URI
    assert "checkpoint is strcnn_dtb m=1" in err[-1] and "the run trains cnn" in err[-1]

    # Adam moves every weight by about lr: with lr = 1e30 the next forward pass overflows. Two DDP
    # workers both stop at that step (none left waiting in a collective), naming it and its windows.
    code, err = train("diverged", "lr=1e30", "num_workers=2", "checkpoint_every=1")
    assert code == 1 and err[-1].startswith("deblur: error: run diverged stopped: "), err
    assert re.search(
        r"(loss is (nan|inf) at|parameters are not finite after) step \d+ on worker \d "
        r"\(batch windows \['v\d\.mp4/clip-\d{3}/window-\d+'",
        err[-1],
    ), err[-1]
    assert err[-1].endswith("; the latest checkpoint is left as it was") and err[-1].count("left as it was") == 1
    checkpoints = storage.list_files(f"{s3_bucket}/runs/diverged", patterns=("model.safetensors",))
    assert checkpoints  # step 1 was still finite and saved; nothing after it
    for uri in checkpoints:
        model = load_checkpoint(_download(uri, "model.safetensors")).model
        assert all(torch.isfinite(p).all() for p in model.parameters()), uri

    # Any other error in a worker: Ray Train retries it max_failures times, then the worker's own
    # message, on one line. Here a copy of the dataset has lost its evaluation clips, which the
    # first validation reads (its manifest names them relative to the dataset, so the copy's own).
    broken = f"{s3_bucket}/broken-data"
    for uri in storage.list_files(dataset):
        if not uri.startswith(f"{dataset}/eval/"):
            storage.write_bytes(broken + uri[len(dataset) :], storage.read_bytes(uri))
    code, err = train("broken", "eval_every=1", "max_failures=0", data=broken)
    assert code == 1 and err[-1].startswith("deblur: error: run broken failed: worker 0: "), err
    assert f"{broken}/eval/" in err[-1]
