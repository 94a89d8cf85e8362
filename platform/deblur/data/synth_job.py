"""The synthesis job with Ray Data: high-speed videos in object storage -> Eq. 1 pairs -> shards.

``synthesize_dataset(IN_PREFIX, OUT_PREFIX)`` lists the videos under IN_PREFIX and runs one Ray
Data task per video (``process_video``). A task decodes its video as a stream, cuts it into clips
(each with its own tau and T, see ``deblur.data.blur``), and writes training shards or evaluation
clips and the video's record under OUT_PREFIX (the layout: ``deblur.data.dataset``); the driver
writes ``manifest.json`` at the end.

A record is written only after all of the video's outputs are complete, and every output object is
written whole (staged locally, then uploaded or renamed), so an interrupted run leaves no shard that
looks finished: readers use only shards named by ``status == "ok"`` records; a video that fails
half-way has what it wrote deleted. A rerun skips videos whose record matches the object's current
size and ETag and the digest of the settings that shape a video's outputs (``config_digest``).
Ray is imported only when the job runs.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from deblur import storage
from deblur.data.blur import ClipDegradation, ClipParams, ClipSchedule, degrade_pairs, draw_degradation, synthesize_clip
from deblur.data.dataset import (
    DataConfig,
    config_digest,
    digests_of_done,
    read_corpus_manifest,
    record_objects,
    split_for,
    unit_hash,
    video_id_for,
    write_manifest,
)
from deblur.data.shards import _Committer, _ShardWriter, window_row, write_eval_clip

__all__ = ["SynthesisRun", "plan_tasks", "process_video", "synthesize_dataset"]


# ---------------------------------------------------------------------------------------------
# One video (runs inside a Ray Data task; plain Python, testable without Ray)
# ---------------------------------------------------------------------------------------------


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


def _clip_blur(motion: dict[str, Any], tau: int, scale: float) -> dict[str, float]:
    """Blur lengths of a clip at the output size: the camera's, and the fastest object's."""
    fastest = max(motion.get("object_px_per_frame") or [0.0])
    return {
        "blur_px": round(motion["camera_px_per_frame"] * tau * scale, 2),
        "object_blur_px": round(fastest * tau * scale, 2),
    }


class _VideoSynthesis:
    """One video of the job: its clips in order, into training windows or evaluation clips, and
    what the record says of them (``record`` is filled in as the clips are made)."""

    def __init__(
        self,
        task: dict[str, Any],
        config: DataConfig,
        record: dict[str, Any],
        *,
        writer: _ShardWriter,
        committer: _Committer,
    ) -> None:
        self.task, self.config, self.record = task, config, record
        self.writer, self.committer = writer, committer
        self.video_id, self.split, self.out = task["video_id"], task["split"], task["out"]
        motion = task.get("motion", {})
        # The rendered motion (from corpus.json), so that clips can say how long their blur is.
        self.motion = motion if "camera_px_per_frame" in motion else None

    def run(self) -> None:
        """Every clip of the video; raises ``VideoError`` for input that gives no usable pair."""
        from deblur.video import VideoError, frame_to_rgb, probe_video, read_frames

        uri, config, record = self.task["uri"], self.config, self.record
        rng = np.random.default_rng([config.seed, int(unit_hash("clips", self.video_id) * 2**32)])
        with storage.open_input(uri) as handle:
            info = probe_video(handle, name=uri)
            handle.seek(0)
            record.update(source_fps=str(info.fps), width=info.width, height=info.height)
            schedule = ClipSchedule(rng, config.synthesis)
            # The decoder may drop frames no exposure reads instead of decoding them. On the benchmark's
            # corpus (240 fps H.264 with B-frames) at the default tau and T, 38% of the frames fall
            # between exposures and the decoder drops half of those (1,414 of 7,680 frames):
            # synthesis in one process takes 8% less time.
            threads = self.task.get("decode_threads")
            frames = _counting_drops(
                read_frames(handle, name=uri, threads=threads, rgb=False, needed=schedule.uses), record
            )
            source_start = 0
            for clip_index in range(1_000_000):
                params = schedule.params(clip_index)
                outputs = self._clip(clip_index, params, frames, fps=info.fps, to_rgb=frame_to_rgb, start=source_start)
                if outputs == 0:
                    break
                source_start += params.source_frames(outputs)
                if outputs < config.synthesis.clip_frames:
                    break  # the video ended inside this clip
            self.writer.flush()
            self.committer.wait()  # every output complete before the record can name it
            if self.split == "train":
                record["outputs"] = [storage.relative_key(shard, self.out) for shard in self.writer.shards]
            record["source_frames"] = source_start  # frames the clips span (dropped ones included)
        if record["pairs"] == 0:
            evaluation = self.split == "eval"
            needed = max(config.synthesis.taus) if evaluation else config.min_window_frames
            raise VideoError(
                f"{uri}: too short for one {'clip' if evaluation else 'training window'} "
                f"(needs about {needed} {'frames' if evaluation else 'output pairs'})"
            )

    def _clip(
        self, index: int, params: ClipParams, frames: Iterator[Any], *, fps: Fraction, to_rgb: Any, start: int
    ) -> int:
        """Clip ``index`` of the video, made and stored; returns how many pairs it gave."""
        synthesis = self.config.synthesis
        pairs = synthesize_clip(
            frames,
            params,
            outputs=synthesis.clip_frames,
            linear_light=synthesis.linear_light,
            gamma=synthesis.gamma,
            scale=synthesis.scale,
            to_rgb=to_rgb,
        )
        degradation = None
        if synthesis.degrade:
            # Its own generator: the clip schedule's draws (and so the decoder's plan) stay as they are.
            degrade_rng = np.random.default_rng(
                [self.config.seed, int(unit_hash("degrade", self.video_id) * 2**32), index]
            )
            degradation = draw_degradation(degrade_rng)
            pairs = degrade_pairs(pairs, degradation, rng=degrade_rng, gamma=synthesis.gamma)
        blurry, sharp, windowed = self._windows(index, params, pairs)
        if not blurry:
            return 0
        kept = len(blurry) if self.split == "eval" else windowed
        if kept:
            self._record_clip(index, params, blurry, sharp, kept=kept, fps=fps, start=start, degradation=degradation)
        return len(blurry)

    def _windows(
        self, index: int, params: ClipParams, pairs: Iterator[tuple[np.ndarray, np.ndarray]]
    ) -> tuple[list[np.ndarray], list[np.ndarray], int]:
        """``(blurry, sharp, pairs in training windows)``: a train video's windows go to its shards."""
        blurry: list[np.ndarray] = []
        sharp: list[np.ndarray] = []
        window_start = 0
        train = self.split == "train"
        for b, s in pairs:
            blurry.append(b)
            sharp.append(s)
            if train and len(blurry) - window_start == self.config.window_frames:
                window = slice(window_start, len(blurry))
                self.writer.add(window_row(self.video_id, index, window_start, params, blurry[window], sharp[window]))
                window_start = len(blurry)
                # Written windows are not needed again: keep memory to one window.
                blurry[:window_start] = [blurry[0]] * window_start
                sharp[:window_start] = [sharp[0]] * window_start
        outputs = len(blurry)
        if train and outputs - window_start >= self.config.min_window_frames:
            window = slice(window_start, outputs)
            self.writer.add(window_row(self.video_id, index, window_start, params, blurry[window], sharp[window]))
            window_start = outputs
        return blurry, sharp, window_start

    def _record_clip(
        self,
        index: int,
        params: ClipParams,
        blurry: list[np.ndarray],
        sharp: list[np.ndarray],
        *,
        kept: int,
        fps: Fraction,
        start: int,
        degradation: ClipDegradation | None,
    ) -> None:
        """The clip in the record; an evaluation clip is also written, whole, as two videos.

        ``fps``: the source video's; ``start``: the source frame where the clip starts.
        """
        record = self.record
        if self.split == "eval":
            clip_prefix = storage.join_uri(self.out, "eval", self.video_id, f"clip-{index:03d}")
            write_eval_clip(clip_prefix, params.output_fps(fps), blurry, sharp, committer=self.committer)
            record["outputs"].append(storage.relative_key(clip_prefix, self.out))
        scale = self.config.synthesis.scale
        record["clips"].append(
            {
                "clip": index,
                "tau": params.tau,
                "stride": params.stride,
                "source_start": start,
                "source_end": start + params.source_frames(len(blurry)),
                "pairs": kept,
                "output_fps": str(params.output_fps(fps)),
                **({"degradation": degradation.to_dict()} if degradation else {}),
                **(_clip_blur(self.motion, params.tau, scale) if self.motion else {}),
            }
        )
        record["pairs"] += kept
        record["out_height"], record["out_width"] = blurry[-1].shape[:2]


def process_video(task: dict[str, Any]) -> dict[str, Any]:
    """Synthesize one video (a row of the job's task list) and return its manifest record.

    Bad input (not a video, corrupt, truncated, too short) gives ``status="skipped"`` with the
    reason; a storage error (possibly transient) or an unexpected one gives ``status="failed"``,
    retried by the next run. Either way, the objects this attempt wrote are deleted again.
    """
    from deblur.video import VideoError

    config = DataConfig.from_dict(task["config"])
    video_id, out = task["video_id"], task["out"]
    record: dict[str, Any] = {
        "video": task["uri"],
        "video_id": video_id,
        "version": task["version"],
        "config_digest": task.get("config_digest"),
        "split": task["split"],
        "status": "ok",
        "error": None,
        "clips": [],
        "pairs": 0,
        "outputs": [],
    }
    started = time.perf_counter()
    record_uri = storage.join_uri(out, "records", f"{video_id}.json")
    written: list[str] = []  # every object this attempt wrote, deleted again if it fails
    committer = _Committer(written=written)
    writer = _ShardWriter(storage.join_uri(out, "train", video_id), config.shard_target_bytes, committer=committer)
    try:
        _VideoSynthesis(task, config, record, writer=writer, committer=committer).run()
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
        _delete_objects(sorted(set(task.get("stale_outputs", [])) - set(record_objects(record, out))))
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


_MOTION_KEYS = ("camera_px_per_frame", "object_px_per_frame")


def _corpus_entries(input_prefix: str) -> dict[str, dict[str, Any]]:
    """``{video_id: entry}`` of the videos ``corpus.json`` describes (their split and motion)."""
    entries = read_corpus_manifest(input_prefix).get("videos", [])
    return {video_id_for(e["video"].rstrip("/").rsplit("/", 1)[-1]): e for e in entries if "video" in e}


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
    digest, done_digests = config_digest(config), digests_of_done(config)
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
                "stale_outputs": record_objects(previous, output_prefix) if previous else [],
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
