"""Long videos across several batch actors (``deblur batch --split-long-videos``).

The batch pool asks ``split_video`` for a video's chunks (a few seeks into its header, no
decoding), hands each chunk to an actor, and gives each finished part to ``SplitVideos``. When a
video's parts are all in, it joins them in order (``deblur.chunks.join_chunks``: packets copied,
not re-encoded, the source's audio copied) and commits the whole file at its final key, as a
video deblurred in one piece is; the parts live under the staging prefix until then. Plain Python:
the pool (``deblur.batch``) does the Ray part.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from deblur import storage
from deblur.batch_worker import ChunkTask, VideoTask, failure_record

__all__ = ["SplitVideos", "split_video"]


def split_video(task: VideoTask, *, actors: int, warmup: int, min_seconds: float) -> list[ChunkTask] | None:
    """The chunks of ``task``'s video for ``actors`` actors, or None to deblur it in one piece."""
    from deblur.chunks import NotSplittableError, plan_chunks
    from deblur.video import VideoError

    if actors < 2:
        return None
    try:
        with storage.open_input(task.source) as handle:
            chunks = plan_chunks(
                handle, PurePosixPath(task.key).name, chunks=actors, min_seconds=min_seconds, name=task.source
            )
    except (NotSplittableError, VideoError, storage.StorageError):
        return None  # deblurred whole: the one-piece path reports bad input as it always does
    if len(chunks) < 2:
        return None
    return [ChunkTask(video=task, chunk=chunk, warmup=warmup) for chunk in chunks]


@dataclass
class _Parts:
    task: VideoTask
    count: int
    started: float = field(default_factory=time.perf_counter)
    done: dict[int, dict[str, Any]] = field(default_factory=dict)


class SplitVideos:
    """The parts of the split videos in flight, and the join of each once its parts are in."""

    def __init__(self, staging: str, precision: str) -> None:
        self.staging, self.precision = staging, precision
        self.videos: dict[str, _Parts] = {}

    def part_uri(self, task: ChunkTask) -> str:
        name = f"part{task.chunk.index:04d}{PurePosixPath(task.video.key).suffix or '.mp4'}"
        return storage.join_uri(self.staging, "parts", task.video.key, name)

    def expect(self, tasks: list[ChunkTask]) -> None:
        self.videos[tasks[0].video.key] = _Parts(task=tasks[0].video, count=len(tasks))

    def drop(self, key: str) -> None:
        """Forget ``key``'s parts (the video is deblurred in one piece, or failed)."""
        if self.videos.pop(key, None) is not None:
            storage.delete_prefix(storage.join_uri(self.staging, "parts", key))

    def wanted(self, key: str) -> bool:
        return key in self.videos

    def add(self, part: dict[str, Any]) -> dict[str, Any] | VideoTask | None:
        """Take a finished part: the video's record once it is complete (joined and committed), the
        video's task when its parts cannot be joined (deblur it in one piece), else None."""
        from deblur.chunks import NotSplittableError
        from deblur.video import VideoError

        video = self.videos[part["key"]]
        if part["status"] != "ok":
            self.drop(part["key"])
            return failure_record(
                video.task.key,
                video.task.source,
                video.task.destination,
                video.task.version,
                part["error"],
                kind=part.get("error_kind", "input"),
                precision=self.precision,
            )
        video.done[part["index"]] = part
        if len(video.done) < video.count:
            return None
        try:
            return self._join(video)
        except NotSplittableError:
            return video.task
        except (VideoError, storage.StorageError) as error:
            task = video.task
            return failure_record(
                task.key,
                task.source,
                task.destination,
                task.version,
                str(error),
                kind="transient",
                precision=self.precision,
            )
        finally:
            self.drop(part["key"])

    def _join(self, video: _Parts) -> dict[str, Any]:
        from deblur.chunks import join_chunks
        from deblur.video import probe_video

        task, parts = video.task, [video.done[i] for i in range(video.count)]
        suffix = PurePosixPath(task.key).suffix or ".mp4"
        with tempfile.TemporaryDirectory(prefix="deblur-join-") as tmpdir:
            local_parts = []
            for part in parts:
                local = Path(tmpdir) / f"part{part['index']:04d}{suffix}"
                storage.download_file(part["uri"], local)
                local_parts.append(local)
            joined = Path(tmpdir) / f"joined{suffix}"
            with storage.open_input(task.source) as handle:
                rotation = probe_video(handle, name=task.source).rotation
            with storage.open_input(task.source) as handle:
                join_chunks(local_parts, handle, joined, rotation=rotation, name=task.source)
            staging = storage.join_uri(self.staging, "joined", task.key)
            storage.commit_file(joined, task.destination, staging_uri=staging)
        seconds = time.perf_counter() - video.started
        frames = sum(p["frames"] for p in parts)
        first = parts[0]
        return {
            "key": task.key,
            "source": task.source,
            "destination": task.destination,
            "version": task.version,
            "status": "ok",
            "error": None,
            "frames": frames,
            "width": first["width"],
            "height": first["height"],
            "video_fps": first["video_fps"],
            "seconds": round(seconds, 3),
            "fps": round(frames / seconds, 3) if seconds > 0 else None,
            "precision": first["precision"],
            "chunks": video.count,
            "warmup_frames": max(p["warmup"] for p in parts),
            **({"precision_note": first["precision_note"]} if "precision_note" in first else {}),
        }
