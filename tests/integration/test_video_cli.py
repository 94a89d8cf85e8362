"""`deblur video` and `deblur info` end to end on real files made with PyAV."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from deblur.checkpoint import load_model
from deblur.cli import main
from deblur.engine import deblur_frames
from deblur.video import probe_video, read_frames
from media import stream_facts


def no_leftovers(directory: Path, keep: set[str]) -> None:
    assert sorted(p.name for p in directory.iterdir() if p.name not in keep) == []


def test_deblur_video_preserves_frames_timing_size_rotation_and_audio(
    make_video: Callable[..., Path], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    source = make_video("clip.mp4", width=65, height=47, frames=30, rotation=90)
    out = tmp_path / "sharp.mp4"
    # Through the installed console script: the real command a user types.
    cli = Path(sys.executable).with_name("deblur")
    run = subprocess.run(
        [str(cli), "video", str(source), "-o", str(out), "--checkpoint", str(tiny_checkpoint), "--device", "cpu"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "30/30" in run.stderr  # the progress bar counted every frame
    before, after = stream_facts(source), stream_facts(out)
    assert after["frames"] == before["frames"] == 30
    assert after["times"] == before["times"]
    assert after["fps"] == before["fps"] == Fraction(30)
    assert after["size"] == before["size"] == (65, 47)
    assert after["rotation"] == before["rotation"] == 90
    assert after["duration"] == before["duration"]
    assert after["audio"] == before["audio"] and before["audio"][0][:2] == ("aac", 44100)
    assert after["audio_packets"] == before["audio_packets"]  # copied, not re-encoded
    no_leftovers(tmp_path, {"clip.mp4", "sharp.mp4", "tiny.safetensors"})


def test_lossless_output_equals_the_engine_frame_for_frame(
    make_video: Callable[..., Path], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    source = make_video("clip.mp4", width=40, height=30, frames=12, audio=False)
    out = tmp_path / "sharp.mp4"
    assert main(["video", str(source), "-o", str(out), "--checkpoint", str(tiny_checkpoint), "--lossless", "-q"]) == 0
    expected = np.stack(list(deblur_frames(load_model(tiny_checkpoint), read_frames(source), device="cpu")))
    got = np.stack(list(read_frames(out)))
    np.testing.assert_array_equal(got, expected)
    # And the model did something: the output is not the input.
    assert not np.array_equal(got, np.stack(list(read_frames(source))))


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("gray.mkv", {"codec": "ffv1", "pix_fmt": "gray", "audio": False}),
        ("alpha.mkv", {"codec": "ffv1", "pix_fmt": "yuva420p", "audio": False}),
        ("tenbit.mkv", {"codec": "ffv1", "pix_fmt": "yuv420p10le", "audio": False}),
        # ProRes 422 10-bit, a common camera/edit format (HEVC via this FFmpeg's libx265 aborts
        # with heap corruption in CI, and its x264 is 8-bit only).
        ("tenbit.mov", {"codec": "prores_ks", "pix_fmt": "yuv422p10le", "audio": False}),
        ("odd.mp4", {"width": 641, "height": 359, "frames": 3, "audio": False}),
    ],
)
def test_unusual_pixel_formats_and_sizes_deblur(
    make_video: Callable[..., Path], tiny_checkpoint: Path, tmp_path: Path, name: str, kwargs: dict
) -> None:
    kwargs = {"width": 33, "height": 21, "frames": 5, **kwargs}
    source = make_video(name, **kwargs)
    out = tmp_path / f"out-{Path(name).stem}.mp4"
    assert main(["video", str(source), "-o", str(out), "--checkpoint", str(tiny_checkpoint), "-q"]) == 0
    info = probe_video(out)
    assert (info.width, info.height) == (kwargs["width"], kwargs["height"])
    assert len(list(read_frames(out))) == kwargs["frames"]


def _truncate(path: Path, fraction: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def _zero_frames(path: Path) -> Path:
    out = av.open(str(path), "w")
    stream = out.add_stream("libx264", rate=30)
    stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
    out.start_encoding()  # header and an empty video track, then no frames
    out.close()
    return path


BAD_INPUTS: dict[str, tuple[Callable[[Callable[..., Path], Path], Path], str]] = {
    "missing": (lambda make, d: d / "missing.mp4", "no such file"),
    "text": (lambda make, d: (d / "notes.mp4").write_text("not a video\n") and d / "notes.mp4", "not a readable video"),
    "random": (
        lambda make, d: (d / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(50_000)) and d / "noise.mp4",
        "not a readable video",
    ),
    "truncated-index-at-end": (lambda make, d: _truncate(make("t1.mp4", audio=False), 0.5), "not a readable video"),
    "truncated-faststart": (
        lambda make, d: _truncate(
            make("t2.mp4", audio=False, container_options={"movflags": "+faststart"}, frames=60), 0.5
        ),
        "truncated or corrupt",
    ),
    "audio-only": (lambda make, d: _audio_only(d / "sound.m4a"), "contains no video stream"),
    "zero-frames": (lambda make, d: _zero_frames(d / "empty.mp4"), "no video"),
}


def _audio_only(path: Path) -> Path:
    out = av.open(str(path), "w")
    stream = out.add_stream("aac", rate=44100)
    chunk = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
    chunk.sample_rate = 44100
    for packet in [*stream.encode(chunk), *stream.encode(None)]:
        out.mux(packet)
    out.close()
    return path


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_clear_line_and_leaves_no_file(
    case: str,
    make_video: Callable[..., Path],
    tiny_checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    build, message = BAD_INPUTS[case]
    source = build(make_video, tmp_path)
    before = {p.name for p in tmp_path.iterdir()}
    out = tmp_path / "out.mp4"
    code = main(["video", str(source), "-o", str(out), "--checkpoint", str(tiny_checkpoint), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert len(err) == 1, err
    assert err[0].startswith("deblur: error: ") and str(source) in err[0] and message in err[0], err[0]
    assert {p.name for p in tmp_path.iterdir()} == before  # no output, no partial file


def test_missing_checkpoint_says_what_to_do(make_video: Callable[..., Path], tmp_path: Path, capsys) -> None:
    source = make_video("clip.mp4", frames=3, audio=False)
    code = main(["video", str(source), "-o", str(tmp_path / "o.mp4")])
    err = capsys.readouterr().err
    from deblur.checkpoint import bundled_checkpoint_path

    if bundled_checkpoint_path() is None:
        assert code == 1 and "--checkpoint" in err
    code = main(["video", str(source), "-o", str(tmp_path / "o.mp4"), "--checkpoint", str(tmp_path / "none.st")])
    assert code == 1 and "none.st: no such checkpoint file" in capsys.readouterr().err
    assert not (tmp_path / "o.mp4").exists()


def test_deblur_info_reports_computed_figures() -> None:
    cli = Path(sys.executable).with_name("deblur")
    run = subprocess.run([str(cli), "info"], capture_output=True, text=True, check=True)
    params = int(re.search(r"parameters\s+([\d,]+)", run.stdout).group(1).replace(",", ""))
    macs = float(re.search(r"MACs per pixel\s+([\d,]+)", run.stdout).group(1).replace(",", ""))
    assert "strcnn_dtb" in run.stdout and "m                1" in run.stdout
    assert 0.85e6 < params < 0.95e6
    assert 230e3 < macs < 260e3
    cnn = subprocess.run([str(cli), "info", "--variant", "cnn", "--m", "2"], capture_output=True, text=True, check=True)
    assert "cnn" in cnn.stdout and "5 input frames" in cnn.stdout
