"""One video in chunks (``deblur.chunks``): cut at keyframes, warmed up, joined without re-encoding."""

from __future__ import annotations

import itertools
from pathlib import Path

import av
import numpy as np
import pytest

from deblur.checkpoint import load_model
from deblur.chunks import Chunk, deblur_chunk, join_chunks, plan_chunks
from deblur.evaluate import frame_psnr
from deblur.inference import deblur_file
from deblur.video import EncoderOptions
from media import write_test_video

LOSSLESS = EncoderOptions(lossless=True)  # compares the model's output, not the encoder's rounding
KEYFRAMES_EVERY_12 = {"g": "12", "keyint_min": "12", "sc_threshold": "0"}


@pytest.fixture(scope="module")
def model() -> object:
    return load_model(None).eval()  # the bundled model: its state is what the warm-up must rebuild


def frames_and_pts(path: Path) -> tuple[list[np.ndarray], list[int]]:
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    return [f.to_ndarray(format="rgb24") for f in frames], [int(f.pts) for f in frames]


def chunked(source: Path, tmp_path: Path, model: object, *, chunks: int, warmup: int) -> tuple[Path, list[Chunk]]:
    plan = plan_chunks(source, "out.mp4", chunks=chunks, min_seconds=0.3, name=source.name)
    parts = []
    for chunk in plan:
        part = tmp_path / f"part{chunk.index}.mp4"
        deblur_chunk(source, part, model, chunk, warmup=warmup, encoder=LOSSLESS, precision="fp32", device="cpu")
        parts.append(part)
    joined = tmp_path / "joined.mp4"
    join_chunks(parts, source, joined, name=source.name)
    return joined, plan


def test_chunks_start_at_keyframes(tmp_path: Path) -> None:
    source = write_test_video(tmp_path / "in.mp4", width=64, height=48, frames=48, options=KEYFRAMES_EVERY_12)
    plan = plan_chunks(source, "out.mp4", chunks=3, min_seconds=0.3, name="in.mp4")
    with av.open(str(source)) as container:
        keyframes = {p.pts for p in container.demux(video=0) if p.is_keyframe and p.pts is not None}
    assert len(plan) == 3
    assert plan[0].start is None and plan[-1].end is None
    assert all(c.start in keyframes and c.start == prev.end for prev, c in itertools.pairwise(plan))


def test_a_video_shorter_than_two_chunks_stays_whole(tmp_path: Path) -> None:
    source = write_test_video(tmp_path / "in.mp4", width=64, height=48, frames=24, options=KEYFRAMES_EVERY_12)
    assert plan_chunks(source, "out.mp4", chunks=4, min_seconds=0.6, name="in.mp4") == [
        Chunk(index=0, count=1, start=None, end=None)
    ]


def test_two_chunks_with_warmup_match_one_sequential_run(tmp_path: Path, model: object) -> None:
    source = write_test_video(tmp_path / "in.mp4", width=128, height=96, frames=48, options=KEYFRAMES_EVERY_12)
    sequential = tmp_path / "sequential.mp4"
    deblur_file(source, sequential, model, encoder=LOSSLESS, precision="fp32", device="cpu")
    joined, plan = chunked(source, tmp_path, model, chunks=2, warmup=8)
    assert len(plan) == 2
    (ours, our_pts), (theirs, their_pts) = frames_and_pts(joined), frames_and_pts(sequential)
    assert our_pts == their_pts  # every frame once, at the source's timestamps
    worst = min(frame_psnr(a, b) for a, b in zip(ours, theirs, strict=True))
    assert worst >= 50.0, f"a frame of the chunked run is {worst:.1f} dB from the sequential one"
    with av.open(str(joined)) as a, av.open(str(sequential)) as b:
        assert a.streams.audio[0].frames == b.streams.audio[0].frames > 0  # the source's audio, whole


def test_without_warmup_the_frames_after_the_cut_differ_more(tmp_path: Path, model: object) -> None:
    source = write_test_video(tmp_path / "in.mp4", width=128, height=96, frames=36, options=KEYFRAMES_EVERY_12)
    sequential = tmp_path / "sequential.mp4"
    deblur_file(source, sequential, model, encoder=LOSSLESS, precision="fp32", device="cpu")
    reference, _ = frames_and_pts(sequential)
    worst = {}
    for warmup in (0, 8):
        out = tmp_path / f"w{warmup}"
        out.mkdir()
        joined, _ = chunked(source, out, model, chunks=2, warmup=warmup)
        worst[warmup] = min(frame_psnr(a, b) for a, b in zip(frames_and_pts(joined)[0], reference, strict=True))
    assert worst[8] > worst[0] + 10, worst  # the warm-up rebuilds the state the cut threw away


def test_parts_encoded_differently_are_not_joined(tmp_path: Path, model: object) -> None:
    from deblur.chunks import NotSplittableError

    source = write_test_video(tmp_path / "in.mp4", width=64, height=48, frames=24, options=KEYFRAMES_EVERY_12)
    plan = plan_chunks(source, "out.mp4", chunks=2, min_seconds=0.3, name="in.mp4")
    parts = [tmp_path / "p0.mp4", tmp_path / "p1.mp4"]
    for chunk, part, crf in zip(plan, parts, (18, 30), strict=True):
        deblur_chunk(source, part, model, chunk, encoder=EncoderOptions(crf=crf), precision="fp32", device="cpu")
    with pytest.raises(NotSplittableError, match="other parameters"):
        join_chunks(parts, source, tmp_path / "joined.mp4", name="in.mp4")
    assert not (tmp_path / "joined.mp4").exists()
