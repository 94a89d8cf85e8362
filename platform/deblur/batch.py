"""Bulk deblurring of a video archive in object storage, as a Ray job.

``run_batch(IN_PREFIX, OUT_PREFIX)`` lists the videos under IN_PREFIX and deblurs each with one
sequential, recurrent actor: the model's state runs through the whole video, so a video is never
split. Actors form a pool sized to the cluster (a GPU each, or a fraction, where there are GPUs;
CPU cores otherwise) and take one video at a time. Each video is streamed: decoded from object
storage, through the online engine (``inference.deblur_file``, the same path as ``deblur
video``), encoded to a local temporary file, uploaded (multipart) to a staging key and then
committed to its final key, which mirrors the input key:

    IN/a/b.mp4  ->  OUT/a/b.mp4
    OUT/_deblur/records/<key>.json    one record per video, written when it ends (key URL-quoted)
    OUT/_deblur/manifest.json         every record and a summary, at the end of the run
    OUT/_deblur/staging/...           uploads in flight; removed when committed or failed

Bad input (corrupt, unsupported, no video stream, a key with an empty, ``.`` or ``..`` segment)
is recorded as ``failed`` with ``error_kind="input"`` and the others go on. An actor that dies
mid-video (process killed, node lost) is replaced and the video retried from its start,
``max_retries`` times; only committed keys are ever visible at their final name. What outlasts
the retries is recorded with ``error_kind="transient"``. A rerun skips videos whose record says
``ok`` for the same input version (size and ETag) and whose output exists, and videos that failed
for bad input at the same version (``retry_failed`` tries those again too); it retries transient
failures. A rerun with nothing to do writes nothing. Nothing is written outside OUT_PREFIX.

The per-video work (``deblur_object``) is plain Python, testable without Ray; only ``run_batch``
talks to the cluster.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, ClassVar
from urllib.parse import quote

from pydantic import BeforeValidator, Field, StrictBool, StrictInt, StrictStr, model_validator

from deblur import storage
from deblur.batch_split import SplitVideos, split_video
from deblur.batch_worker import ChunkTask, VideoTask, VideoWorker, deblur_object, failure_record
from deblur.settings import Number, Settings

__all__ = ["BatchConfig", "BatchRun", "VideoTask", "deblur_object", "plan_batch", "run_batch"]

CONTROL_DIR = "_deblur"
MANIFEST_FORMAT = "deblur-batch-manifest/1"


class BatchError(RuntimeError):
    """The job as a whole cannot run (bad prefixes, nothing to do, a missing checkpoint)."""


def _pattern_list(value: Any) -> Any:
    return (value,) if isinstance(value, str) else value  # one glob may come as a plain string


class BatchConfig(Settings):
    label: ClassVar[str] = "batch"

    checkpoint: StrictStr | None = None  # None: the bundled default model
    # globs on the key below IN_PREFIX
    include: Annotated[tuple[StrictStr, ...], BeforeValidator(_pattern_list)] = storage.VIDEO_PATTERNS
    actors: StrictInt | None = Field(None, ge=1)  # None: as many as the cluster fits
    cpus_per_actor: Number = Field(1.0, gt=0)
    gpus_per_actor: Number | None = Field(None, ge=0)  # None: 1 when the cluster has GPUs, else 0
    device: StrictStr = "auto"
    lossless: StrictBool = False
    crf: StrictInt = Field(18, ge=0, le=51)
    preset: StrictStr = "medium"
    max_retries: StrictInt = Field(2, ge=0)  # per video, after an actor died or an unexpected error
    torch_threads: StrictInt = Field(0, ge=0)  # 0: one per reserved CPU
    precision: StrictStr = "auto"  # as `deblur video --precision`: auto, fp32, int8 (CPU), bf16, fp16 (CUDA)
    compiled: StrictBool = False  # as `deblur video --compile`: compiled once per actor and frame size
    # One long video across the actors (deblur.chunks): cut at keyframes into chunks of at least
    # min_chunk_seconds, each warmed up over warmup_frames before it. Off: one actor per video.
    split_long_videos: StrictBool = False
    min_chunk_seconds: Number = Field(10.0, gt=0)
    warmup_frames: StrictInt = Field(8, ge=0)

    @model_validator(mode="after")
    def _known_precision(self) -> BatchConfig:
        from deblur.precision import PRECISIONS

        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        return self


def _control(output_prefix: str, *parts: str) -> str:
    return storage.join_uri(output_prefix, CONTROL_DIR, *parts)


def _record_uri(output_prefix: str, key: str) -> str:
    # Quoting "/" and "%" too keeps names unambiguous (a/b.mp4 and a--b.mp4 stay apart). Names too
    # long for a file system are hashed behind "%%", which quote() never produces.
    name = quote(key, safe="")
    if len(name) > 200:
        name = "%%" + hashlib.sha256(key.encode()).hexdigest()
    return _control(output_prefix, "records", name + ".json")


def _check_key(key: str, source: str) -> str | None:
    """Why ``key`` cannot be mirrored below the output prefix, or None when it can."""
    if any(segment in ("", ".", "..") for segment in key.split("/")):
        # "a/../../x" would leave the output prefix on a file system (and on anything that syncs
        # S3 to one); "a//x" and "./x" would land on another video's output there.
        return f"{source}: key {key!r} has an empty, '.' or '..' path segment; not deblurred"
    if storage.is_s3(source) and ("#" in key or "?" in key):
        # s3:// URIs are parsed as URLs here: the key would be cut at "#" or "?" (another key).
        return f"{source}: key {key!r} contains '#' or '?', which cannot be addressed as s3://; not deblurred"
    return None


def _check_prefixes(input_prefix: str, output_prefix: str) -> None:
    def norm(prefix: str) -> str:
        return prefix.rstrip("/") + "/" if storage.is_s3(prefix) else str(Path(prefix).resolve()) + "/"

    a, b = norm(input_prefix), norm(output_prefix)
    if a.startswith(b) or b.startswith(a):
        raise BatchError(f"input {input_prefix} and output {output_prefix} overlap: use separate prefixes")


def plan_batch(
    input_prefix: str,
    output_prefix: str,
    include: tuple[str, ...] = storage.VIDEO_PATTERNS,
    *,
    retry_failed: bool = False,
) -> tuple[list[VideoTask], list[dict[str, Any]], list[dict[str, Any]]]:
    """``(videos to deblur, records of videos already done, records of keys rejected now)``.

    Done: ``ok`` at the same input version with the output present, or failed for bad input at
    the same version (unless ``retry_failed``). Transient failures are planned again.
    """
    _check_prefixes(input_prefix, output_prefix)
    try:
        uris = storage.list_files(input_prefix)
    except storage.StorageError as error:
        raise BatchError(str(error)) from error
    tasks, done, rejected = [], [], []
    for uri in uris:
        key = storage.relative_key(uri, input_prefix)
        if not any(fnmatch.fnmatch(key, pat) or fnmatch.fnmatch(PurePosixPath(key).name, pat) for pat in include):
            continue
        problem = _check_key(key, uri)
        # A rejected key is rejected whatever its content (which may not even be addressable).
        version = storage.object_version(uri) if problem is None else None
        previous = _read_record(_record_uri(output_prefix, key))
        if previous is not None and (previous.get("key"), previous.get("version")) != (key, version):
            previous = None  # another key's record (older naming) or an older version of this one
        failed_for_input = (
            previous is not None
            and previous.get("status") == "failed"
            and previous.get("error_kind") == "input"
            and not retry_failed
        )
        if problem is not None:
            if failed_for_input:
                done.append(previous)  # its record is there already: a rerun writes nothing
            else:
                rejected.append(failure_record(key, uri, None, None, problem, kind="input", attempts=0))
            continue
        task = VideoTask(source=uri, destination=storage.join_uri(output_prefix, key), key=key, version=version)
        if failed_for_input or (
            previous is not None and previous.get("status") == "ok" and storage.exists(task.destination)
        ):
            done.append(previous)
            continue
        tasks.append(task)
    return tasks, done, rejected


def _read_record(uri: str) -> dict[str, Any] | None:
    try:
        return json.loads(storage.read_bytes(uri))
    except (storage.StorageError, ValueError, FileNotFoundError):
        return None


@dataclass(frozen=True)
class BatchRun:
    manifest_uri: str | None
    planned: list[VideoTask]
    records: list[dict[str, Any]]  # every video: done earlier, and this run's
    processed: int
    seconds: float

    @property
    def summary(self) -> dict[str, int]:
        return {status: sum(r["status"] == status for r in self.records) for status in ("ok", "failed")}


def _cluster_resources() -> dict[str, float]:
    import ray

    return dict(ray.cluster_resources())


def _pool_size(config: BatchConfig, gpus_per_actor: float, videos: int) -> int:
    if config.split_long_videos:
        videos = 1 << 30  # one video may keep every actor busy
    if config.actors is not None:
        return min(config.actors, videos)
    resources = _cluster_resources()
    if gpus_per_actor > 0:
        fit = int(resources.get("GPU", 0) // gpus_per_actor)
    else:
        fit = int(resources.get("CPU", 1) // config.cpus_per_actor)
    return max(1, min(fit, videos))


def _write_json(uri: str, value: dict[str, Any]) -> None:
    storage.write_bytes(uri, json.dumps(value, indent=1).encode(), content_type="application/json")


def _write_manifest(uri: str, manifest: dict[str, Any]) -> None:
    previous = _read_record(uri)
    if previous is not None and all(previous.get(k) == manifest[k] for k in ("input", "output", "summary", "videos")):
        return  # the same videos with the same records: a rerun with nothing to do writes nothing
    _write_json(uri, manifest)


def _abort_uploads(uris: list[str]) -> None:
    """Abort unfinished multipart uploads to these keys.

    A commit copies large staged objects onto their final key in parts; an actor killed during
    that copy leaves an upload that is never completed (invisible, but stored and billed).
    """
    keys: dict[str, set[str]] = {}
    for uri in uris:
        if storage.is_s3(uri):
            bucket, key = storage.split_s3_uri(uri)
            keys.setdefault(bucket, set()).add(key)
    client = storage.s3_client()
    for bucket, wanted in keys.items():
        try:
            prefix = os.path.commonprefix(sorted(wanted))  # noqa: RUF071 -- S3 prefixes are strings, not paths
            pages = client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix)
            for page in pages:
                for upload in page.get("Uploads", []):
                    if upload["Key"] in wanted:
                        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        except Exception as error:  # botocore raises several unrelated types
            raise storage.StorageError(f"cannot clean up uploads in s3://{bucket}: {error}") from error


def run_batch(
    input_prefix: str,
    output_prefix: str,
    *,
    config: BatchConfig | None = None,
    dry_run: bool = False,
    retry_failed: bool = False,
    progress: bool = True,
    on_actor: Callable[[Any, int], None] | None = None,
) -> BatchRun:
    """Deblur every video under ``input_prefix`` into ``output_prefix`` on the current Ray cluster.

    ``retry_failed`` also retries videos that failed for bad input (e.g. after an upgrade that
    reads a new codec). ``on_actor(actor, pid)`` is called for each actor started (tests use it
    to kill one).
    """
    config = config or BatchConfig()
    input_prefix, output_prefix = storage.absolute(input_prefix), storage.absolute(output_prefix)
    if config.checkpoint is not None:
        config = config.model_copy(update={"checkpoint": storage.absolute(config.checkpoint)})
    started = time.perf_counter()
    tasks, done, rejected = plan_batch(input_prefix, output_prefix, config.include, retry_failed=retry_failed)
    if not tasks and not done and not rejected:
        raise BatchError(f"{input_prefix}: no videos found (looked for {', '.join(config.include)})")
    if dry_run:
        return BatchRun(
            manifest_uri=None,
            planned=tasks,
            records=sorted(done + rejected, key=lambda r: r["key"]),
            processed=0,
            seconds=time.perf_counter() - started,
        )
    for record in rejected:
        _write_json(_record_uri(output_prefix, record["key"]), record)
    records = list(rejected)
    if tasks:
        records += _run_actors(tasks, output_prefix, config, progress=progress, on_actor=on_actor)

    everything = sorted(done + records, key=lambda r: r["key"])
    manifest = {
        "format": MANIFEST_FORMAT,
        "input": input_prefix,
        "output": output_prefix,
        "config": config.to_dict(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "summary": {s: sum(r["status"] == s for r in everything) for s in ("ok", "failed")},
        "videos": everything,
    }
    manifest_uri = _control(output_prefix, "manifest.json")
    _write_manifest(manifest_uri, manifest)
    return BatchRun(
        manifest_uri=manifest_uri,
        planned=tasks,
        records=everything,
        processed=len(records),
        seconds=time.perf_counter() - started,
    )


class _ActorPool:
    """A pool of ``VideoWorker`` actors working through a queue of videos: a video whose actor died
    goes back to the queue (``max_retries`` times) and a new actor takes the dead one's place."""

    def __init__(
        self,
        config: BatchConfig,
        output_prefix: str,
        *,
        gpus: float,
        bar: Any,
        on_actor: Callable[[Any, int], None] | None,
    ) -> None:
        import ray

        self.config, self.output_prefix, self.bar, self.on_actor = config, output_prefix, bar, on_actor
        self.staging = _control(output_prefix, "staging")
        self.threads = config.torch_threads or max(1, int(config.cpus_per_actor))
        self.actor_class = ray.remote(num_cpus=config.cpus_per_actor, num_gpus=gpus, max_restarts=0)(VideoWorker)
        self.queue: deque[VideoTask | ChunkTask] = deque()
        self.split = SplitVideos(self.staging, config.precision)
        self.attempts: dict[str, int] = {}
        self.idle: list[Any] = []
        # ref -> (actor, task, its staging prefix or part key)
        self.in_flight: dict[Any, tuple[Any, VideoTask | ChunkTask, str]] = {}
        self.records: list[dict[str, Any]] = []
        self.frames_done, self.started = 0, time.perf_counter()

    def start_actor(self) -> Any:
        import ray

        config = self.config
        encoder = {"lossless": config.lossless, "crf": config.crf, "preset": config.preset}
        actor = self.actor_class.remote(
            config.checkpoint, config.device, self.threads, encoder, config.precision, config.compiled
        )
        if self.on_actor is not None:
            self.on_actor(actor, ray.get(actor.pid.remote()))
        return actor

    def finish(self, record: dict[str, Any]) -> None:
        record["attempts"] = self.attempts.get(record["key"], 0) + 1
        _write_json(_record_uri(self.output_prefix, record["key"]), record)
        self.records.append(record)
        self.frames_done += record.get("frames") or 0
        if self.bar is not None:
            elapsed = time.perf_counter() - self.started
            failed = sum(r["status"] != "ok" for r in self.records)
            self.bar.set_postfix(frames_per_s=f"{self.frames_done / elapsed:.1f}", failed=failed)
            self.bar.update(1)

    def retry_or_fail(self, item: VideoTask | ChunkTask, error: str) -> None:
        key = _attempt_key(item)
        self.attempts[key] = self.attempts.get(key, 0) + 1
        if self.attempts[key] <= self.config.max_retries:
            self.queue.append(item)
            return
        self.attempts[key] -= 1  # the record counts attempts made, not retries granted
        task = item.video if isinstance(item, ChunkTask) else item
        self.split.drop(task.key)
        # Not the video's fault as far as we know: a rerun tries it again.
        self.finish(
            failure_record(
                task.key,
                task.source,
                task.destination,
                task.version,
                error,
                kind="transient",
                precision=self.config.precision,
            )
        )

    def run(self, tasks: list[VideoTask], size: int) -> list[dict[str, Any]]:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        from deblur.chunks import NotSplittableError

        for task in tasks:
            chunks = self._chunks(task, size)
            if chunks:
                self.split.expect(chunks)
            self.queue.extend(chunks or [task])
        self.idle = [self.start_actor() for _ in range(size)]
        while self.queue or self.in_flight:
            while self.queue and self.idle:
                item = self.queue.popleft()
                if isinstance(item, ChunkTask) and not self.split.wanted(item.video.key):
                    continue  # its video failed, or is deblurred in one piece now
                actor = self.idle.pop()
                if isinstance(item, ChunkTask):
                    attempt = self.split.part_uri(item)
                    ref = actor.deblur_chunk.remote(item, attempt)
                else:
                    attempt = storage.join_uri(self.staging, uuid.uuid4().hex)
                    ref = actor.deblur.remote(item, storage.join_uri(attempt, item.key))
                self.in_flight[ref] = (actor, item, attempt)
            if not self.in_flight:
                continue
            (ref,), _ = ray.wait(list(self.in_flight), num_returns=1)
            actor, item, attempt = self.in_flight.pop(ref)
            try:
                self._done(item, ray.get(ref))
                self.idle.append(actor)
            except RayActorError as error:
                # The actor (or its node) died mid-video: its partial upload goes, a new actor
                # takes its place, and the video (or chunk) starts again from its first frame.
                storage.delete_prefix(attempt)
                if isinstance(item, VideoTask):
                    _abort_uploads([item.destination])
                ray.kill(actor)
                self.idle.append(self.start_actor())
                self.retry_or_fail(item, f"actor died: {str(error).splitlines()[0]}")
            except RayTaskError as error:
                self.idle.append(actor)
                cause = error.cause if getattr(error, "cause", None) is not None else error
                if isinstance(item, ChunkTask) and isinstance(cause, NotSplittableError):
                    if self.split.wanted(item.video.key):
                        self.split.drop(item.video.key)
                        self.queue.append(item.video)  # deblurred in one piece after all
                    continue
                self.retry_or_fail(item, f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}")
        return self.records

    def _chunks(self, task: VideoTask, actors: int) -> list[ChunkTask] | None:
        config = self.config
        if not config.split_long_videos:
            return None
        return split_video(task, actors=actors, warmup=config.warmup_frames, min_seconds=config.min_chunk_seconds)

    def _done(self, item: VideoTask | ChunkTask, result: dict[str, Any]) -> None:
        if isinstance(item, VideoTask):
            self.finish(result)
        elif self.split.wanted(item.video.key):
            outcome = self.split.add(result)  # the video's record once its last part is in and joined
            if isinstance(outcome, VideoTask):
                self.queue.append(outcome)  # its parts could not be joined: in one piece
            elif outcome is not None:
                self.finish(outcome)

    def close(self) -> None:
        import ray

        for actor in self.idle + [a for a, _, _ in self.in_flight.values()]:
            ray.kill(actor)
        storage.delete_prefix(self.staging)


def _attempt_key(item: VideoTask | ChunkTask) -> str:
    return f"{item.video.key}#chunk{item.chunk.index}" if isinstance(item, ChunkTask) else item.key


def _run_actors(
    tasks: list[VideoTask],
    output_prefix: str,
    config: BatchConfig,
    *,
    progress: bool,
    on_actor: Callable[[Any, int], None] | None,
) -> list[dict[str, Any]]:
    """Deblur ``tasks`` on a pool of actors; the record of each, written as it ends."""
    import torch

    from deblur.checkpoint import load_checkpoint
    from deblur.cluster import connect_ray
    from deblur.precision import check_precision

    load_checkpoint(config.checkpoint)  # fail here, once, with a clear message, not in every actor
    connect_ray()
    gpus = config.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if _cluster_resources().get("GPU", 0) >= 1 else 0.0
    # The device an actor will pick, so that int8 on a GPU or fp16 on a CPU fails here, once.
    device = config.device if config.device != "auto" else "cuda" if gpus else "cpu"
    check_precision(config.precision, torch.device(device))
    storage.delete_prefix(_control(output_prefix, "staging"))  # what killed runs left behind
    _abort_uploads([task.destination for task in tasks])  # and commits cut off mid-copy
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), unit="video", desc="deblur batch", dynamic_ncols=True)
    pool = _ActorPool(config, output_prefix, gpus=gpus, bar=bar, on_actor=on_actor)
    try:
        return pool.run(tasks, _pool_size(config, gpus, len(tasks)))
    finally:
        if bar is not None:
            bar.close()
        pool.close()
