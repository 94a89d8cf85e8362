"""`deblur video` and `deblur info` end to end on real files made with PyAV."""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from deblur.checkpoint import bundled_checkpoint_path, load_checkpoint, load_model, save_checkpoint
from deblur.cli import main
from deblur.engine import deblur_frames
from deblur.video import probe_video, read_frames
from media import stream_facts
from tiny import tiny_model


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
    expected = np.stack(
        list(deblur_frames(load_model(tiny_checkpoint), read_frames(source), device="cpu", precision="auto"))
    )
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
    """A video stream with no frames. AVI keeps the stream's header; MP4 and MOV drop a track
    without samples (the file then has no video stream at all) and Matroska without any
    cluster cannot be opened."""
    out = av.open(str(path), "w", format="avi")
    stream = out.add_stream("libx264", rate=30)
    stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
    out.start_encoding()  # header and an empty video track, then no frames
    out.close()
    with av.open(str(path)) as check:  # the case this stands for, or the test would test another
        assert len(check.streams.video) == 1 and check.streams.video[0].codec_context.width == 32
        assert next(check.decode(video=0), None) is None
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
    "zero-frames": (lambda make, d: _zero_frames(d / "empty.avi"), "contains no video frames"),
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


def test_bundled_model_is_the_default_and_says_where_it_came_from(
    make_video: Callable[..., Path], tmp_path: Path
) -> None:
    source = make_video("clip.mp4", width=40, height=32, frames=5, audio=False)
    out = tmp_path / "o.mp4"
    assert main(["video", str(source), "-o", str(out), "--device", "cpu", "-q"]) == 0
    assert stream_facts(out)["frames"] == 5
    bundled = load_checkpoint(None)
    assert (bundled.config.variant, bundled.config.m) == ("strcnn_dtb", 1)  # the paper's final model
    provenance = bundled.provenance
    assert provenance["preset"] == "cpu-real"
    assert provenance["step"] == provenance["train_config"]["steps"] > 0  # a finished run, not a snapshot
    assert re.fullmatch(r"[0-9a-f]{7,40}", provenance["packaged_commit"])
    # A run the recipe resumed does not know the commit that trained it, and says so.
    assert provenance["training_commit"] is None or re.fullmatch(r"[0-9a-f]{7,40}", provenance["training_commit"])
    assert "--seed 0" in provenance["data"]["corpus"]
    assert provenance["evaluation"]["psnr"] > provenance["evaluation"]["input_psnr"]
    # The JSON beside the weights says the same, for people; the weights are a few MB.
    path = bundled_checkpoint_path()
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar == {"config": bundled.config.to_dict(), "provenance": provenance}
    assert path.stat().st_size < 8 << 20


def test_missing_checkpoint_file_says_so(make_video: Callable[..., Path], tmp_path: Path, capsys) -> None:
    source = make_video("clip.mp4", frames=3, audio=False)
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


def _unwritable_directory(tmp_path: Path) -> Path:
    directory = tmp_path / "locked"
    directory.mkdir()
    directory.chmod(0o555)
    if os.access(directory, os.W_OK):  # root ignores file modes; sysfs refuses new files to root too
        return Path("/sys")
    return directory


BAD_OUTPUTS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "webm": (lambda d: d / "out.webm", r"cannot write a video in this format \('webm' format does not support"),
    "unknown-extension": (lambda d: d / "out.txt", r"cannot write a video in this format \(.*output format"),
    # Accepted when the streams are added, refused when the header is written.
    "ogg": (lambda d: d / "out.ogg", r"cannot write a video in this format \(Invalid argument\); use \.mp4"),
    "unwritable-directory": (
        lambda d: _unwritable_directory(d) / "out.mp4",
        r"cannot create the output file \(Permission denied\)",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_OUTPUTS))
def test_bad_output_is_one_clear_line_naming_it_and_leaves_no_file(
    case: str,
    make_video: Callable[..., Path],
    tiny_checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = make_video("clip.mp4", frames=3)
    build, pattern = BAD_OUTPUTS[case]
    out = build(tmp_path)
    before = {p.name for p in out.parent.iterdir()}
    code = main(["video", str(source), "-o", str(out), "--checkpoint", str(tiny_checkpoint), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith(f"deblur: error: {out}: "), err[0]  # the output is named, not the input
    assert re.search(pattern, err[0]), err[0]
    assert {p.name for p in out.parent.iterdir()} == before


def test_output_failing_mid_video_is_named_and_removed(
    make_video: Callable[..., Path], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    source = make_video("clip.mp4", width=160, height=120, frames=30)
    out = tmp_path / "out" / "sharp.mp4"
    out.parent.mkdir()

    def full_disk() -> None:
        # Writes past 400 KB fail (EFBIG) in this process only; the lossless output is about twice that.
        resource.setrlimit(resource.RLIMIT_FSIZE, (400_000, 400_000))

    cli = Path(sys.executable).with_name("deblur")
    run = subprocess.run(
        [str(cli), "video", str(source), "-o", str(out), "--checkpoint", str(tiny_checkpoint), "--lossless", "-q"],
        capture_output=True,
        text=True,
        check=False,
        preexec_fn=full_disk,
    )
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [f"deblur: error: {out}: cannot write the video (File too large)"]
    assert list(out.parent.iterdir()) == []


def test_output_without_extension_is_mp4(
    make_video: Callable[..., Path], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    source = make_video("clip.mp4", frames=3, audio=False)
    out = tmp_path / "sharp"
    assert main(["video", str(source), "-o", str(out), "--checkpoint", str(tiny_checkpoint), "-q"]) == 0
    with av.open(str(out)) as container:
        assert "mp4" in container.format.name
        assert sum(1 for _ in container.decode(video=0)) == 3


def test_deblur_info_on_a_checkpoint_reports_it_and_its_provenance(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    torch.manual_seed(0)
    model = tiny_model(variant="cnn", m=2)
    path = tmp_path / "cnn-m2.safetensors"
    save_checkpoint(model, path, provenance={"recipe": "made by this test", "steps": 7})
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"^checkpoint\s+{re.escape(str(path))}$", out, re.M), out
    assert re.search(r"^variant\s+cnn$", out, re.M) and "5 input frames" in out
    params = int(re.search(r"parameters\s+([\d,]+)", out).group(1).replace(",", ""))
    assert params == sum(p.numel() for p in model.parameters())
    assert "  recipe: made by this test\n" in out and "  steps: 7\n" in out


@pytest.mark.parametrize("flags", [["--variant", "cnn"], ["--m", "2"]])
def test_deblur_info_refuses_fresh_model_options_with_a_checkpoint(
    flags: list[str], tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["info", str(tiny_checkpoint), *flags])
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    assert captured.err.strip().splitlines() == [
        "deblur: error: --variant and --m describe a fresh model; a checkpoint carries its own"
    ]


def test_an_os_error_in_any_command_is_one_line_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = _unwritable_directory(tmp_path) / "corpus"
    code = main(["corpus", "--out", str(target), "--videos", "1", "--seconds", "0.1", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert re.fullmatch(
        rf"deblur: error: {re.escape(str(target))}: (Permission denied|Operation not permitted)", err[0]
    )
