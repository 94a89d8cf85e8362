"""Evaluation (paper Sec. 6): PSNR, SSIM and temporal consistency on a synthesized evaluation set.

Every evaluation clip (blurry and sharp, lossless, from ``deblur synth``) is deblurred by the
online engine exactly as a user's video would be (state from zero at the clip's first frame,
edge frames repeated at both ends), and compared with its sharp frames:

- PSNR and SSIM (8-bit, RGB, ``data_range=255``), averaged over frames, beside the same
  figures for the blurry input;
- a breakdown by tau, the exposure in high-speed frames (the paper's Fig. 5);
- temporal consistency: the frame-to-frame difference error,
  TE_n = mean |(L_n - L_{n-1}) - (S_n - S_{n-1})|  (8-bit levels; 0 = the output flickers
  exactly as much as the ground truth moves), averaged over frames and plotted per frame index.

Overall figures weight every frame equally. Several models can be evaluated on the same set;
their curves share one plot, as in Fig. 5. Pure NumPy/PyTorch; no Ray.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from deblur import storage
from deblur.model import DeblurNet

__all__ = [
    "ClipScore",
    "EvaluationReport",
    "evaluate_model",
    "frame_psnr",
    "frame_ssim",
    "temporal_error",
    "write_reports",
]


def frame_psnr(output: np.ndarray, target: np.ndarray) -> float:
    """PSNR in dB of two uint8 frames (peak 255); ``inf`` when identical."""
    mse = np.mean((output.astype(np.float64) - target.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def frame_ssim(output: np.ndarray, target: np.ndarray) -> float:
    """SSIM of two RGB uint8 frames (scikit-image, Gaussian window as in Wang et al.)."""
    from skimage.metrics import structural_similarity

    win = min(7, *(s if s % 2 else s - 1 for s in target.shape[:2]))
    return float(
        structural_similarity(
            output, target, channel_axis=2, data_range=255, gaussian_weights=win >= 7, win_size=max(3, win)
        )
    )


def temporal_error(
    previous: np.ndarray, current: np.ndarray, previous_ref: np.ndarray, current_ref: np.ndarray
) -> float:
    """Mean |(L_n - L_{n-1}) - (S_n - S_{n-1})| in 8-bit levels."""
    diff = current.astype(np.int16) - previous.astype(np.int16)
    ref = current_ref.astype(np.int16) - previous_ref.astype(np.int16)
    return float(np.abs(diff - ref).mean())


@dataclass(frozen=True)
class ClipScore:
    video_id: str
    clip: int
    tau: int
    stride: int
    frames: int
    psnr: list[float]  # per frame
    ssim: list[float]
    input_psnr: list[float]
    input_ssim: list[float]
    temporal: list[float]  # per frame from the second on
    input_temporal: list[float]
    blur_px: float | None = None  # the camera's blur at the output size, when the corpus recorded it


BLUR_BINS = (0.0, 1.0, 5.0, 10.0, 15.0, 20.0, 25.0, math.inf)  # px at the output size


def _bin_label(low: float, high: float) -> str:
    return f"{low:g}+ px" if math.isinf(high) else f"{low:g}-{high:g} px"


def blur_bin(blur_px: float) -> str:
    for low, high in itertools.pairwise(BLUR_BINS):
        if low <= blur_px < high:
            return _bin_label(low, high)
    return _bin_label(BLUR_BINS[-2], BLUR_BINS[-1])


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _summarize(clips: Sequence[ClipScore]) -> dict[str, float]:
    def pool(key: str) -> list[float]:
        return [v for c in clips for v in getattr(c, key)]

    return {
        "frames": sum(c.frames for c in clips),
        "psnr": _mean(pool("psnr")),
        "ssim": _mean(pool("ssim")),
        "input_psnr": _mean(pool("input_psnr")),
        "input_ssim": _mean(pool("input_ssim")),
        "temporal_error": _mean(pool("temporal")),
        "input_temporal_error": _mean(pool("input_temporal")),
    }


@dataclass(frozen=True)
class EvaluationReport:
    model: str  # a label: checkpoint path or variant
    dataset: str
    clips: list[ClipScore] = field(default_factory=list)

    @property
    def overall(self) -> dict[str, float]:
        summary = _summarize(self.clips)
        summary["psnr_gain"] = summary["psnr"] - summary["input_psnr"]
        return summary

    @property
    def per_video(self) -> dict[str, dict[str, float]]:
        groups: dict[str, list[ClipScore]] = defaultdict(list)
        for clip in self.clips:
            groups[clip.video_id].append(clip)
        return {video: _summarize(clips) for video, clips in sorted(groups.items())}

    @property
    def by_tau(self) -> dict[int, dict[str, float]]:
        groups: dict[int, list[ClipScore]] = defaultdict(list)
        for clip in self.clips:
            groups[clip.tau].append(clip)
        return {tau: _summarize(clips) for tau, clips in sorted(groups.items())}

    @property
    def by_blur(self) -> dict[str, dict[str, float]]:
        """Summaries by the camera's blur length (px at the output size), in BLUR_BINS."""
        groups: dict[str, list[ClipScore]] = defaultdict(list)
        for clip in self.clips:
            if clip.blur_px is not None:
                groups[blur_bin(clip.blur_px)].append(clip)
        order = [_bin_label(lo, hi) for lo, hi in itertools.pairwise(BLUR_BINS)]
        return {label: _summarize(groups[label]) for label in order if label in groups}

    def temporal_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean TE by frame index (over clips that reach it), output and input."""
        length = max((len(c.temporal) for c in self.clips), default=0)
        out, inp = np.full(length, np.nan), np.full(length, np.nan)
        for i in range(length):
            out[i] = _mean([c.temporal[i] for c in self.clips if i < len(c.temporal)])
            inp[i] = _mean([c.input_temporal[i] for c in self.clips if i < len(c.input_temporal)])
        return out, inp

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "dataset": self.dataset,
            "overall": self.overall,
            "per_video": self.per_video,
            "by_tau": {str(k): v for k, v in self.by_tau.items()},
            "by_blur": self.by_blur,
            "clips": [asdict(c) for c in self.clips],
        }


def evaluate_model(
    model: DeblurNet,
    dataset: str,
    *,
    device: str | torch.device | None = "auto",
    limit: int | None = None,
    label: str | None = None,
    ssim: bool = True,
    on_clip: Callable[[ClipScore], None] | None = None,
    precision: str = "fp32",
) -> EvaluationReport:
    """Score ``model`` on the evaluation clips of a ``deblur synth`` output prefix.

    ``limit`` scores only the first clips (in manifest order: stable between calls), which is what
    validation during training uses. The model is left in eval mode.
    """
    from deblur.data.reader import iterate_eval_clips
    from deblur.engine import OnlineDeblurrer
    from deblur.video import read_frames

    clips = list(iterate_eval_clips(dataset))
    if not clips:
        raise ValueError(f"{dataset}: the dataset has no evaluation clips (see its manifest.json)")
    was_training = model.training
    runner: Any = model
    if precision == "int8":
        from deblur.quantize import quantize_model

        runner = quantize_model(model)  # once, not per clip
    report = EvaluationReport(model=label or model.config.variant, dataset=dataset)
    for clip in clips[:limit]:
        engine = OnlineDeblurrer(runner, device=device, precision=precision)
        with storage.open_input(clip["blurry"]) as bf, storage.open_input(clip["sharp"]) as sf:
            blurry = list(read_frames(bf, name=clip["blurry"]))
            sharp = list(read_frames(sf, name=clip["sharp"]))
        if len(blurry) != len(sharp):
            raise ValueError(f"{clip['blurry']}: {len(blurry)} frames but its sharp clip has {len(sharp)}")
        outputs = list(engine.run(blurry))
        score = ClipScore(
            video_id=clip["video_id"],
            clip=int(clip["clip"]),
            tau=int(clip["tau"]),
            stride=int(clip["stride"]),
            frames=len(sharp),
            psnr=[frame_psnr(o, s) for o, s in zip(outputs, sharp, strict=True)],
            ssim=[frame_ssim(o, s) for o, s in zip(outputs, sharp, strict=True)] if ssim else [],
            input_psnr=[frame_psnr(b, s) for b, s in zip(blurry, sharp, strict=True)],
            input_ssim=[frame_ssim(b, s) for b, s in zip(blurry, sharp, strict=True)] if ssim else [],
            temporal=[temporal_error(outputs[i - 1], outputs[i], sharp[i - 1], sharp[i]) for i in range(1, len(sharp))],
            input_temporal=[
                temporal_error(blurry[i - 1], blurry[i], sharp[i - 1], sharp[i]) for i in range(1, len(sharp))
            ],
            blur_px=clip.get("blur_px"),
        )
        report.clips.append(score)
        if on_clip is not None:
            on_clip(score)
    model.train(was_training)
    return report


# ---------------------------------------------------------------------------------------------
# Reports: JSON, Markdown, PNG plots
# ---------------------------------------------------------------------------------------------


def _markdown(reports: Sequence[EvaluationReport]) -> str:
    first = reports[0]
    lines = [
        "# Evaluation",
        "",
        f"Dataset: `{first.dataset}` ({len(first.clips)} clips, {first.overall['frames']} frames). "
        "PSNR in dB and SSIM on 8-bit RGB, averaged over frames; TE is the frame-to-frame "
        "difference error against the ground truth's, in 8-bit levels (lower is better).",
        "",
        "## Overall",
        "",
        "| model | PSNR | input PSNR | gain | SSIM | input SSIM | TE | input TE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        o = r.overall
        lines.append(
            f"| {r.model} | {o['psnr']:.2f} | {o['input_psnr']:.2f} | {o['psnr_gain']:+.2f} | {o['ssim']:.4f} | "
            f"{o['input_ssim']:.4f} | {o['temporal_error']:.2f} | {o['input_temporal_error']:.2f} |"
        )
    lines += ["", "## PSNR by tau (blur strength; paper Fig. 5)", ""]
    taus = sorted({tau for r in reports for tau in r.by_tau})
    lines.append("| tau | frames | input | " + " | ".join(r.model for r in reports) + " |")
    lines.append("|---" * (3 + len(reports)) + "|")
    for tau in taus:
        row = [str(tau), str(first.by_tau.get(tau, {}).get("frames", 0))]
        row.append(f"{first.by_tau[tau]['input_psnr']:.2f}" if tau in first.by_tau else "-")
        row += [f"{r.by_tau[tau]['psnr']:.2f}" if tau in r.by_tau else "-" for r in reports]
        lines.append("| " + " | ".join(row) + " |")
    blurs = [label for label in first.by_blur]
    if blurs:
        lines += ["", "## PSNR by blur length (the camera's, at the output size)", ""]
        lines.append("| blur | frames | input | " + " | ".join(r.model for r in reports) + " |")
        lines.append("|---" * (3 + len(reports)) + "|")
        for label in blurs:
            row = [label, str(first.by_blur[label]["frames"]), f"{first.by_blur[label]['input_psnr']:.2f}"]
            row += [f"{r.by_blur[label]['psnr']:.2f}" if label in r.by_blur else "-" for r in reports]
            lines.append("| " + " | ".join(row) + " |")
    for r in reports:
        lines += ["", f"## Per video: {r.model}", "", "| video | frames | PSNR | input PSNR | SSIM | TE |"]
        lines.append("|---|---|---|---|---|---|")
        for video, s in r.per_video.items():
            lines.append(
                f"| {video} | {s['frames']} | {s['psnr']:.2f} | {s['input_psnr']:.2f} | {s['ssim']:.4f} | "
                f"{s['temporal_error']:.2f} |"
            )
    lines += ["", "Plots: `psnr_by_tau.png`, `temporal_consistency.png`.", ""]
    return "\n".join(lines)


def _plot_by_tau(reports: Sequence[EvaluationReport], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    first = reports[0]
    taus = sorted(first.by_tau)
    ax.plot(taus, [first.by_tau[t]["input_psnr"] for t in taus], "k--o", label="blurry input")
    for r in reports:
        ts = sorted(r.by_tau)
        ax.plot(ts, [r.by_tau[t]["psnr"] for t in ts], "-o", label=r.model)
    ax.set_xlabel("tau (high-speed frames averaged)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title("PSNR by blur strength")
    ax.set_xticks(taus)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_temporal(reports: Sequence[EvaluationReport], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    _, input_curve = reports[0].temporal_curve()
    x = np.arange(1, len(input_curve) + 1)
    ax.plot(x, input_curve, "k--", label="blurry input")
    for r in reports:
        curve, _ = r.temporal_curve()
        ax.plot(np.arange(1, len(curve) + 1), curve, label=r.model)
    ax.set_xlabel("frame n of the clip")
    ax.set_ylabel("mean |(L_n - L_n-1) - (S_n - S_n-1)| (8-bit levels)")
    ax.set_title("Temporal consistency (lower is better)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_reports(reports: Sequence[EvaluationReport], out: str) -> dict[str, str]:
    """Write ``report.json``, ``report.md``, ``psnr_by_tau.png`` and ``temporal_consistency.png``."""
    if not reports:
        raise ValueError("no evaluation to write")
    written = {}
    payload = {"reports": [r.to_dict() for r in reports]}
    written["json"] = storage.join_uri(out, "report.json")
    storage.write_bytes(
        written["json"], json.dumps(payload, indent=1, allow_nan=True).encode(), content_type="application/json"
    )
    written["markdown"] = storage.join_uri(out, "report.md")
    storage.write_bytes(written["markdown"], _markdown(reports).encode(), content_type="text/markdown")
    for key, name, plot in (
        ("tau_plot", "psnr_by_tau.png", _plot_by_tau),
        ("temporal_plot", "temporal_consistency.png", _plot_temporal),
    ):
        uri = storage.join_uri(out, name)
        with storage.staged_output(uri, suffix=".png") as staged:
            plot(reports, str(staged))
        written[key] = uri
    return written
