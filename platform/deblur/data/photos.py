"""Folders of photographs as scenes for the rendered corpus, split by photograph.

``load_photos(prefix)`` reads every image under a local folder or an ``s3://`` prefix. An image
that cannot be decoded, or is too small to fill a corpus frame, is skipped and named in the
returned list of skips (the corpus writes them into ``corpus.json``); a prefix with no usable
image is a one-line error naming it. Each photograph gets a stable split from a hash of its name,
so held-out scenes never reach training, and adding photographs never moves the others.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np

from deblur import storage

__all__ = ["IMAGE_PATTERNS", "MIN_PHOTO_SIDE", "Photo", "PhotoError", "load_photos", "photo_split"]

IMAGE_PATTERNS = ("*.png", "*.jpg", "*.jpeg", "*.tif", "*.tiff", "*.bmp", "*.webp", "*.PNG", "*.JPG", "*.JPEG")
MIN_PHOTO_SIDE = 128  # px: smaller images would be enlarged several times to fill a frame


class PhotoError(ValueError):
    """A folder of photographs that gives no usable scene."""


@dataclass(frozen=True)
class Photo:
    name: str  # key relative to the folder: the photograph's identity in splits and manifests
    pixels: np.ndarray  # (H, W, 3) uint8 RGB
    split: str  # "train" or "eval"


def photo_split(name: str, *, eval_fraction: float, seed: int) -> str:
    """``"eval"`` for a stable ``eval_fraction`` of photograph names, else ``"train"``."""
    digest = hashlib.sha256(f"photo\x00{seed}\x00{name}".encode()).digest()
    return "eval" if int.from_bytes(digest[:8], "big") / 2**64 < eval_fraction else "train"


def _decode(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return np.array(image.convert("RGB"), dtype=np.uint8)


def load_photos(prefix: str, *, eval_fraction: float, seed: int) -> tuple[list[Photo], list[dict[str, str]]]:
    """``(photos, skipped)``: the usable photographs under ``prefix`` and ``{photo, reason}`` of the rest."""
    uris = storage.list_files(prefix, patterns=IMAGE_PATTERNS)
    if not uris:
        raise PhotoError(f"{prefix}: no photographs found (looked for {', '.join(IMAGE_PATTERNS[:7])})")
    photos, skipped = [], []
    for uri in sorted(uris):
        name = storage.relative_key(uri, prefix)
        try:
            pixels = _decode(storage.read_bytes(uri))
        except Exception as error:  # PIL raises many kinds for truncated or foreign files
            skipped.append({"photo": name, "reason": f"cannot be read as an image ({type(error).__name__})"})
            continue
        if min(pixels.shape[:2]) < MIN_PHOTO_SIDE:
            h, w = pixels.shape[:2]
            skipped.append({"photo": name, "reason": f"too small ({w}x{h}; need {MIN_PHOTO_SIDE} px a side)"})
            continue
        photos.append(Photo(name=name, pixels=pixels, split=photo_split(name, eval_fraction=eval_fraction, seed=seed)))
    if not photos:
        first = skipped[0]
        raise PhotoError(f"{prefix}: no usable photograph ({first['photo']}: {first['reason']})")
    return photos, skipped
