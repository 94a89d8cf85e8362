"""Ray Train on a local cluster: 2-worker DDP, checkpoints in the local S3 server, resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from deblur import storage
from deblur.checkpoint import load_checkpoint
from deblur.data import DataConfig, synthesize_dataset
from deblur.train import TrainConfig, TrainingRun, load_train_config, run_training
from media import write_test_video

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.slow]


@pytest.fixture
def dataset(s3_bucket: str, tmp_path: Path) -> str:
    for i in range(4):
        path = write_test_video(tmp_path / f"v{i}.mp4", width=48, height=40, frames=160, fps=240, audio=False)
        storage.upload_file(path, f"{s3_bucket}/raw/v{i}.mp4")
    config = DataConfig.from_dict({"scale": 1.0, "clip_frames": 8, "window_frames": 8, "min_window_frames": 5})
    run = synthesize_dataset(f"{s3_bucket}/raw", f"{s3_bucket}/data", config=config, cpus_per_task=0.5)
    assert run.usable == 4
    return f"{s3_bucket}/data"


def _tiny(**overrides: object) -> TrainConfig:
    return load_train_config("tiny", {"cpus_per_worker": 0.5, "eval_clips": 1, **overrides})


def test_two_worker_ddp_run_completes_and_checkpoints(dataset: str, s3_bucket: str) -> None:
    config = _tiny(num_workers=2, batch_size=2, steps=6, checkpoint_every=3, eval_every=6)
    run = run_training(config, dataset=dataset, storage_path=f"{s3_bucket}/runs", name="ddp")
    assert run.metrics["step"] == 6
    assert run.metrics["val_psnr"] > 0
    assert run.checkpoint is not None and run.checkpoint.startswith(f"{s3_bucket}/runs/ddp/")
    model = load_checkpoint(run.model).model
    assert load_checkpoint(run.model).provenance["step"] == 6
    assert sum(p.numel() for p in model.parameters()) > 0
    tensorboard = storage.list_files(storage.join_uri(run.checkpoint, "tensorboard"))
    assert tensorboard and "tfevents" in tensorboard[0]
    # Running the same name again resumes at the end: nothing left to do, no new checkpoint.
    again = run_training(config, dataset=dataset, storage_path=f"{s3_bucket}/runs", name="ddp")
    assert again.metrics["step"] == 6 and again.checkpoint == run.checkpoint


def _train_worker_pids() -> list[int]:
    """PIDs of live Ray Train worker processes (Ray titles them ``ray::RayTrainWorker``)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(b"ray::RayTrainWorker"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def test_killed_worker_resumes_from_its_checkpoint(dataset: str, s3_bucket: str) -> None:
    config = _tiny(steps=80, checkpoint_every=10, eval_every=80, log_every=10, max_failures=2)
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
    pids = _train_worker_pids()
    assert pids, "no Ray Train worker found"
    os.kill(pids[0], signal.SIGKILL)
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


def _download(uri: str) -> Path:
    import tempfile

    path = Path(tempfile.mkdtemp()) / "state.pt"
    storage.download_file(uri, path)
    return path


def test_tune_sweeps_variants_as_train_runs_and_tabulates(dataset: str, s3_bucket: str) -> None:
    from deblur.train import run_tuning

    base = _tiny(steps=4, checkpoint_every=2, eval_every=2, log_every=2)
    result = run_tuning(
        base,
        dataset=dataset,
        storage_path=f"{s3_bucket}/tune",
        name="sweep",
        space={"variant": ["cnn", "strcnn_dtb"], "lr": [1e-3]},
        grace_steps=2,
    )
    assert sorted(row["variant"] for row in result.rows) == ["cnn", "strcnn_dtb"]
    for row in result.rows:
        assert row["error"] is None and row["val_psnr"] is not None and row["step"] in (2, 4)
    assert result.rows[0]["val_psnr"] >= result.rows[1]["val_psnr"]  # best first
    assert "| variant | lr | steps | val PSNR |" in result.table
    # Each trial was a Ray Train run with its own checkpoints in object storage.
    runs = {uri.split("/")[4] for uri in storage.list_files(f"{s3_bucket}/tune") if uri.endswith("model.safetensors")}
    assert len(runs) == 2 and all(r.startswith("sweep-") for r in runs)
