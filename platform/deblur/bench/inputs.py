"""What the benchmarks run on: the bundled model (or a fresh one of the same cost) and test videos."""

from __future__ import annotations

from pathlib import Path

__all__ = ["bench_model_path", "bench_videos"]


def bench_model_path(directory: Path) -> str:
    """The bundled model when there is one, else a freshly initialised strcnn_dtb (same cost)."""
    from deblur.checkpoint import bundled_checkpoint_path, save_checkpoint
    from deblur.model import DeblurNet

    bundled = bundled_checkpoint_path()
    if bundled is not None:
        return str(bundled)
    path = directory / "fresh.safetensors"
    save_checkpoint(DeblurNet(), path)
    return str(path)


def bench_videos(
    directory: Path, *, videos: int, frames: int, width: int, height: int, keyframe_every: int | None = None
) -> list[Path]:
    from deblur.data.corpus import CorpusConfig, render_video
    from deblur.video import EncoderOptions, write_video

    config = CorpusConfig(width=width, height=height, fps=30, seconds=frames / 30, max_camera_motion=3.0)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(videos):
        # The name carries what the video is, so a cache shared between sizes never serves a stale one.
        gop = f"_g{keyframe_every}" if keyframe_every else ""
        path = directory / f"bench_{width}x{height}_{frames}f{gop}_{index:02d}.mp4"
        if not path.exists():
            extra = {"g": str(keyframe_every)} if keyframe_every else {}
            encoder = EncoderOptions(crf=18, extra=extra)
            write_video(path, render_video(config, seed=99, index=index)[0], fps=30, encoder=encoder)
        paths.append(path)
    return paths
