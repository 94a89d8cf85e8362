"""The ``deblur`` command line: parses arguments and calls the stage modules."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


class UsageError(Exception):
    """Bad input from the command line; printed as one line, exit status 1."""


def _cmd_video(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from deblur.checkpoint import load_checkpoint
    from deblur.inference import deblur_file
    from deblur.video import EncoderOptions, VideoInfo

    source, destination = Path(args.input), Path(args.output)
    if not source.exists():
        raise UsageError(f"{source}: no such file")
    if source.resolve() == destination.resolve():
        raise UsageError(f"{destination}: output would overwrite the input")
    model = load_checkpoint(args.checkpoint).model
    encoder = EncoderOptions(lossless=args.lossless, crf=args.crf, preset=args.preset)

    bar: tqdm | None = None

    def progress(written: int, info: VideoInfo) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(
                total=info.frames,
                unit="frame",
                desc=source.name,
                disable=args.quiet,
                dynamic_ncols=True,
                file=sys.stderr,
            )
        bar.update(1)

    try:
        result = deblur_file(source, destination, model, device=args.device, encoder=encoder, on_frame=progress)
    finally:
        if bar is not None:
            bar.close()
    if not args.quiet:
        print(
            f"{destination}: {result.frames} frames, {result.info.width}x{result.info.height}, "
            f"{result.seconds:.1f} s ({result.fps:.2f} fps)",
            file=sys.stderr,
        )
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from deblur.checkpoint import load_checkpoint
    from deblur.model import DeblurNet, summarize_model

    if args.checkpoint is not None:
        if args.variant is not None or args.m is not None:
            raise UsageError("--variant and --m describe a fresh model; a checkpoint carries its own")
        loaded = load_checkpoint(args.checkpoint)
        model, header = loaded.model, f"checkpoint       {loaded.source}"
    else:
        model = DeblurNet(variant=args.variant or "strcnn_dtb", m=1 if args.m is None else args.m)
        header = "checkpoint       none (freshly initialised model)"
    print(header)
    print(summarize_model(model).format())
    if args.checkpoint is not None and loaded.provenance:
        for key, value in sorted(loaded.provenance.items()):
            print(f"  {key}: {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from deblur import __version__
    from deblur.model import VARIANTS

    parser = argparse.ArgumentParser(
        prog="deblur", description="Online video deblurring (STRCNN+DTB, Kim et al. ICCV 2017)."
    )
    parser.add_argument("--version", action="version", version=f"deblur {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    video = sub.add_parser("video", help="deblur a video file")
    video.add_argument("input", help="input video file")
    video.add_argument("-o", "--output", required=True, help="output video file (.mp4, .mov, .mkv)")
    video.add_argument("--checkpoint", help="model checkpoint (.safetensors); default: the bundled model")
    video.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    video.add_argument("--lossless", action="store_true", help="lossless RGB H.264 (large files)")
    video.add_argument("--crf", type=int, default=18, help="H.264 quality, lower is better (default 18)")
    video.add_argument("--preset", default="medium", help="x264 speed preset (default medium)")
    video.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    video.set_defaults(func=_cmd_video)

    info = sub.add_parser("info", help="describe a checkpoint or a fresh model")
    info.add_argument("checkpoint", nargs="?", help="checkpoint file; default: a freshly initialised model")
    info.add_argument("--variant", choices=sorted(VARIANTS), help="variant of the fresh model (strcnn_dtb)")
    info.add_argument("--m", type=int, help="m of the fresh model (1): 2m+1 input frames")
    info.set_defaults(func=_cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from deblur.checkpoint import CheckpointError
    from deblur.video import VideoError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (UsageError, CheckpointError, VideoError, ValueError) as exc:
        print(f"deblur: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("deblur: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
