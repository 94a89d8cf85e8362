"""The ``deblur`` command line: parses arguments and calls the stage modules."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

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
        result = deblur_file(
            source,
            destination,
            model,
            device=args.device,
            encoder=encoder,
            on_frame=progress,
            precision=args.precision,
            compiled=args.compile,
        )
    finally:
        if bar is not None:
            bar.close()
    if not args.quiet:
        if result.precision_note:
            print(result.precision_note, file=sys.stderr)
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


def _cmd_corpus(args: argparse.Namespace) -> int:
    from deblur.config import parse_overrides
    from deblur.corpus import CorpusConfig, generate_corpus

    values = {"seconds": args.seconds, **parse_overrides(args.set)}
    if args.photos:
        values["photos"] = args.photos
    config = CorpusConfig.from_dict(values)
    written = generate_corpus(
        args.out,
        videos=args.videos,
        seed=args.seed,
        config=config,
        on_video=None if args.quiet else (lambda uri: print(uri, file=sys.stderr)),
    )
    print(f"{args.out}: {len(written)} synthetic {config.fps} fps videos", file=sys.stderr)
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    import json

    from deblur.config import load_preset, parse_overrides
    from deblur.data import DataConfig, corpus_synthesis_defaults, synthesize_dataset

    # A rendered corpus names the synthesis it was made for; a preset and --set come on top.
    asked = corpus_synthesis_defaults(args.input_prefix)
    if asked:
        print(f"{args.input_prefix}: the corpus asks for {json.dumps(asked)}", file=sys.stderr)
    values = {**asked, **(load_preset(args.preset) if args.preset else {})}
    config = DataConfig.from_dict({**values, **parse_overrides(args.set)})
    run = synthesize_dataset(
        args.input_prefix, args.output_prefix, config=config, workers=args.workers, cpus_per_task=args.cpus_per_task
    )
    for record in run.records:
        if record["status"] != "ok":
            print(f"{record['status']}: {record['error']}", file=sys.stderr)
    print(
        f"{run.manifest_uri}: {run.processed} video(s) processed this run, {len(run.records)} in total; "
        f"{json.dumps(run.summary)}",
        file=sys.stderr,
    )
    if run.usable == 0:
        raise UsageError(f"{args.input_prefix}: no video could be used (see {run.manifest_uri})")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from deblur.config import parse_overrides
    from deblur.train import load_train_config, run_training

    config = load_train_config(args.preset, parse_overrides(args.set))
    run = run_training(config, dataset=args.dataset, storage_path=args.storage, name=args.name, export_to=args.export)
    shown = {k: v for k, v in run.metrics.items() if isinstance(v, int | float)}
    print(f"run {run.name}: checkpoint {run.checkpoint}", file=sys.stderr)
    print(f"model {run.model}; last metrics {shown}", file=sys.stderr)
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from deblur.config import parse_overrides
    from deblur.train import TABLE1_SPACE, load_train_config, run_tuning

    base = load_train_config(args.preset, parse_overrides(args.set))
    space = dict(TABLE1_SPACE)
    for key, values in parse_overrides(args.grid).items():
        space[key] = values if isinstance(values, list) else [values]
    result = run_tuning(
        base,
        dataset=args.dataset,
        storage_path=args.storage,
        name=args.name,
        space=space,
        max_concurrent=args.max_concurrent,
    )
    print(result.table)
    if args.table:
        from deblur import storage

        storage.write_bytes(args.table, (result.table + "\n").encode(), content_type="text/markdown")
    return 0


def _cmd_batch(args: argparse.Namespace) -> int:
    from deblur.batch import BatchConfig, run_batch

    values = {
        "checkpoint": args.checkpoint,
        "actors": args.actors,
        "cpus_per_actor": args.cpus_per_actor,
        "gpus_per_actor": args.gpus_per_actor,
        "device": args.device,
        "lossless": args.lossless,
        "crf": args.crf,
        "max_retries": args.max_retries,
        "precision": args.precision,
        "compiled": args.compile,
    }
    if args.include:
        values["include"] = tuple(args.include)
    run = run_batch(
        args.input_prefix,
        args.output_prefix,
        config=BatchConfig.from_dict(values),
        dry_run=args.dry_run,
        retry_failed=args.retry_failed,
        progress=not args.quiet,
    )
    if args.dry_run:
        for task in run.planned:
            print(f"deblur  {task.source} -> {task.destination}")
        for record in run.records:
            if record["status"] == "ok":
                print(f"done    {record['source']} -> {record['destination']}")
            else:
                print(f"failed  {record['source']}: {record['error']}")
        print(
            f"{len(run.planned)} to deblur, {run.summary['ok']} already done, {run.summary['failed']} failed "
            "(bad input; --retry-failed tries them again)",
            file=sys.stderr,
        )
        return 0
    for record in run.records:
        if record["status"] != "ok":
            print(f"failed: {record['key']}: {record['error']}", file=sys.stderr)
    print(
        f"{run.processed} video(s) processed in {run.seconds:.1f} s, {run.summary['ok']} ok, "
        f"{run.summary['failed']} failed; manifest {run.manifest_uri}",
        file=sys.stderr,
    )
    return 1 if run.summary["failed"] else 0


def _cmd_stream(args: argparse.Namespace) -> int:
    """A live session rebuilds the video from frames alone: constant source fps, no audio. ``--whole``
    keeps the timestamps and the audio (the server transforms the file)."""
    import httpx
    from tqdm import tqdm
    from websockets.exceptions import WebSocketException

    from deblur.client import DeblurClient
    from deblur.video import EncoderOptions, probe_video, read_frames, write_video

    source = Path(args.input)
    if not source.exists():
        raise UsageError(f"{source}: no such file")
    if source.resolve() == Path(args.output).resolve():
        raise UsageError(f"{args.output}: output would overwrite the input")
    info = probe_video(source)
    with DeblurClient(args.url, api_key=args.api_key) as client:
        try:
            client.health()  # an unreachable endpoint is one line, before any work
            if args.whole:
                frames = client.deblur_video(source, args.output, lossless=args.lossless)
                if not args.quiet:
                    print(f"{args.output}: {frames} frames (whole-video upload)", file=sys.stderr)
                return 0
            bar = tqdm(total=info.frames, unit="frame", desc=source.name, disable=args.quiet, file=sys.stderr)

            def frames_in() -> Iterator[np.ndarray]:
                for frame in read_frames(source):
                    bar.update(1)
                    yield frame

            if args.websocket:
                out = client.stream(frames_in(), fmt=args.format)
            else:

                def over_http() -> Iterator[np.ndarray]:
                    session = client.session(fmt=args.format)
                    for frame in frames_in():
                        yield from session.push(frame)
                    yield from session.close()

                out = over_http()
            try:
                # Only frames come back: written at the source's average rate, without its audio.
                count = write_video(args.output, out, fps=info.fps, encoder=EncoderOptions(lossless=args.lossless))
            finally:
                bar.close()
        except (httpx.TransportError, WebSocketException) as error:
            raise UsageError(f"{args.url}: cannot reach the endpoint or the connection broke off ({error})") from error
    if not args.quiet:
        print(
            f"{args.output}: {count} frames deblurred through a live session at {args.url} "
            f"({float(info.fps):g} fps, no audio)",
            file=sys.stderr,
        )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    from deblur.checkpoint import load_checkpoint
    from deblur.evaluate import ClipScore, evaluate_model, write_reports

    reports = []
    for source in args.checkpoints:
        loaded = load_checkpoint(None if source == "bundled" else source)
        label = f"{loaded.config.variant} m={loaded.config.m} ({Path(str(loaded.source)).name})"

        def show(score: ClipScore, label: str = label) -> None:
            if not args.quiet:
                psnr, base = float(np.mean(score.psnr)), float(np.mean(score.input_psnr))
                print(
                    f"{label}: {score.video_id} clip {score.clip} tau={score.tau}: {psnr:.2f} dB (input {base:.2f})",
                    file=sys.stderr,
                )

        reports.append(
            evaluate_model(
                loaded.model,
                args.dataset,
                device=args.device,
                limit=args.limit,
                label=label if args.precision == "fp32" else f"{label} {args.precision}",
                on_clip=show,
                precision=args.precision,
            )
        )
    written = write_reports(reports, args.out)
    if args.photos or args.real_videos:
        _evaluate_real(args)
    for report in reports:
        o = report.overall
        print(
            f"{report.model}: PSNR {o['psnr']:.2f} dB (input {o['input_psnr']:.2f}, gain {o['psnr_gain']:+.2f}), "
            f"SSIM {o['ssim']:.4f} (input {o['input_ssim']:.4f}), TE {o['temporal_error']:.2f} "
            f"(input {o['input_temporal_error']:.2f}) over {o['frames']} frames"
        )
    print(f"report: {written['markdown']}", file=sys.stderr)
    return 0


def _evaluate_real(args: argparse.Namespace) -> None:
    """The no-harm set and the real sequences: ``OUT/real.md``, ``OUT/real.json``, side-by-side PNGs."""
    import json

    from deblur import storage
    from deblur.checkpoint import load_checkpoint
    from deblur.evaluate_real import no_harm, no_harm_markdown, real_sequences, real_sequences_markdown

    lines, payload = ["# Real photographs and real footage", ""], {}
    for source in args.checkpoints:
        loaded = load_checkpoint(None if source == "bundled" else source)
        label = Path(str(loaded.source)).name
        entry: dict[str, Any] = {}
        if args.photos:
            entry["no_harm"] = no_harm(loaded.model, args.photos, precision=args.precision, device=args.device)
            lines += [*no_harm_markdown(entry["no_harm"], label), ""]
        if args.real_videos:
            pictures = storage.join_uri(args.out, "real", label.removesuffix(".safetensors"))
            entry["real"] = real_sequences(
                loaded.model, args.real_videos, out=pictures, precision=args.precision, device=args.device
            )
            lines += [*real_sequences_markdown(entry["real"], label), ""]
        payload[source] = entry
    text = "\n".join(lines)
    storage.write_bytes(storage.join_uri(args.out, "real.md"), text.encode(), content_type="text/markdown")
    storage.write_bytes(
        storage.join_uri(args.out, "real.json"), json.dumps(payload, indent=1).encode(), content_type="application/json"
    )
    print(text)


def _cmd_bench(args: argparse.Namespace) -> int:
    from deblur import bench

    if args.what == "data":
        bench.run_data_benchmark(
            videos=args.videos or 8,
            seconds=args.seconds,
            width=args.width or 640,
            height=args.height or 360,
            cache=args.cache,
        )
    elif args.what == "batch":
        size = {"width": args.width or 320, "height": args.height or 240}
        bench.run_batch_benchmark(videos=args.videos or 4, cache=args.cache, **size)
    elif args.what == "serve":
        bench.run_serve_benchmark(width=args.width or 320, height=args.height or 240, cache=args.cache)
    elif args.what == "train":
        bench.run_train_benchmark(cache=args.cache)
    elif args.what == "perf":
        if args.quick and args.readme:
            raise UsageError("--quick measures only some figures: the README table takes a full run (no --quick)")
        bench.run_perf_benchmark(quick=args.quick, cache=args.cache, readme=args.readme)
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
    video.set_defaults(func=_cmd_video)

    info = sub.add_parser("info", help="describe a checkpoint or a fresh model")
    info.add_argument("checkpoint", nargs="?", help="checkpoint file; default: a freshly initialised model")
    info.add_argument("--variant", choices=sorted(VARIANTS), help="variant of the fresh model (strcnn_dtb)")
    info.add_argument("--m", type=int, help="m of the fresh model (1): 2m+1 input frames")
    info.set_defaults(func=_cmd_info)

    corpus = sub.add_parser("corpus", help="write a synthetic 240 fps sharp video corpus (see deblur.corpus)")
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
    corpus.set_defaults(func=_cmd_corpus)

    synth = sub.add_parser("synth", help="Eq. 1 blur synthesis with Ray Data: videos -> training shards")
    synth.add_argument("input_prefix", help="high-speed videos: a directory or s3://bucket/prefix")
    synth.add_argument("output_prefix", help="where shards, evaluation clips and the manifest go")
    synth.add_argument("--preset", help="flat YAML file of data settings")
    synth.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a data setting, e.g. scale=1")
    synth.add_argument("--workers", type=int, help="videos processed at once (default: as many as fit)")
    synth.add_argument("--cpus-per-task", type=float, default=1.0, help="CPUs reserved per video task (1)")
    synth.set_defaults(func=_cmd_synth)

    train = sub.add_parser("train", help="train with Ray Train (resumes a run of the same name)")
    train.add_argument("dataset", help="output prefix of `deblur synth` (shards, eval clips, manifest)")
    train.add_argument("--storage", required=True, help="where runs and checkpoints go: directory or s3://")
    train.add_argument("--name", required=True, help="run name; the same name resumes from its latest checkpoint")
    train.add_argument("--preset", default="cpu-small", help="paper, cpu-small, tiny, or a YAML file (cpu-small)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a preset setting")
    train.add_argument("--export", help="also copy the final model.safetensors here")
    train.set_defaults(func=_cmd_train)

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
        "--retry-failed",
        action="store_true",
        help="also retry videos that failed for bad input (a rerun retries only transient failures)",
    )
    batch.add_argument("-q", "--quiet", action="store_true")
    batch.set_defaults(func=_cmd_batch)

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
    stream.set_defaults(func=_cmd_stream)

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
    tune.set_defaults(func=_cmd_tune)

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
    evaluate.set_defaults(func=_cmd_evaluate)

    bench = sub.add_parser("bench", help="measure and print speeds on this machine")
    bench.add_argument(
        "what",
        choices=["data", "batch", "serve", "train", "perf"],
        help="data: synthesis vs decode; batch: 1 vs 2 actors; serve: session latency; train: samples/s; "
        "perf: all against the device's limit",
    )
    bench.add_argument("--quick", action="store_true", help="perf: model, file and memory figures only")
    bench.add_argument("--readme", help="perf: write the table between the bench markers of this file")
    bench.add_argument("--videos", type=int, help="data: corpus videos (8); batch: videos (4)")
    bench.add_argument("--seconds", type=float, default=4.0, help="data: length of each corpus video")
    bench.add_argument("--width", type=int, help="frame width (data 640, batch/serve 320)")
    bench.add_argument("--height", type=int, help="frame height (data 360, batch/serve 240)")
    bench.add_argument("--cache", help="directory to keep the generated corpus between runs")
    bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from deblur.batch import BatchError
    from deblur.checkpoint import CheckpointError
    from deblur.client import EndpointError
    from deblur.storage import StorageError
    from deblur.train import TrainingError
    from deblur.video import VideoError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (
        UsageError,
        CheckpointError,
        VideoError,
        StorageError,
        TrainingError,
        BatchError,
        EndpointError,
        ValueError,
    ) as exc:
        print(f"deblur: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        # The environment said no (permissions, a full disk, a vanished directory): one line naming
        # the file, not a traceback.
        where = f"{exc.filename}: " if exc.filename is not None else ""
        print(f"deblur: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("deblur: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
