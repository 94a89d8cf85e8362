"""Training data with Ray Data: high-speed videos in object storage -> Eq. 1 pairs -> shards.

``synthesize_dataset(IN_PREFIX, OUT_PREFIX)`` lists the videos under IN_PREFIX and runs one Ray
Data task per video. A task decodes its video as a stream, cuts it into clips (each with its own
tau and T, see ``synthesis.py``), and writes, under OUT_PREFIX:

    train/<video_id>/shard-00000.parquet   training windows (train videos)
    eval/<video_id>/clip-000/{blurry,sharp}.mp4   whole clips, full size, lossless (eval videos)
    records/<video_id>.json                 the video's manifest entry, written last
    manifest.json                           every record plus the run's settings (driver, at the end)

Train and evaluation sets are split by source video (a stable hash of its key), never by frame.
Records name their outputs relative to OUT_PREFIX (``train/v/shard-00000.parquet``), so a dataset
copied elsewhere as a whole (``aws s3 sync``) reads from where it now is, not from where it was made.
A record is written only after all of the video's outputs are complete, and every output object is
written whole (staged locally, then uploaded or renamed), so an interrupted run leaves no shard that
looks finished: readers use only shards named by ``status == "ok"`` records; a video that fails
half-way has what it wrote deleted. A rerun skips videos whose record matches the object's current
size and ETag and the digest of the settings that shape a video's outputs (``config_digest``).

Why Parquet for training shards: one row is one window of consecutive frames (raw uint8 bytes
plus shape columns, readable by any Parquet reader without Ray's tensor extension), rows are read
lazily row-group by row-group, Ray Data reads and shards Parquet across Train workers natively,
and a few large objects suit S3 far better than millions of PNGs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from fractions import Fraction
from typing import Any

import numpy as np

from deblur import storage
from deblur.degrade import degrade_pairs, draw_degradation
from deblur.storage import VIDEO_PATTERNS
from deblur.synthesis import ClipParams, ClipSchedule, SynthesisConfig, synthesize_clip

__all__ = [
    "DataConfig",
    "count_training_windows",
    "load_manifest",
    "output_uris",
    "process_video",
    "read_training_dataset",
    "sample_training_crop",
    "split_for",
    "synthesize_dataset",
]

MANIFEST_FORMAT = "deblur-synth-manifest/2"
# Format 1 named outputs by absolute URIs; its datasets are still read (where they were made).
_READABLE_FORMATS = ("deblur-synth-manifest/1", MANIFEST_FORMAT)


@dataclass(frozen=True)
class DataConfig:
    """Settings of one synthesis run (recorded in the manifest)."""

    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    seed: int = 0
    eval_fraction: float = 0.2  # of source videos; at least one when there are two or more
    window_frames: int = 16  # pairs per training row: room for 13-frame windows at random offsets
    min_window_frames: int = 13  # a clip's tail shorter than this is not kept for training
    # A shard is closed at the first window past this: one window per shard from about 480x270 up.
    # Small shards let a task upload one while it synthesizes the next (``_Committer``), and such
    # objects still suit S3 (a single PUT each, no multipart); docs/data.md has the timings.
    shard_target_bytes: int = 8 << 20
    patterns: tuple[str, ...] = VIDEO_PATTERNS

    def __post_init__(self) -> None:
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if not 1 <= self.min_window_frames <= self.window_frames:
            raise ValueError("need 1 <= min_window_frames <= window_frames")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DataConfig:
        """Flat keys; synthesis settings (taus, scale, linear_light, ...) sit beside the others."""
        synthesis_keys = {f.name for f in fields(SynthesisConfig)}
        own_keys = {f.name for f in fields(cls)} - {"synthesis"}
        unknown = sorted(set(values) - synthesis_keys - own_keys)
        if unknown:
            raise ValueError(f"unknown data setting(s) {unknown}; known: {sorted(synthesis_keys | own_keys)}")
        synthesis = SynthesisConfig.from_dict({k: v for k, v in values.items() if k in synthesis_keys})
        own = {k: v for k, v in values.items() if k in own_keys}
        if "patterns" in own:
            own["patterns"] = tuple(own["patterns"])
        return cls(synthesis=synthesis, **own)

    def to_dict(self) -> dict[str, Any]:
        flat = {k: v for k, v in asdict(self).items() if k != "synthesis"}
        return {**asdict(self.synthesis), **flat}


def _unit_hash(*parts: object) -> float:
    digest = hashlib.sha256("\x00".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_for(video_ids: list[str], *, eval_fraction: float, seed: int) -> dict[str, str]:
    """``{video_id: "train" | "eval"}``: a stable per-video hash, so adding videos never moves others."""
    scores = {v: _unit_hash("split", seed, v) for v in video_ids}
    split = {v: "eval" if s < eval_fraction else "train" for v, s in scores.items()}
    if eval_fraction > 0 and len(video_ids) >= 2 and "eval" not in split.values():
        split[min(scores, key=scores.__getitem__)] = "eval"
    if len(video_ids) >= 2 and "train" not in split.values():
        split[max(scores, key=scores.__getitem__)] = "train"
    return split


def video_id_for(relative_key: str) -> str:
    return relative_key.replace("/", "--")


def config_digest(config: DataConfig) -> str:
    """A digest of the settings that decide a video's outputs: a record made with others is redone.

    Which files are listed (``patterns``), how new videos are split (``eval_fraction``; a video
    keeps its first split) and how windows are grouped into files (``shard_target_bytes``) do not
    change the windows an existing video produces, so they are left out.
    """
    return _digest_of(_shaping_settings(config))


def _shaping_settings(config: DataConfig) -> dict[str, Any]:
    ignored = ("patterns", "eval_fraction", "shard_target_bytes")
    return {k: v for k, v in config.to_dict().items() if k not in ignored}


def _digest_of(values: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def _digests_of_done(config: DataConfig) -> set[str]:
    """The digests that make an existing record of these settings count as done.

    ``config_digest``, and the digest the same settings had while it still counted the shard size,
    with the default of then (64 MB): datasets made then are not redone for a change of grouping.
    """
    values = _shaping_settings(config)
    return {_digest_of(values), _digest_of({**values, "shard_target_bytes": 64 << 20})}


# ---------------------------------------------------------------------------------------------
# One video (runs inside a Ray Data task; plain Python, testable without Ray)
# ---------------------------------------------------------------------------------------------


_SHARD_SCALARS = ("video_id", "clip", "start", "tau", "stride", "frames", "height", "width")


def _shard_schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("video_id", pa.string()),
            ("clip", pa.int32()),
            ("start", pa.int32()),
            ("tau", pa.int32()),
            ("stride", pa.int32()),
            ("frames", pa.int32()),
            ("height", pa.int32()),
            ("width", pa.int32()),
            ("blurry", pa.large_binary()),
            ("sharp", pa.large_binary()),
        ]
    )


def _frames_cell(frames: np.ndarray) -> Any:
    """A one-value large_binary array over the bytes of ``frames``, without copying them."""
    import pyarrow as pa

    frames = np.ascontiguousarray(frames)
    offsets = pa.py_buffer(np.array([0, frames.nbytes], dtype=np.int64))
    return pa.LargeBinaryArray.from_buffers(pa.large_binary(), 1, [None, offsets, pa.py_buffer(frames)])


class _Committer:
    """Commits staged outputs (the upload to S3, or the local rename) on a thread of its own.

    A task that waited for each upload spent that time idle (docs/data.md), and to a remote bucket
    the wait is the network's. Now the next shard is synthesized meanwhile. One commit runs at a time and a new
    one first waits for it, so at most two staged shards are held (in memory, for S3). ``wait``
    re-raises a commit's error; ``written`` gets an object's URI when its commit starts, so a
    failed video's cleanup also deletes what an interrupted commit may have left.
    """

    def __init__(self, *, written: list[str]) -> None:
        self.written = written
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future[Any] | None = None

    def submit(self, uri: str, stage: contextlib.ExitStack) -> None:
        """Commit ``stage`` (an ``ExitStack`` holding ``storage.staged_output(uri)``) in the background.

        If the commit before it failed, ``stage`` is dropped, not committed, and that error raised.
        """
        try:
            self.wait()
        except BaseException as error:
            stage.__exit__(type(error), error, error.__traceback__)
            raise
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="deblur-commit")
        self.written.append(uri)
        self._pending = self._pool.submit(stage.close)

    def wait(self) -> None:
        """Until the commit in flight is done; its error, if it failed."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Wait for the commit in flight (errors ignored: the caller is cleaning up) and stop the thread."""
        with contextlib.suppress(Exception):
            self.wait()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


class _ShardWriter:
    """Streams training windows into Parquet shards of about ``target_bytes``, one row group each.

    A shard is staged (``storage.staged_stream``: in memory for S3, about 12 MB) while rows go in;
    ``flush`` closes it and hands it to ``committer``, and it becomes visible once committed
    (``committer.wait()``); ``abort`` drops a shard in progress. Rows are written as they come
    rather than gathered into one table, so a task holds one window of arrays, not a shard's.
    """

    def __init__(self, prefix: str, target_bytes: int, *, committer: _Committer) -> None:
        self.prefix, self.target_bytes = prefix, target_bytes
        self.pending_bytes = 0
        self.shards: list[str] = []
        self.committer = committer
        self._stage: contextlib.ExitStack | None = None
        self._writer: Any = None
        self._uri = ""
        self._schema = _shard_schema()

    def add(self, row: dict[str, Any]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._writer is None:
            self._uri = storage.join_uri(self.prefix, f"shard-{len(self.shards):05d}.parquet")
            self._stage = contextlib.ExitStack()
            staged = self._stage.enter_context(storage.staged_stream(self._uri))
            # No compression: camera frames barely compress losslessly and zstd would cost CPU in
            # every training epoch. No dictionary and no min/max statistics on the frame columns:
            # both scan megabytes per value for nothing (together 5x the cost of the write).
            self._writer = pq.ParquetWriter(
                staged,
                self._schema,
                compression="none",
                use_dictionary=["video_id"],
                write_statistics=list(_SHARD_SCALARS),
            )
        columns = [pa.array([row[key]]) for key in _SHARD_SCALARS]
        columns += [_frames_cell(row["blurry"]), _frames_cell(row["sharp"])]
        # One row per row group: a reader can fetch one window without the rest of the shard.
        self._writer.write_table(pa.Table.from_arrays(columns, schema=self._schema))
        self.pending_bytes += row["blurry"].nbytes + row["sharp"].nbytes
        if self.pending_bytes >= self.target_bytes:
            self.flush()

    def flush(self) -> None:
        if self._writer is None or self._stage is None:
            return
        self._writer.close()
        stage, self._writer, self._stage, self.pending_bytes = self._stage, None, None, 0
        self.committer.submit(self._uri, stage)  # uploads (s3) or renames (local) the finished shard
        self.shards.append(self._uri)

    def abort(self) -> None:
        """Drop the shard in progress: nothing of it reaches storage."""
        if self._writer is None or self._stage is None:
            return
        try:
            self._writer.close()
        finally:
            stage, self._writer, self._stage, self.pending_bytes = self._stage, None, None, 0
            stage.__exit__(RuntimeError, RuntimeError("shard aborted"), None)


def _window_row(
    video_id: str, clip: int, start: int, params: ClipParams, blurry: list[np.ndarray], sharp: list[np.ndarray]
) -> dict[str, Any]:
    h, w = blurry[0].shape[:2]
    return {
        "video_id": video_id,
        "clip": clip,
        "start": start,
        "tau": params.tau,
        "stride": params.stride,
        "frames": len(blurry),
        "height": h,
        "width": w,
        "blurry": np.stack(blurry),  # (frames, H, W, 3) uint8
        "sharp": np.stack(sharp),
    }


def _eval_clip_objects(prefix: str) -> list[str]:
    return [storage.join_uri(prefix, f"{name}.mp4") for name in ("blurry", "sharp")]


def _write_eval_clip(
    prefix: str, fps: Fraction, blurry: list[np.ndarray], sharp: list[np.ndarray], *, committer: _Committer
) -> None:
    """Both videos of one evaluation clip, each committed in the background once encoded."""
    from deblur.video import EncoderOptions, write_video

    lossless = EncoderOptions(lossless=True, preset="ultrafast")
    for uri, frames in zip(_eval_clip_objects(prefix), (blurry, sharp), strict=True):
        with contextlib.ExitStack() as stage:  # an encoding error leaves the stage uncommitted
            staged = stage.enter_context(storage.staged_output(uri, suffix=".mp4"))
            write_video(staged, frames, fps=fps, encoder=lossless)
            committer.submit(uri, stage.pop_all())


def output_uris(record: dict[str, Any], prefix: str) -> list[str]:
    """The URIs of a record's ``outputs`` (shards, or evaluation clip prefixes) in the dataset at ``prefix``.

    Outputs are stored relative to the dataset; format 1 stored absolute URIs, taken as they are.
    """
    outputs = record.get("outputs", [])
    return [o if storage.is_s3(o) or o.startswith("/") else storage.join_uri(prefix, o) for o in outputs]


def _record_objects(record: dict[str, Any], prefix: str) -> list[str]:
    """The objects a record's ``outputs`` name (a shard, or an evaluation clip's two videos)."""
    outputs = output_uris(record, prefix)
    if record.get("split") == "eval":
        return [uri for clip_prefix in outputs for uri in _eval_clip_objects(clip_prefix)]
    return outputs


def _delete_objects(uris: list[str]) -> None:
    """Best effort: a leftover here is unreferenced (readers trust records), never half-written."""
    for uri in uris:
        try:
            storage.delete(uri)
        except Exception:
            continue


def _counting_drops(frames: Iterator[Any], record: dict[str, Any]) -> Iterator[Any]:
    """``frames`` unchanged; ``record["frames_dropped"]`` counts those the decoder dropped (None)."""
    record["frames_dropped"] = 0
    for frame in frames:
        if frame is None:
            record["frames_dropped"] += 1
        yield frame


def process_video(task: dict[str, Any]) -> dict[str, Any]:
    """Synthesize one video (a row of the job's task list) and return its manifest record.

    Bad input (not a video, corrupt, truncated, too short) gives ``status="skipped"`` with the
    reason; a storage error (possibly transient) or an unexpected one gives ``status="failed"``,
    retried by the next run. Either way, the objects this attempt wrote are deleted again.
    """
    from deblur.video import VideoError, frame_to_rgb, probe_video, read_frames

    config = DataConfig.from_dict(task["config"])
    uri, video_id, split, out = task["uri"], task["video_id"], task["split"], task["out"]
    motion = task.get("motion") if "camera_px_per_frame" in task.get("motion", {}) else None
    record: dict[str, Any] = {
        "video": uri,
        "video_id": video_id,
        "version": task["version"],
        "config_digest": task.get("config_digest"),
        "split": split,
        "status": "ok",
        "error": None,
        "clips": [],
        "pairs": 0,
        "outputs": [],
    }
    started = time.perf_counter()
    rng = np.random.default_rng([config.seed, int(_unit_hash("clips", video_id) * 2**32)])
    record_uri = storage.join_uri(out, "records", f"{video_id}.json")
    written: list[str] = []  # every object this attempt wrote, deleted again if it fails
    committer = _Committer(written=written)
    writer = _ShardWriter(storage.join_uri(out, "train", video_id), config.shard_target_bytes, committer=committer)
    try:
        with storage.open_input(uri) as handle:
            info = probe_video(handle, name=uri)
            handle.seek(0)
            record.update(source_fps=str(info.fps), width=info.width, height=info.height)
            schedule = ClipSchedule(rng, config.synthesis)
            # The decoder may drop frames no exposure reads instead of decoding them. On the benchmark's
            # corpus (240 fps H.264 with B-frames) at the default tau and T, 38% of the frames fall
            # between exposures and the decoder drops half of those (1,414 of 7,680 frames):
            # synthesis in one process takes 8% less time.
            frames = _counting_drops(
                read_frames(handle, name=uri, threads=task.get("decode_threads"), rgb=False, needed=schedule.uses),
                record,
            )
            source_start = 0
            for clip_index in range(1_000_000):
                params = schedule.params(clip_index)
                blurry: list[np.ndarray] = []
                sharp: list[np.ndarray] = []
                window_start = 0
                pairs = synthesize_clip(
                    frames,
                    params,
                    outputs=config.synthesis.clip_frames,
                    linear_light=config.synthesis.linear_light,
                    gamma=config.synthesis.gamma,
                    scale=config.synthesis.scale,
                    to_rgb=frame_to_rgb,
                )
                degradation = None
                if config.synthesis.degrade:
                    # Its own generator: the clip schedule's draws (and so the decoder's plan) stay as they are.
                    degrade_rng = np.random.default_rng(
                        [config.seed, int(_unit_hash("degrade", video_id) * 2**32), clip_index]
                    )
                    degradation = draw_degradation(degrade_rng)
                    pairs = degrade_pairs(pairs, degradation, rng=degrade_rng, gamma=config.synthesis.gamma)
                for b, s in pairs:
                    blurry.append(b)
                    sharp.append(s)
                    if split == "train" and len(blurry) - window_start == config.window_frames:
                        window = slice(window_start, len(blurry))
                        row = _window_row(video_id, clip_index, window_start, params, blurry[window], sharp[window])
                        writer.add(row)
                        window_start = len(blurry)
                        # Written windows are not needed again: keep memory to one window.
                        blurry[:window_start] = [blurry[0]] * window_start
                        sharp[:window_start] = [sharp[0]] * window_start
                outputs = len(blurry)
                if outputs == 0:
                    break
                if split == "train" and outputs - window_start >= config.min_window_frames:
                    window = slice(window_start, outputs)
                    writer.add(_window_row(video_id, clip_index, window_start, params, blurry[window], sharp[window]))
                    window_start = outputs
                kept = outputs if split == "eval" else window_start
                if kept:
                    clip_prefix = storage.join_uri(out, "eval", video_id, f"clip-{clip_index:03d}")
                    if split == "eval":
                        _write_eval_clip(clip_prefix, params.output_fps(info.fps), blurry, sharp, committer=committer)
                        record["outputs"].append(storage.relative_key(clip_prefix, out))
                    record["clips"].append(
                        {
                            "clip": clip_index,
                            "tau": params.tau,
                            "stride": params.stride,
                            "source_start": source_start,
                            "source_end": source_start + params.source_frames(outputs),
                            "pairs": kept,
                            "output_fps": str(params.output_fps(info.fps)),
                            **({"degradation": degradation.to_dict()} if degradation else {}),
                            **(_clip_blur(motion, params.tau, config.synthesis.scale) if motion else {}),
                        }
                    )
                    record["pairs"] += kept
                    record["out_height"], record["out_width"] = blurry[-1].shape[:2]
                source_start += params.source_frames(outputs)
                if outputs < config.synthesis.clip_frames:
                    break  # the video ended inside this clip
            writer.flush()
            committer.wait()  # every output complete before the record can name it
            if split == "train":
                record["outputs"] = [storage.relative_key(shard, out) for shard in writer.shards]
            record["source_frames"] = source_start  # frames the clips span (dropped ones included)
        if record["pairs"] == 0:
            needed = max(config.synthesis.taus) if split == "eval" else config.min_window_frames
            raise VideoError(
                f"{uri}: too short for one {'clip' if split == 'eval' else 'training window'} "
                f"(needs about {needed} {'frames' if split == 'eval' else 'output pairs'})"
            )
    except VideoError as error:  # the input itself: permanent until the object changes
        record.update(status="skipped", error=str(error), clips=[], pairs=0, outputs=[])
    except storage.StorageError as error:  # reading or writing storage: may pass, retried on the next run
        record.update(status="failed", error=str(error), clips=[], pairs=0, outputs=[])
    except Exception as error:  # recorded, and retried on the next run
        record.update(status="failed", error=f"{type(error).__name__}: {error}", clips=[], pairs=0, outputs=[])
    finally:
        committer.close()  # nothing in flight from here on: the cleanup below sees every object
    record["seconds"] = round(time.perf_counter() - started, 3)
    if record["status"] != "ok":
        writer.abort()
        _delete_objects(written)
    if record["status"] == "failed":
        # An earlier record of this video is out of date (else it would not have been planned) and
        # may name objects this attempt overwrote and deleted: it goes, with what it named.
        _delete_objects([record_uri, *task.get("stale_outputs", [])])
    else:
        storage.write_bytes(record_uri, json.dumps(record, indent=1).encode(), content_type="application/json")
        # A redo (changed object or settings) may have left objects the new record no longer names.
        _delete_objects(sorted(set(task.get("stale_outputs", [])) - set(_record_objects(record, out))))
    return record


# ---------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SynthesisRun:
    manifest_uri: str
    records: list[dict[str, Any]]
    summary: dict[str, int]
    processed: int  # videos worked on in this run (the rest were already done)

    @property
    def usable(self) -> int:
        return sum(r["status"] == "ok" for r in self.records)


def _existing_records(out: str) -> dict[str, dict[str, Any]]:
    prefix = storage.join_uri(out, "records")
    try:
        uris = storage.list_files(prefix, patterns=("*.json",))
    except storage.StorageError:
        return {}
    records = {}
    for uri in uris:
        try:
            record = json.loads(storage.read_bytes(uri))
            records[record["video_id"]] = record
        except (ValueError, KeyError):
            continue  # an unreadable record means "not done"
    return records


def read_corpus_manifest(input_prefix: str) -> dict[str, Any]:
    """The ``corpus.json`` that ``deblur corpus`` wrote beside its videos, or ``{}``."""
    uri = storage.join_uri(input_prefix, "corpus.json")
    if not storage.exists(uri):
        return {}
    try:
        return json.loads(storage.read_bytes(uri))
    except ValueError:
        return {}


def corpus_synthesis_defaults(input_prefix: str) -> dict[str, Any]:
    """The synthesis settings a rendered corpus asks for (``corpus.REAL_SYNTHESIS``), or ``{}``."""
    return dict(read_corpus_manifest(input_prefix).get("synthesis", {}))


_MOTION_KEYS = ("camera_px_per_frame", "object_px_per_frame")


def _corpus_entries(input_prefix: str) -> dict[str, dict[str, Any]]:
    """``{video_id: entry}`` of the videos ``corpus.json`` describes (their split and motion)."""
    entries = read_corpus_manifest(input_prefix).get("videos", [])
    return {video_id_for(e["video"].rstrip("/").rsplit("/", 1)[-1]): e for e in entries if "video" in e}


def _clip_blur(motion: dict[str, Any], tau: int, scale: float) -> dict[str, float]:
    """Blur lengths of a clip at the output size: the camera's, and the fastest object's."""
    fastest = max(motion.get("object_px_per_frame") or [0.0])
    return {
        "blur_px": round(motion["camera_px_per_frame"] * tau * scale, 2),
        "object_blur_px": round(fastest * tau * scale, 2),
    }


def plan_tasks(input_prefix: str, output_prefix: str, config: DataConfig) -> tuple[list[dict[str, Any]], list[dict]]:
    """``(tasks to run, records already done)`` for a run.

    Videos of a corpus split by photograph keep that split (held-out scenes never reach
    training); other videos are split by a hash of their name (``split_for``).
    """
    uris = storage.list_files(input_prefix, patterns=config.patterns)
    if not uris:
        raise ValueError(f"{input_prefix}: no videos found (looked for {', '.join(config.patterns)})")
    ids = {uri: video_id_for(storage.relative_key(uri, input_prefix)) for uri in uris}
    done = _existing_records(output_prefix)
    corpus = _corpus_entries(input_prefix)
    split = split_for(list(ids.values()), eval_fraction=config.eval_fraction, seed=config.seed)
    split.update({v: corpus[v]["split"] for v in ids.values() if corpus.get(v, {}).get("split") in ("train", "eval")})
    digest, done_digests = config_digest(config), _digests_of_done(config)
    tasks, finished = [], []
    for uri, video_id in ids.items():
        version = storage.object_version(uri)
        previous = done.get(video_id)
        if (
            previous
            and previous.get("version") == version
            and previous.get("config_digest") in done_digests
            and previous.get("status") in ("ok", "skipped")
        ):
            finished.append(previous)
            continue
        tasks.append(
            {
                "uri": uri,
                "video_id": video_id,
                "version": version,
                "config_digest": digest,
                "stale_outputs": _record_objects(previous, output_prefix) if previous else [],
                # A video keeps the split it was first given, even if the set of videos changed.
                "split": previous["split"] if previous else split[video_id],
                "out": output_prefix,
                "config": config.to_dict(),
                "decode_threads": None,
                # The rendered motion (from corpus.json), so that clips can say how long their blur is.
                "motion": {k: corpus[video_id][k] for k in _MOTION_KEYS if k in corpus.get(video_id, {})},
            }
        )
    # Longest first, so no worker is left with one long video at the end while the others idle:
    # evaluation videos (also encoded as lossless clips) before training ones, larger objects
    # before smaller ones within each.
    tasks.sort(key=lambda t: (t["split"] != "eval", -int(t["version"].split(":", 1)[0])))
    return tasks, finished


def write_manifest(
    input_prefix: str, output_prefix: str, config: DataConfig, records: list[dict[str, Any]]
) -> tuple[str, dict[str, Any]]:
    """Write ``OUT/manifest.json`` (every video's record and the run's settings): what readers trust."""
    records.sort(key=lambda r: r["video_id"])
    manifest = {
        "format": MANIFEST_FORMAT,
        "input": input_prefix,
        "output": output_prefix,
        "config": config.to_dict(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "summary": {status: sum(r["status"] == status for r in records) for status in ("ok", "skipped", "failed")}
        | {"pairs_train": sum(r["pairs"] for r in records if r["split"] == "train" and r["status"] == "ok")}
        | {"pairs_eval": sum(r["pairs"] for r in records if r["split"] == "eval" and r["status"] == "ok")},
        "videos": records,
    }
    manifest_uri = storage.join_uri(output_prefix, "manifest.json")
    storage.write_bytes(manifest_uri, json.dumps(manifest, indent=1).encode(), content_type="application/json")
    return manifest_uri, manifest


# Ray Data's executor waits for its running tasks in ``ray.wait(all of them, timeout=0.1)``, so
# while another task still runs it notices a finished one up to 100 ms late, and that worker idles
# until then (ray-project/ray#42377, #45934; no public setting in Ray 2.60). Measured here with two
# workers on 4 s videos: 0.12-0.22 s between one video and the next on a worker, 10-20% of a task;
# polling every 0.01 s, the gaps are 0.03 s and the run 7-10% faster, for 0.2 CPU-seconds of the
# driver's time. High-speed clips are often that short (a few seconds at 240 fps).
_EXECUTOR_WAIT_SECONDS = 0.01


@contextlib.contextmanager
def _settings_for_one_operator() -> Iterator[None]:
    """Ray Data settings for this job while it runs in this process; restored afterwards.

    Ray Data's throttles are built for pipelines of operators passing big blocks; this job is one
    operator whose outputs are small records, and on a small cluster they kept the second worker
    idle: the per-operator CPU reservation (4 one-CPU tasks of 2 s took 5.2 s instead of 4.2 s on
    2 CPUs) and the downstream-capacity backpressure (8 videos ran one at a time after the first
    four). Both are off. The completion polling interval (above) is a private module constant of
    Ray Data, read by this process's executor thread at each poll; where a Ray version no longer
    has it, the job runs with Ray's default (a unit test checks that the installed Ray has it).
    """
    import ray

    try:
        from ray.data._internal.execution import streaming_executor_state as executor_state
    except ImportError:  # moved in a later Ray: its default polling, nothing else changes
        executor_state = None
    saved_wait = getattr(executor_state, "WAIT_FOR_TASK_COMPLETION_TIMEOUT_S", None)
    patch_wait = isinstance(saved_wait, float)
    context = ray.data.DataContext.get_current()
    saved = (context.op_resource_reservation_enabled, context.downstream_capacity_backpressure_ratio)
    context.op_resource_reservation_enabled = False
    context.downstream_capacity_backpressure_ratio = None
    if patch_wait:
        executor_state.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S = min(saved_wait, _EXECUTOR_WAIT_SECONDS)
    try:
        yield
    finally:
        context.op_resource_reservation_enabled, context.downstream_capacity_backpressure_ratio = saved
        if patch_wait:
            executor_state.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S = saved_wait


def synthesize_dataset(
    input_prefix: str,
    output_prefix: str,
    *,
    config: DataConfig | None = None,
    workers: int | None = None,
    cpus_per_task: float = 1.0,
) -> SynthesisRun:
    """Run the Ray Data job (on the current Ray instance, starting a local one if needed)."""
    import ray

    config = config or DataConfig()
    input_prefix, output_prefix = storage.absolute(input_prefix), storage.absolute(output_prefix)
    tasks, finished = plan_tasks(input_prefix, output_prefix, config)
    for task in tasks:
        # One decoder thread per reserved core: videos, not threads, are the unit of parallelism.
        task["decode_threads"] = max(1, round(cpus_per_task))
    records = list(finished)
    if tasks:
        from deblur.cluster import connect_ray

        connect_ray()
        with _settings_for_one_operator():
            dataset = ray.data.from_items(tasks, override_num_blocks=len(tasks))
            # One row per block and a plain function: each video is one Ray task that decodes it
            # as a stream; only the small record travels back through the object store.
            results = dataset.map(
                process_video,
                compute=ray.data.TaskPoolStrategy(size=workers),
                num_cpus=cpus_per_task,
                # A task that kills its worker (out of memory, a crash inside FFmpeg) is tried three
                # times, then the job stops with the error; Ray Data's default retries it forever.
                # Ray 2.60 warns that such remote args go in 2.64 but has no named replacement.
                max_retries=2,
            ).take_all()
        records.extend(results)
    manifest_uri, manifest = write_manifest(input_prefix, output_prefix, config, records)
    return SynthesisRun(manifest_uri=manifest_uri, records=records, summary=manifest["summary"], processed=len(tasks))


def load_manifest(prefix: str) -> dict[str, Any]:
    uri = storage.join_uri(prefix, "manifest.json")
    try:
        manifest = json.loads(storage.read_bytes(uri))
    except storage.StorageError as error:
        raise ValueError(f"{prefix}: no dataset here ({error}); run `deblur synth` first") from error
    if manifest.get("format") not in _READABLE_FORMATS:
        raise ValueError(f"{uri}: not a synthesis manifest (format {manifest.get('format')!r})")
    return manifest


# ---------------------------------------------------------------------------------------------
# Training reader
# ---------------------------------------------------------------------------------------------


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
    """
    sigma = float(rng.uniform(0.0, max_sigma))
    noisy = blurry.astype(np.float32) + rng.normal(0.0, sigma, blurry.shape).astype(np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


class _CropSampler:
    """Row -> ``samples`` random training samples; the RNG is per worker process, seeded from ``seed``."""

    def __init__(
        self, *, frames: int, crop: int, flips: bool, seed: int | None, samples: int, noise_sigma: float = 0.0
    ) -> None:
        import os

        self.frames, self.crop, self.flips, self.samples = frames, crop, flips, samples
        self.noise_sigma = noise_sigma
        self.rng = np.random.default_rng(None if seed is None else [seed, os.getpid()])

    def __call__(self, row: dict[str, Any]) -> Iterator[dict[str, Any]]:
        blurry, sharp = _decode_row(row)
        key = window_key(row)
        for _ in range(self.samples):
            b, s = sample_training_crop(
                blurry, sharp, rng=self.rng, frames=self.frames, crop=self.crop, flips=self.flips
            )
            if self.noise_sigma > 0:
                b = add_gaussian_noise(b, rng=self.rng, max_sigma=self.noise_sigma)
            yield {"blurry": b, "sharp": s, "key": key}


# One sampler per process and setting: its RNG runs on across the tasks (and epochs) this Ray
# worker process runs, so a later pass over a window draws new crops, not the same ones again.
_SAMPLERS: dict[tuple[int, int, bool, int | None, int, float], _CropSampler] = {}


def _sample_shard(
    item: dict[str, Any],
    *,
    frames: int,
    crop: int,
    flips: bool,
    seed: int | None,
    samples: int,
    noise_sigma: float = 0.0,
) -> Iterator[dict[str, Any]]:
    """Random training samples from every window of one shard, in the task that reads it."""
    key = (frames, crop, flips, seed, samples, noise_sigma)
    if key not in _SAMPLERS:
        _SAMPLERS[key] = _CropSampler(
            frames=frames, crop=crop, flips=flips, seed=seed, samples=samples, noise_sigma=noise_sigma
        )
    sampler = _SAMPLERS[key]
    for row in _read_shard(item):
        yield from sampler(row)


def window_key(row: dict[str, Any]) -> str:
    """Names the stored window a training sample came from (in errors such as a non-finite loss)."""
    return f"{row['video_id']}/clip-{int(row['clip']):03d}/window-{int(row['start'])}"


def _read_shard(item: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every row (training window) of one Parquet shard, read row group by row group (one window each)."""
    import pyarrow.parquet as pq

    with storage.open_input(item["uri"]) as handle:
        shard = pq.ParquetFile(handle)
        for index in range(shard.num_row_groups):
            yield from shard.read_row_group(index).to_pylist()


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
    }
    return dataset.flat_map(_sample_shard, fn_kwargs=sample, num_cpus=num_cpus)


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


def with_overrides(config: DataConfig, overrides: dict[str, Any]) -> DataConfig:
    """``config`` with flat ``key=value`` overrides applied (unknown keys are an error)."""
    merged = {**config.to_dict(), **overrides}
    return DataConfig.from_dict(merged)
