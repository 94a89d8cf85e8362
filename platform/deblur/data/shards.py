"""The stored form of a synthesized dataset's outputs: Parquet training shards and eval clips.

One row of a shard is one window of consecutive pairs: raw uint8 bytes plus shape columns,
readable by any Parquet reader without Ray's tensor extension, one row group per row so that a
reader fetches one window without the rest of the shard. Why Parquet: rows are read lazily row
group by row group, Ray Data reads and shards Parquet across Train workers natively, and a few
large objects suit S3 far better than millions of PNGs.

Every object is written whole (staged locally or in memory, then uploaded or renamed by a
``_Committer`` on a thread of its own), so an interrupted task leaves no object that looks
finished. No Ray here: ``deblur.data.synth_job`` writes, ``deblur.data.reader`` reads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from fractions import Fraction
from typing import Any

import numpy as np

from deblur import storage
from deblur.data.blur import ClipParams
from deblur.data.dataset import eval_clip_objects

__all__ = ["window_row", "write_eval_clip"]

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

    A task that waited for each upload would sit idle for it (docs/data.md), and to a remote bucket
    that wait is the network's; so the next shard is synthesized meanwhile. One commit runs at a
    time and a new one first waits for it, so at most two staged shards are held (in memory, for
    S3). ``wait``
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


def window_row(
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


def write_eval_clip(
    prefix: str, fps: Fraction, blurry: list[np.ndarray], sharp: list[np.ndarray], *, committer: _Committer
) -> None:
    """Both videos of one evaluation clip, each committed in the background once encoded."""
    from deblur.video import EncoderOptions, write_video

    lossless = EncoderOptions(lossless=True, preset="ultrafast")
    for uri, frames in zip(eval_clip_objects(prefix), (blurry, sharp), strict=True):
        with contextlib.ExitStack() as stage:  # an encoding error leaves the stage uncommitted
            staged = stage.enter_context(storage.staged_output(uri, suffix=".mp4"))
            write_video(staged, frames, fps=fps, encoder=lossless)
            committer.submit(uri, stage.pop_all())


def _read_shard(item: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every row (training window) of one Parquet shard, read row group by row group (one window each)."""
    import pyarrow.parquet as pq

    with storage.open_input(item["uri"]) as handle:
        shard = pq.ParquetFile(handle)
        for index in range(shard.num_row_groups):
            yield from shard.read_row_group(index).to_pylist()
