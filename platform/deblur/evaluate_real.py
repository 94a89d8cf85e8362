"""Checks that tell the truth about real use: no harm to sharp input, and real footage.

- **No-harm set** (``no_harm``): static clips of held-out real photographs (``photos.photo_split``,
  the corpus's default split), clean, with Gaussian noise (sigma 2 and 5 in 8-bit levels) and
  stored as H.264 (CRF 23). A sharp, still input must come out unchanged, and a noisy or
  compressed one must not move further from the clean frame than the input is.
- **Real sequences** (``real_sequences``): folders of consecutive frames of real footage. The
  output against the input says how much a nearly sharp video is changed; a side-by-side PNG
  (input left, output right) of each shows what happens on real blur.

Pure PyTorch/NumPy through the engine, no Ray.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deblur import storage
from deblur.data.photos import IMAGE_PATTERNS, load_photos
from deblur.evaluate import frame_psnr
from deblur.model import DeblurNet

__all__ = [
    "NO_HARM_CONDITIONS",
    "no_harm",
    "no_harm_markdown",
    "real_sequences",
    "real_sequences_markdown",
    "sequence_folders",
    "sequence_frames",
]

NO_HARM_CONDITIONS = ("clean", "noise sigma 2", "noise sigma 5", "H.264 CRF 23")


@dataclass(frozen=True)
class _Case:
    photo: str
    condition: str
    psnr_out_clean: float  # output against the clean frame
    psnr_in_clean: float  # input against the clean frame
    psnr_out_in: float  # output against the input


def _static_input(clean: np.ndarray, condition: str, frames: int, rng: np.random.Generator) -> list[np.ndarray]:
    if condition == "clean":
        return [clean] * frames
    if condition.startswith("noise"):
        sigma = float(condition.rsplit(" ", 1)[-1])
        return [
            np.clip(np.rint(clean + rng.normal(0, sigma, clean.shape)), 0, 255).astype(np.uint8) for _ in range(frames)
        ]
    from deblur.data.blur import H264RoundTrip

    codec = H264RoundTrip(clean.shape[1], clean.shape[0], crf=23)
    out = [frame for _ in range(frames) for frame in codec.push(clean)]
    return out + codec.flush()


def _centre_crop(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return np.ascontiguousarray(image[top : top + size, left : left + size])


def no_harm(
    model: DeblurNet,
    photos: str,
    *,
    frames: int = 5,
    size: int = 256,
    limit: int = 24,
    eval_fraction: float = 0.1,
    seed: int = 0,
    precision: str = "fp32",
    device: str = "auto",
) -> dict[str, Any]:
    """Scores on static clips of the held-out photographs under ``photos`` (centre crops of ``size``)."""
    from deblur.engine import deblur_frames

    found, _ = load_photos(photos, eval_fraction=eval_fraction, seed=seed)
    held_out = [p for p in found if p.split == "eval"][:limit] or found[:limit]
    rng = np.random.default_rng(seed)
    cases = []
    for photo in held_out:
        clean = _centre_crop(photo.pixels, size)
        for condition in NO_HARM_CONDITIONS:
            given = _static_input(clean, condition, frames, rng)
            out = list(deblur_frames(model, given, precision=precision, device=device))
            cases.append(
                _Case(
                    photo=photo.name,
                    condition=condition,
                    psnr_out_clean=float(np.mean([frame_psnr(o, clean) for o in out])),
                    psnr_in_clean=float(np.mean([frame_psnr(g, clean) for g in given])),
                    psnr_out_in=float(np.mean([frame_psnr(o, g) for o, g in zip(out, given, strict=True)])),
                )
            )
    summary = {}
    for condition in NO_HARM_CONDITIONS:
        chosen = [c for c in cases if c.condition == condition]
        finite = lambda values: [min(v, 99.0) for v in values]  # noqa: E731  identical frames: inf dB
        summary[condition] = {
            "photos": len(chosen),
            "input_vs_clean": float(np.mean(finite([c.psnr_in_clean for c in chosen]))),
            "output_vs_clean": float(np.mean(finite([c.psnr_out_clean for c in chosen]))),
            "output_vs_input": float(np.mean(finite([c.psnr_out_in for c in chosen]))),
            "worst_output_vs_input": float(min(finite([c.psnr_out_in for c in chosen]))),
            "worst_change_vs_clean": float(min(c.psnr_out_clean - c.psnr_in_clean for c in chosen))
            if condition != "clean"
            else 0.0,
        }
    return {"photos": photos, "size": size, "frames": frames, "summary": summary, "cases": [c.__dict__ for c in cases]}


def no_harm_markdown(result: dict[str, Any], label: str) -> list[str]:
    lines = [
        f"| {label}: static clip | input vs clean | output vs clean | output vs input | worst output vs input |",
        "|---|---|---|---|---|",
    ]
    for condition, s in result["summary"].items():
        clean_in = "(identical)" if condition == "clean" else f"{s['input_vs_clean']:.2f}"
        lines.append(
            f"| {condition} ({s['photos']} photos) | {clean_in} | {s['output_vs_clean']:.2f} | "
            f"{s['output_vs_input']:.2f} | {s['worst_output_vs_input']:.2f} |"
        )
    return lines


def sequence_folders(videos: str) -> list[tuple[str, str]]:
    """(name, folder) of every folder of frames under ``videos``, sorted."""
    folders = sorted({uri.rsplit("/", 1)[0] for uri in storage.list_files(videos, patterns=IMAGE_PATTERNS)})
    return [
        (storage.relative_key(folder, videos) if folder != videos.rstrip("/") else Path(folder).name, folder)
        for folder in folders
    ]


def sequence_frames(folder: str, limit: int | None, *, max_side: int | None = None) -> list[np.ndarray]:
    """The first ``limit`` frames of a folder, in name order; on their centre crop (16:9 at most
    ``max_side`` wide) where they are larger."""
    from PIL import Image

    uris = sorted(storage.list_files(folder, patterns=IMAGE_PATTERNS))[:limit]
    frames = []
    for uri in uris:
        with Image.open(io.BytesIO(storage.read_bytes(uri))) as image:
            frames.append(np.array(image.convert("RGB"), dtype=np.uint8))
    if frames and max_side is not None and max(frames[0].shape[:2]) > max_side:
        h, w = frames[0].shape[:2]
        frames = [_centre_crop_rect(f, min(h, max_side * 9 // 16), min(w, max_side)) for f in frames]
    return frames


def real_sequences(
    model: DeblurNet,
    videos: str,
    *,
    out: str | None = None,
    max_frames: int = 48,
    max_side: int = 960,
    precision: str = "fp32",
    device: str = "auto",
) -> dict[str, dict[str, Any]]:
    """Per sequence folder under ``videos`` (a folder of frames each): output against input, and
    ``OUT/<sequence>.png``, input beside output at the middle frame. Frames larger than ``max_side``
    are scored and shown on their centre crop of that size."""
    from PIL import Image

    from deblur.engine import deblur_frames

    results = {}
    for name, folder in sequence_folders(videos):
        frames = sequence_frames(folder, max_frames, max_side=max_side)
        if len(frames) < 2:
            continue
        output = list(deblur_frames(model, frames, precision=precision, device=device))
        scores = [frame_psnr(o, f) for o, f in zip(output, frames, strict=True)]
        results[name] = {"frames": len(frames), "size": f"{frames[0].shape[1]}x{frames[0].shape[0]}"}
        results[name]["output_vs_input"] = float(np.mean([min(s, 99.0) for s in scores]))
        if out is not None:
            middle = len(frames) // 2
            side = np.concatenate([frames[middle], output[middle]], axis=1)
            buffer = io.BytesIO()
            Image.fromarray(side).save(buffer, format="PNG")
            uri = storage.join_uri(out, name.replace("/", "--") + ".png")
            storage.write_bytes(uri, buffer.getvalue(), content_type="image/png")
            results[name]["side_by_side"] = uri
    return results


def _centre_crop_rect(image: np.ndarray, height: int, width: int) -> np.ndarray:
    h, w = image.shape[:2]
    top, left = (h - height) // 2, (w - width) // 2
    return np.ascontiguousarray(image[top : top + height, left : left + width])


def real_sequences_markdown(results: dict[str, dict[str, Any]], label: str) -> list[str]:
    lines = [f"| {label}: real sequence | frames | size | output vs input (dB) |", "|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['frames']} | {r['size']} | {r['output_vs_input']:.2f} |")
    return lines
