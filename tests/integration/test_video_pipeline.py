"""``transform_video``'s threads: decoding and encoding beside the processor, on real files.

Frames keep their order and timestamps, the decoder runs ahead of the processor only a few
frames, and a failure in any thread stops the others and leaves no file.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from deblur.engine import OnlineDeblurrer, deblur_frames
from deblur.video import EncoderOptions, VideoError, read_frames, transform_video
from media import stream_facts
from tiny import tiny_model


def pipeline_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("video-")]


class Failing:
    """A processor that raises at its ``at``-th frame."""

    def __init__(self, at: int) -> None:
        self.at, self.seen = at, 0

    def push(self, frame: np.ndarray) -> list[np.ndarray]:
        self.seen += 1
        if self.seen == self.at:
            raise RuntimeError(f"processor failed at frame {self.at}")
        return [frame]

    def finish(self) -> list[np.ndarray]:
        return []


def test_frames_keep_their_order_and_times_with_the_engine_holding_two_back(
    make_video: Callable[..., Path], tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = tiny_model(m=2)
    source = make_video("clip.mp4", width=40, height=30, frames=20)
    out = tmp_path / "sharp.mp4"
    result = transform_video(source, out, OnlineDeblurrer(model, device="cpu"), encoder=EncoderOptions(lossless=True))
    assert result.frames == 20
    expected = np.stack(list(deblur_frames(model, read_frames(source), device="cpu")))
    np.testing.assert_array_equal(np.stack(list(read_frames(out))), expected)
    before, after = stream_facts(source), stream_facts(out)
    assert after["times"] == before["times"] and after["audio_packets"] == before["audio_packets"]
    assert pipeline_threads() == []


def test_a_failing_processor_stops_every_thread_and_leaves_nothing(
    make_video: Callable[..., Path], tmp_path: Path
) -> None:
    source = make_video("clip.mp4", frames=30)
    out = tmp_path / "out" / "sharp.mp4"
    out.parent.mkdir()
    with pytest.raises(RuntimeError, match="processor failed at frame 12"):
        transform_video(source, out, Failing(at=12))
    assert pipeline_threads() == []
    assert list(out.parent.iterdir()) == []


def test_a_decode_failure_mid_video_names_the_input_and_leaves_nothing(
    make_video: Callable[..., Path], tmp_path: Path
) -> None:
    source = make_video("cut.mp4", frames=60, audio=False, container_options={"movflags": "+faststart"})
    source.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    out = tmp_path / "out" / "sharp.mp4"
    out.parent.mkdir()
    with pytest.raises(VideoError, match=rf"^{source}: (truncated or corrupt|corrupt video at frame)"):
        transform_video(source, out, Failing(at=0))  # at=0: never fails itself
    assert pipeline_threads() == []
    assert list(out.parent.iterdir()) == []


class CountingReader(io.FileIO):
    """A file that counts the bytes read from it (by the decoder thread)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.bytes_read = 0

    def read(self, size: int = -1) -> bytes:  # what PyAV calls
        data = super().read(size)
        self.bytes_read += len(data)
        return data


def test_the_decoder_runs_ahead_of_the_processor_by_a_few_frames_only(tmp_path: Path) -> None:
    # Noise compresses badly: each frame is about 9 KB of the file, so bytes read count frames decoded.
    path = tmp_path / "noise.mkv"
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv444p"
        for _ in range(300):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    size = path.stat().st_size
    source = CountingReader(path)
    release = threading.Event()
    read_at_first_frame: list[int] = []

    class Stalled:
        def push(self, frame: np.ndarray) -> list[np.ndarray]:
            if not read_at_first_frame:
                read_at_first_frame.append(source.bytes_read)
                release.wait()  # a slow model
            return [frame]

        def finish(self) -> list[np.ndarray]:
            return []

    worker = threading.Thread(target=transform_video, args=(source, tmp_path / "out.mkv", Stalled()))
    worker.start()
    try:
        time.sleep(1.0)
        read_while_stalled = source.bytes_read
    finally:
        release.set()
        worker.join()
    assert read_while_stalled > read_at_first_frame[0]  # decoding went on while the processor worked
    assert read_while_stalled < size / 10  # but stopped a few frames ahead: memory does not follow the video
    assert source.bytes_read == size  # and the whole video went through afterwards
    assert len(list(read_frames(tmp_path / "out.mkv"))) == 300
