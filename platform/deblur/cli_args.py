"""The ``deblur`` command's arguments: one parser per subcommand, in the order ``--help`` lists them.

Only argparse definitions live here; ``cli.py`` runs the command each subcommand names.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["build_parser"]


def _add_video(sub: Any) -> None:
    """``deblur video``: a local file through the engine."""
    video = sub.add_parser("video", help="deblur a video file")
    video.add_argument("input", help="input video file")
    video.add_argument("-o", "--output", required=True, help="output video file (.mp4, .mov, .mkv)")
    video.add_argument("--checkpoint", help="model checkpoint (.safetensors); default: the bundled model")
    video.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    video.add_argument(
        "--precision",
        choices=["auto", "fp32", "int8", "bf16", "fp16"],
        default="auto",
        help="auto (the fastest this device runs within 0.01 dB of fp32, checked against fp32 on the first "
        "frames: bf16 on AMX CPUs and GPUs, int8 on VNNI CPUs, else fp32); fp32; int8 (CPU); fp16 (CUDA); bf16",
    )
    video.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the step (about 7 s per frame size, then ~5-10%% faster on CPUs: long videos)",
    )
    video.add_argument("--lossless", action="store_true", help="lossless RGB H.264 (large files)")
    video.add_argument("--crf", type=int, default=18, help="H.264 quality, lower is better (default 18)")
    video.add_argument("--preset", default="medium", help="x264 speed preset (default medium)")
    video.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _add_info(sub: Any) -> None:
    """``deblur info``: a checkpoint or a fresh model."""
    from deblur.model import VARIANTS

    info = sub.add_parser("info", help="describe a checkpoint or a fresh model")
    info.add_argument("checkpoint", nargs="?", help="checkpoint file; default: a freshly initialised model")
    info.add_argument("--variant", choices=sorted(VARIANTS), help="variant of the fresh model (strcnn_dtb)")
    info.add_argument("--m", type=int, help="m of the fresh model (1): 2m+1 input frames")


def _add_corpus(sub: Any) -> None:
    """``deblur corpus``: the rendered 240 fps corpus."""
    corpus = sub.add_parser("corpus", help="write a synthetic 240 fps sharp video corpus (see deblur.data.corpus)")
    corpus.add_argument("--out", required=True, help="output prefix: a directory or s3://bucket/prefix")
    corpus.add_argument("--videos", type=int, default=8, help="number of videos (8)")
    corpus.add_argument("--seconds", type=float, default=2.0, help="length of each video (2.0)")
    corpus.add_argument("--seed", type=int, default=0, help="the corpus is a pure function of the seed (0)")
    corpus.add_argument(
        "--photos",
        help="folder or s3:// prefix of photographs to render scenes from (default: scikit-image's samples); "
        "held-out photographs make held-out videos",
    )
    corpus.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a CorpusConfig setting")
    corpus.add_argument("-q", "--quiet", action="store_true")


def _add_synth(sub: Any) -> None:
    """``deblur synth``: the Ray Data synthesis job."""
    synth = sub.add_parser("synth", help="Eq. 1 blur synthesis with Ray Data: videos -> training shards")
    synth.add_argument("input_prefix", help="high-speed videos: a directory or s3://bucket/prefix")
    synth.add_argument("output_prefix", help="where shards, evaluation clips and the manifest go")
    synth.add_argument("--preset", help="flat YAML file of data settings")
    synth.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a data setting, e.g. scale=1")
    synth.add_argument("--workers", type=int, help="videos processed at once (default: as many as fit)")
    synth.add_argument("--cpus-per-task", type=float, default=1.0, help="CPUs reserved per video task (1)")


def _add_train(sub: Any) -> None:
    """``deblur train``: a Ray Train run."""
    train = sub.add_parser("train", help="train with Ray Train (resumes a run of the same name)")
    train.add_argument("dataset", help="output prefix of `deblur synth` (shards, eval clips, manifest)")
    train.add_argument("--storage", required=True, help="where runs and checkpoints go: directory or s3://")
    train.add_argument("--name", required=True, help="run name; the same name resumes from its latest checkpoint")
    train.add_argument("--preset", default="cpu-small", help="paper, cpu-small, tiny, or a YAML file (cpu-small)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a preset setting")
    train.add_argument("--export", help="also copy the final model.safetensors here")


def _add_batch(sub: Any) -> None:
    """``deblur batch``: the archive job."""
    batch = sub.add_parser("batch", help="deblur every video under an S3 prefix, one recurrent actor per video")
    batch.add_argument("input_prefix", help="videos: s3://bucket/prefix or a directory")
    batch.add_argument("output_prefix", help="where the deblurred videos go (same keys), plus _deblur/manifest.json")
    batch.add_argument("--checkpoint", help="model checkpoint (default: the bundled model)")
    batch.add_argument("--include", action="append", metavar="GLOB", help="only keys matching (repeatable)")
    batch.add_argument("--dry-run", action="store_true", help="list the work and exit")
    batch.add_argument("--actors", type=int, help="actors at once (default: as many as the cluster fits)")
    batch.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs reserved per actor (1)")
    batch.add_argument("--gpus-per-actor", type=float, help="GPUs per actor (default: 1 if the cluster has GPUs)")
    batch.add_argument("--device", default="auto", help="auto, cpu or cuda (auto)")
    batch.add_argument("--lossless", action="store_true", help="RGB H.264 at QP 0 (exact)")
    batch.add_argument("--crf", type=int, default=18, help="H.264 quality (18)")
    batch.add_argument("--max-retries", type=int, default=2, help="retries of a video whose actor died (2)")
    batch.add_argument(
        "--precision",
        choices=["auto", "fp32", "int8", "bf16", "fp16"],
        default="auto",
        help="as `deblur video`: auto; fp32; int8 (CPU, x86 quantized kernels); fp16 (CUDA); bf16",
    )
    batch.add_argument(
        "--compile", action="store_true", help="as `deblur video --compile` (compiled once per actor and frame size)"
    )
    batch.add_argument(
        "--split-long-videos",
        action="store_true",
        help="cut long videos at keyframes and deblur the pieces on several actors, each warmed up over the "
        "frames before its piece (default: one actor per video, the paper's online setting)",
    )
    batch.add_argument(
        "--warmup-frames", type=int, default=8, help="with --split-long-videos: frames run before each piece (8)"
    )
    batch.add_argument(
        "--min-chunk-seconds", type=float, default=10.0, help="with --split-long-videos: shortest piece (10 s)"
    )
    batch.add_argument(
        "--retry-failed",
        action="store_true",
        help="also retry videos that failed for bad input (a rerun retries only transient failures)",
    )
    batch.add_argument("-q", "--quiet", action="store_true")


def _add_stream(sub: Any) -> None:
    """``deblur stream``: a file through the HTTP endpoint."""
    stream = sub.add_parser(
        "stream",
        help="deblur a video through the HTTP endpoint, frame by frame (live session)",
        description="Deblur a video through the HTTP endpoint. A live session sends decoded frames and writes "
        "the deblurred ones at the source's average frame rate, without audio; --whole uploads the file "
        "and keeps its timestamps and audio.",
    )
    stream.add_argument("input", help="a local video file")
    stream.add_argument("-o", "--output", required=True, help="output video file")
    stream.add_argument("--url", default="http://127.0.0.1:8000", help="endpoint (http://127.0.0.1:8000)")
    stream.add_argument("--api-key", help="API key (default: $DEBLUR_API_KEY)")
    stream.add_argument("--websocket", action="store_true", help="stream over the session's WebSocket")
    stream.add_argument("--format", choices=["raw", "png"], default="raw", help="how frames travel (raw)")
    stream.add_argument("--whole", action="store_true", help="upload the whole file instead of a live session")
    stream.add_argument("--lossless", action="store_true", help="RGB H.264 at QP 0")
    stream.add_argument("-q", "--quiet", action="store_true")


def _add_tune(sub: Any) -> None:
    """``deblur tune``: a Ray Tune sweep."""
    tune = sub.add_parser("tune", help="Ray Tune sweep (default: Table 1's variants x m), ASHA early stopping")
    tune.add_argument("dataset", help="output prefix of `deblur synth`")
    tune.add_argument("--storage", required=True, help="where trials and checkpoints go: directory or s3://")
    tune.add_argument("--name", required=True, help="experiment name")
    tune.add_argument("--preset", default="cpu-small", help="base training preset (cpu-small)")
    tune.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a base setting")
    tune.add_argument(
        "--grid", action="append", default=[], metavar="KEY=[V1,V2]", help="values to sweep, e.g. 'lr=[1e-4,3e-4]'"
    )
    tune.add_argument("--max-concurrent", type=int, default=1, help="trials running at once (1)")
    tune.add_argument("--table", help="also write the results table (Markdown) here")


def _add_evaluate(sub: Any) -> None:
    """``deblur evaluate``: checkpoints on an evaluation set."""
    evaluate = sub.add_parser("evaluate", help="PSNR/SSIM/temporal consistency of checkpoints on an eval set")
    evaluate.add_argument(
        "checkpoints", nargs="+", metavar="CHECKPOINT", help="one or more checkpoints ('bundled' = the default model)"
    )
    evaluate.add_argument("dataset", metavar="EVAL_PREFIX", help="output prefix of `deblur synth`")
    evaluate.add_argument("-o", "--out", default="eval-report", help="where the report goes (./eval-report)")
    evaluate.add_argument("--limit", type=int, help="score only the first N clips")
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (auto)")
    evaluate.add_argument("--precision", choices=["auto", "fp32", "int8", "bf16", "fp16"], default="auto")
    evaluate.add_argument(
        "--photos", help="folder of real photographs: the no-harm set (static clips of the held-out ones)"
    )
    evaluate.add_argument(
        "--real-videos", help="folder of real frame sequences (one folder each): output against input, side by side"
    )
    evaluate.add_argument("-q", "--quiet", action="store_true")


def _add_bench(sub: Any) -> None:
    """``deblur bench``: speeds on this machine."""
    bench = sub.add_parser("bench", help="measure and print speeds on this machine")
    bench.add_argument(
        "what",
        choices=["data", "batch", "serve", "train", "perf", "warmup"],
        help="data: synthesis vs decode; batch: 1 vs 2 actors; serve: session latency; train: samples/s; "
        "perf: all against the device's limit; warmup: how fast the recurrent state forgets its start",
    )
    bench.add_argument("--quick", action="store_true", help="perf: model, file and memory figures only")
    bench.add_argument("--readme", help="perf: write the table between the bench markers of this file")
    bench.add_argument("--videos", type=int, help="data: corpus videos (8); batch: videos (4)")
    bench.add_argument("--seconds", type=float, default=4.0, help="data: length of each corpus video")
    bench.add_argument("--width", type=int, help="frame width (data 640, batch/serve 320)")
    bench.add_argument("--height", type=int, help="frame height (data 360, batch/serve 240)")
    bench.add_argument("--cache", help="directory to keep the generated corpus between runs")
    bench.add_argument("--real-videos", help="warmup: folder of real sequences (folders of frames)")


def build_parser() -> argparse.ArgumentParser:
    """Every subcommand and option of ``deblur``; ``args.command`` names the subcommand to run."""
    from deblur import __version__

    parser = argparse.ArgumentParser(
        prog="deblur", description="Online video deblurring (STRCNN+DTB, Kim et al. ICCV 2017)."
    )
    parser.add_argument("--version", action="version", version=f"deblur {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    # In the order ``deblur --help`` lists them.
    commands = (_add_video, _add_info, _add_corpus, _add_synth, _add_train, _add_batch, _add_stream, _add_tune)
    for add in (*commands, _add_evaluate, _add_bench):
        add(sub)
    return parser
