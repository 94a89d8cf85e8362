"""Metrics and evaluation reports on a tiny synthesized evaluation set (no cluster)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from deblur.cli import main
from deblur.data.dataset import DataConfig, write_manifest
from deblur.data.synth_job import plan_tasks, process_video
from deblur.evaluate import evaluate_model, frame_psnr, frame_ssim, temporal_error, write_reports
from media import write_test_video
from tiny import tiny_model


def test_psnr_ssim_and_temporal_error_on_known_values() -> None:
    a = np.full((8, 8, 3), 100, np.uint8)
    assert frame_psnr(a, a) == math.inf
    assert frame_psnr(a, a + 1) == pytest.approx(10 * math.log10(255**2))
    assert frame_psnr(a, a + 10) == pytest.approx(10 * math.log10(255**2 / 100))
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert frame_ssim(img, img) == pytest.approx(1.0)
    assert frame_ssim(img, rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) < 0.1  # unrelated images
    # Output that changes exactly as the ground truth does has no temporal error, even if offset
    # (here 40 levels brighter than the truth in both frames: far from it, PSNR about 16 dB).
    s0, s1 = img // 2, np.roll(img, 1, axis=1) // 2
    l0, l1 = s0 + 40, s1 + 40
    assert frame_psnr(l1, s1) == pytest.approx(10 * math.log10(255**2 / 40**2))
    assert temporal_error(l0, l1, s0, s1) == 0.0
    # An output whose offset changes between the frames is off by that change, in every pixel.
    assert temporal_error(s0, s1 + 40, s0, s1) == pytest.approx(40.0)
    assert temporal_error(s0 + 40, s1, s0, s1) == pytest.approx(40.0)
    # A still output against a moving truth is off by the truth's own change.
    assert temporal_error(s0, s0, s0, s1) == pytest.approx(np.abs(s1.astype(int) - s0.astype(int)).mean())


@pytest.fixture
def eval_set(tmp_path: Path) -> str:
    """One source video synthesized (without Ray) into evaluation clips: the real on-disk format."""
    (tmp_path / "raw").mkdir()
    write_test_video(tmp_path / "raw" / "a.mp4", width=40, height=32, frames=200, fps=240, audio=False)
    write_test_video(tmp_path / "raw" / "b.mp4", width=40, height=32, frames=200, fps=240, audio=False)
    out = str(tmp_path / "data")
    config = DataConfig.from_dict({"scale": 1.0, "clip_frames": 6, "eval_fraction": 0.5, "taus": [7, 9]})
    tasks, _ = plan_tasks(str(tmp_path / "raw"), out, config)
    records = [process_video(task) for task in tasks]
    assert {r["split"] for r in records} == {"train", "eval"}
    write_manifest(str(tmp_path / "raw"), out, config, records)
    return out


def test_evaluation_report_scores_every_clip_and_writes_files(eval_set: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = tiny_model()
    report = evaluate_model(model, eval_set, device="cpu")
    assert report.clips and all(c.frames == len(c.psnr) == len(c.ssim) == len(c.temporal) + 1 for c in report.clips)
    assert {c.tau for c in report.clips} <= {7, 9}
    assert set(report.by_tau) == {c.tau for c in report.clips}
    overall = report.overall
    assert overall["frames"] == sum(c.frames for c in report.clips)
    assert overall["psnr_gain"] == pytest.approx(overall["psnr"] - overall["input_psnr"])
    assert 5 < overall["input_psnr"] < 60 and 0 < overall["ssim"] <= 1

    limited = evaluate_model(model, eval_set, device="cpu", limit=1)
    assert len(limited.clips) == 1 and limited.clips[0].psnr == report.clips[0].psnr

    written = write_reports([report, limited], str(tmp_path / "report"))
    data = json.loads(Path(written["json"]).read_text())
    assert [r["model"] for r in data["reports"]] == ["strcnn_dtb", "strcnn_dtb"]
    assert data["reports"][0]["overall"]["frames"] == overall["frames"]
    markdown = Path(written["markdown"]).read_text()
    assert "| tau | frames | input |" in markdown and f"{overall['psnr']:.2f}" in markdown
    for key in ("tau_plot", "temporal_plot"):
        assert Path(written[key]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_identity_model_scores_the_input(eval_set: str) -> None:
    """A model whose correction is zero returns the blurry frame: PSNR equals the input's."""
    model = tiny_model()
    with torch.no_grad():
        model.decoder.to_image.weight.zero_()
        model.decoder.to_image.bias.zero_()
    report = evaluate_model(model, eval_set, device="cpu", ssim=False)
    assert report.overall["psnr"] == pytest.approx(report.overall["input_psnr"])


def test_cli_evaluates_a_checkpoint(eval_set: str, tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli-report"
    assert main(["evaluate", str(tiny_checkpoint), eval_set, "-o", str(out), "-q"]) == 0
    assert (out / "report.md").is_file() and (out / "psnr_by_tau.png").is_file()
    assert main(["evaluate", str(tmp_path / "missing.safetensors"), eval_set, "-o", str(out)]) == 1
    assert main(["evaluate", str(tiny_checkpoint), str(tmp_path / "nothing"), "-o", str(out)]) == 1
