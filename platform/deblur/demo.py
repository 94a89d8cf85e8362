"""The README's main command: deblur a sample video with the bundled model, end to end.

1. Render a short synthetic 240 fps scene (``deblur.data.corpus``) and blur it with Eq. 1
   (``deblur.data.blur``): a blurry sample video with its sharp ground truth.
2. Start a local S3 server (moto, over HTTP on 127.0.0.1) and a local Ray instance, unless the
   environment already points at them (``DEBLUR_S3_ENDPOINT``, ``RAY_ADDRESS``).
3. Upload the sample and deblur it with the batch job (one recurrent actor, the bundled model).
4. Print PSNR before and after, and write the blurry and deblurred videos and a side-by-side PNG
   (blurry | deblurred | sharp) to ``--out`` (default ``./demo-output``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from deblur.checkpoint import bundled_checkpoint_path
from deblur.local_s3 import LocalS3UnavailableError, local_object_store, require_local_server
from deblur.storage import ENDPOINT_ENV

BUCKET = "s3://deblur-demo"


def make_sample(
    *, seconds: float, seed: int, tau: int, stride: int
) -> tuple[list[np.ndarray], list[np.ndarray], float]:
    """(blurry frames, sharp frames, fps) of a synthetic scene blurred with Eq. 1."""
    from deblur.data.blur import ClipParams, synthesize_clip
    from deblur.data.corpus import CorpusConfig, render_video

    config = CorpusConfig(seconds=seconds)
    frames, _ = render_video(config, seed=seed, index=0)
    pairs = list(synthesize_clip(frames, ClipParams(tau=tau, stride=stride), scale=0.75))
    return [b for b, _ in pairs], [s for _, s in pairs], config.fps / stride


def side_by_side(*frames: np.ndarray) -> np.ndarray:
    gap = np.full((frames[0].shape[0], 8, 3), 255, np.uint8)
    parts: list[np.ndarray] = []
    for frame in frames:
        parts += [frame, gap]
    return np.concatenate(parts[:-1], axis=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deblur.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo-output", help="local directory for the results (demo-output)")
    parser.add_argument("--seconds", type=float, default=1.5, help="length of the 240 fps scene (1.5)")
    parser.add_argument("--seed", type=int, default=2026, help="scene seed (2026; training used other seeds)")
    parser.add_argument("--tau", type=int, default=11, help="frames averaged per blurry frame (11)")
    parser.add_argument("--stride", type=int, default=16, help="T: high-speed frames per output frame (16)")
    args = parser.parse_args(argv)

    if bundled_checkpoint_path() is None:
        print("deblur demo: this installation has no bundled default model", file=sys.stderr)
        return 1
    if not os.environ.get(ENDPOINT_ENV):
        try:
            require_local_server()  # before minutes of work, not after
        except LocalS3UnavailableError as error:
            print(f"deblur demo: {error} (or set {ENDPOINT_ENV} to an S3 server)", file=sys.stderr)
            return 1

    from PIL import Image

    from deblur import storage
    from deblur.batch import BatchConfig, run_batch
    from deblur.cluster import connect_ray
    from deblur.evaluate import frame_psnr
    from deblur.video import EncoderOptions, read_frames, write_video

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"1/4 rendering a {args.seconds:g} s 240 fps scene and blurring it (tau={args.tau}, T={args.stride}) ...")
    blurry, sharp, fps = make_sample(seconds=args.seconds, seed=args.seed, tau=args.tau, stride=args.stride)
    lossless = EncoderOptions(lossless=True, preset="fast")
    write_video(out / "sample_blurry.mp4", blurry, fps=fps, encoder=lossless)
    h, w = blurry[0].shape[:2]
    print(f"    {len(blurry)} frames of {w}x{h} at {fps:g} fps -> {out / 'sample_blurry.mp4'}")

    with local_object_store() as endpoint:
        print(f"2/4 object store at {endpoint}; starting Ray ...")
        ray = connect_ray(num_cpus=os.cpu_count())
        print(f"    Ray {ray.__version__}, resources {ray.cluster_resources()}")
        storage.ensure_bucket(BUCKET)
        storage.upload_file(out / "sample_blurry.mp4", f"{BUCKET}/in/sample.mp4")
        print(f"3/4 deblurring {BUCKET}/in/sample.mp4 with the bundled model (batch job, one recurrent actor) ...")
        config = BatchConfig(actors=1, cpus_per_actor=float(os.cpu_count() or 1), lossless=True)
        run = run_batch(f"{BUCKET}/in", f"{BUCKET}/out", config=config)
        (record,) = run.records
        if record["status"] != "ok":
            print(f"deblur demo: the batch job failed: {record['error']}", file=sys.stderr)
            return 1
        print(f"    {record['frames']} frames in {record['seconds']:.1f} s ({record['fps']:.2f} fps)")
        storage.download_file(f"{BUCKET}/out/sample.mp4", out / "sample_deblurred.mp4")

    deblurred = list(read_frames(out / "sample_deblurred.mp4"))
    before = float(np.mean([frame_psnr(b, s) for b, s in zip(blurry, sharp, strict=True)]))
    after = float(np.mean([frame_psnr(d, s) for d, s in zip(deblurred, sharp, strict=True)]))
    middle = len(sharp) // 2
    Image.fromarray(side_by_side(blurry[middle], deblurred[middle], sharp[middle])).save(out / "side_by_side.png")
    print("4/4 results")
    print(f"    PSNR blurry input: {before:.2f} dB")
    print(f"    PSNR deblurred:    {after:.2f} dB ({after - before:+.2f} dB)")
    print(f"    {out / 'sample_deblurred.mp4'}")
    print(f"    {out / 'side_by_side.png'} (frame {middle}: blurry | deblurred | sharp)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
