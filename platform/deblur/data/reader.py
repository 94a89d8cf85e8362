"""The training reader: random sequences from a synthesized dataset's shards.

``read_training_dataset`` draws random runs of consecutive pairs, cropped at one location and
flipped together (paper Sec. 5.3), from the finished training shards the manifest names, as a Ray
Dataset; ``worker_batches`` draws the same samples inside a training worker, from its own share of
the shards, in a background thread; ``iterate_eval_clips`` lists the evaluation clips. Ray is
imported only when a dataset is built.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from deblur import storage
from deblur.data.dataset import load_manifest, output_uris
from deblur.data.shards import _read_shard

__all__ = [
    "add_gaussian_noise",
    "count_training_windows",
    "iterate_eval_clips",
    "read_training_dataset",
    "sample_training_crop",
    "training_shards",
    "window_key",
    "worker_batches",
]


def sample_training_crop(
    blurry: np.ndarray,
    sharp: np.ndarray,
    *,
    rng: np.random.Generator,
    frames: int = 13,
    crop: int = 128,
    flips: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """A random run of ``frames`` consecutive pairs, cropped at one location in every frame.

    Paper Sec. 5.3: 13-frame sequences, 128x128 crops. Horizontal and vertical flips are drawn once
    per sample, so the motion stays consistent through the sequence. Arrays are (F, H, W, 3) uint8.
    """
    count, height, width = blurry.shape[:3]
    if count < frames or height < crop or width < crop:
        raise ValueError(f"window of {count} frames at {width}x{height} cannot give {frames} frames at {crop}x{crop}")
    t = int(rng.integers(0, count - frames + 1))
    y = int(rng.integers(0, height - crop + 1))
    x = int(rng.integers(0, width - crop + 1))
    index = (slice(t, t + frames), slice(y, y + crop), slice(x, x + crop))
    b, s = blurry[index], sharp[index]
    if flips and rng.random() < 0.5:
        b, s = b[:, :, ::-1], s[:, :, ::-1]
    if flips and rng.random() < 0.5:
        b, s = b[:, ::-1], s[:, ::-1]
    return np.ascontiguousarray(b), np.ascontiguousarray(s)


def _decode_row(row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    shape = (int(row["frames"]), int(row["height"]), int(row["width"]), 3)
    return (
        np.frombuffer(row["blurry"], np.uint8).reshape(shape),
        np.frombuffer(row["sharp"], np.uint8).reshape(shape),
    )


def add_gaussian_noise(blurry: np.ndarray, *, rng: np.random.Generator, max_sigma: float) -> np.ndarray:
    """``blurry`` (uint8) with white Gaussian noise of one sigma drawn from [0, ``max_sigma``] (8-bit levels).

    The target stays clean, so the network learns to leave noise no worse than it found it: the
    rendered corpus's own noise is compressed away by H.264, while phone footage is often grainy.
    (The camera model's Poisson-Gaussian noise of the synthesis job is ``deblur.data.blur.add_gaussian_noise``.)
    """
    sigma = float(rng.uniform(0.0, max_sigma))
    noisy = blurry.astype(np.float32) + rng.normal(0.0, sigma, blurry.shape).astype(np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


class _CropSampler:
    """Row -> ``samples`` random training samples, drawn with an RNG seeded from ``seed``."""

    def __init__(
        self,
        *,
        frames: int,
        crop: int,
        flips: bool,
        seed: int | Sequence[int] | None,
        samples: int,
        noise_sigma: float = 0.0,
        sharp_fraction: float = 0.0,
    ) -> None:
        self.frames, self.crop, self.flips, self.samples = frames, crop, flips, samples
        self.noise_sigma, self.sharp_fraction = noise_sigma, sharp_fraction
        self.rng = np.random.default_rng(seed)

    def __call__(self, row: dict[str, Any]) -> Iterator[dict[str, Any]]:
        blurry, sharp = _decode_row(row)
        key = window_key(row)
        for _ in range(self.samples):
            b, s = sample_training_crop(
                blurry, sharp, rng=self.rng, frames=self.frames, crop=self.crop, flips=self.flips
            )
            if self.sharp_fraction > 0 and self.rng.random() < self.sharp_fraction:
                b = s.copy()  # sharp video in, the same video out: what not to harm
            if self.noise_sigma > 0:
                b = add_gaussian_noise(b, rng=self.rng, max_sigma=self.noise_sigma)
            yield {"blurry": b, "sharp": s, "key": key}


# One sampler per process and setting: its RNG runs on across the tasks (and epochs) this Ray
# worker process runs, so a later pass over a window draws new crops, not the same ones again.
_SAMPLERS: dict[tuple[tuple[str, Any], ...], _CropSampler] = {}


def _sample_shard(item: dict[str, Any], **settings: Any) -> Iterator[dict[str, Any]]:
    """Random training samples from every window of one shard, in the task that reads it.

    ``settings`` are ``_CropSampler``'s keywords; each distinct setting keeps its own sampler.
    """
    import os

    key = tuple(sorted(settings.items()))
    if key not in _SAMPLERS:
        seed = settings["seed"]
        _SAMPLERS[key] = _CropSampler(**{**settings, "seed": None if seed is None else [seed, os.getpid()]})
    sampler = _SAMPLERS[key]
    for row in _read_shard(item):
        yield from sampler(row)


def window_key(row: dict[str, Any]) -> str:
    """Names the stored window a training sample came from (in errors such as a non-finite loss)."""
    return f"{row['video_id']}/clip-{int(row['clip']):03d}/window-{int(row['start'])}"


def training_shards(prefix: str) -> list[str]:
    """Every finished training shard of a dataset, from its manifest (never from a listing)."""
    manifest = load_manifest(prefix)
    records = [r for r in manifest["videos"] if r["status"] == "ok" and r["split"] == "train"]
    shards = [uri for r in records for uri in output_uris(r, prefix)]
    if not shards:
        raise ValueError(f"{prefix}: the dataset has no training shards (summary: {manifest['summary']})")
    return shards


def count_training_windows(prefix: str) -> int:
    """How many stored training windows (rows) the dataset's finished shards hold (their footers)."""
    import pyarrow.parquet as pq

    total = 0
    for uri in training_shards(prefix):
        with storage.open_input(uri) as handle:
            total += pq.ParquetFile(handle).metadata.num_rows
    return total


def read_training_dataset(
    prefix: str,
    *,
    frames: int = 13,
    crop: int = 128,
    flips: bool = True,
    seed: int | None = None,
    samples_per_window: int = 4,
    noise_sigma: float = 0.0,
    sharp_fraction: float = 0.0,
    num_cpus: float = 0.25,
) -> Any:
    """A Ray Dataset of random training samples ``{"blurry", "sharp", "key"}``.

    ``blurry`` and ``sharp`` are (frames, crop, crop, 3) uint8; ``key`` names the stored window
    (``window_key``) so that an error can say which data a batch held. Being a string column, it
    suits ``iter_batches(batch_format="numpy")``; ``iter_torch_batches`` needs a ``collate_fn``.

    Each pass over it draws new windows, crops and flips: ``samples_per_window`` crops from each
    stored window (a window of full frames is far larger than one crop, so reading it for a single
    sample would make training I/O-bound). Hand it to a ``TorchTrainer`` as ``datasets={"train":
    ...}``; each worker reads its shard with ``iter_batches`` and a local shuffle buffer, which
    mixes crops of different windows and videos. ``noise_sigma`` > 0 adds Gaussian noise of a
    sigma drawn per sample up to it to the blurry frames (``add_gaussian_noise``).
    ``sharp_fraction`` of the samples take their sharp frames as input (noise is added to them
    as to any input): sharp video must come out as it went in, and noisy video no noisier.

    Every step runs on a fraction of a CPU (``num_cpus``) so it fits beside training workers that
    reserved the rest. The shards are read with a plain ``flat_map`` rather than ``read_parquet``:
    in Ray 2.60 the latter adds a listing task that always asks for a whole CPU, which never
    fits on a 2-CPU machine whose cores the workers hold, and the run would wait forever.
    """
    import ray

    shards = training_shards(prefix)
    items = [{"uri": uri} for uri in shards]
    dataset = ray.data.from_items(items, override_num_blocks=len(items)).randomize_block_order()
    # Reading and cropping happen in one task per shard: the stored windows (megabytes each)
    # never go through the object store, only the crops do; and no actor pool to start again
    # at every pass over the data.
    sample = {
        "frames": frames,
        "crop": crop,
        "flips": flips,
        "seed": seed,
        "samples": samples_per_window,
        "noise_sigma": noise_sigma,
        "sharp_fraction": sharp_fraction,
    }
    return dataset.flat_map(_sample_shard, fn_kwargs=sample, num_cpus=num_cpus)


def worker_batches(
    prefix: str,
    *,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    seed: int | Sequence[int] | None = None,
    prefetch: int = 4,
    **sampling: Any,
) -> Iterator[dict[str, np.ndarray]]:
    """Endless training batches ``{"blurry", "sharp", "key"}`` read inside one training worker.

    The same samples as ``read_training_dataset`` (``sampling``: ``frames``, ``crop``, ``flips``,
    ``samples``, ``noise_sigma``, ``sharp_fraction``, as ``_CropSampler`` takes them), without Ray
    Data: worker ``rank`` of ``world_size`` reads every ``world_size``-th shard (all of them when
    there are fewer shards than workers) in a new random order each pass, and a background thread
    keeps ``prefetch`` batches ready while the model trains. A shuffle buffer of eight batches
    mixes crops of different windows. This reader costs no CPU beyond its own work: Ray Data's
    split coordinator polls without pause while training holds its reader back (docs/performance.md).
    """
    shards = training_shards(prefix)
    mine = shards[rank::world_size] if len(shards) >= world_size else shards
    sampler = _CropSampler(seed=seed, **sampling)
    ready: queue.Queue[dict[str, np.ndarray] | BaseException] = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def produce() -> None:
        try:
            buffer: list[dict[str, Any]] = []
            while not stop.is_set():
                rows = 0
                for index in sampler.rng.permutation(len(mine)):
                    for row in _read_shard({"uri": mine[index]}):
                        rows += 1
                        buffer.extend(sampler(row))
                        while len(buffer) >= 8 * batch_size and not stop.is_set():
                            ready.put(_take_batch(buffer, batch_size, sampler.rng))
                if rows == 0:
                    raise ValueError(f"{prefix}: the training shards of worker {rank} hold no windows")
        except BaseException as error:  # handed to the training loop, which raises it
            ready.put(error)

    thread = threading.Thread(target=produce, name="deblur-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                ready.get_nowait()
            except queue.Empty:
                thread.join(0.05)


def _take_batch(buffer: list[dict[str, Any]], size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``size`` samples drawn at random out of ``buffer`` (removed from it), stacked into a batch."""
    picked = sorted(rng.choice(len(buffer), size=size, replace=False).tolist(), reverse=True)
    samples = [buffer.pop(i) for i in picked]
    return {
        "blurry": np.stack([s["blurry"] for s in samples]),
        "sharp": np.stack([s["sharp"] for s in samples]),
        "key": np.array([s["key"] for s in samples]),
    }


def iterate_eval_clips(prefix: str) -> Iterator[dict[str, Any]]:
    """The evaluation set: one dict per clip with tau, stride, fps and the two video URIs."""
    manifest = load_manifest(prefix)
    for record in manifest["videos"]:
        if record["status"] != "ok" or record["split"] != "eval":
            continue
        for clip, clip_prefix in zip(record["clips"], output_uris(record, prefix), strict=True):
            yield {
                "video_id": record["video_id"],
                **clip,
                "blurry": storage.join_uri(clip_prefix, "blurry.mp4"),
                "sharp": storage.join_uri(clip_prefix, "sharp.mp4"),
            }
