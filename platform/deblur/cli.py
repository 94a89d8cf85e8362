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
    from deblur.data.corpus import CorpusConfig, generate_corpus
    from deblur.settings import parse_overrides

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

    from deblur.data.dataset import DataConfig, corpus_synthesis_defaults
    from deblur.data.synth_job import synthesize_dataset
    from deblur.settings import load_preset, parse_overrides

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
    from deblur.settings import parse_overrides
    from deblur.train.driver import run_training
    from deblur.train.step import load_train_config

    config = load_train_config(args.preset, parse_overrides(args.set))
    run = run_training(config, dataset=args.dataset, storage_path=args.storage, name=args.name, export_to=args.export)
    shown = {k: v for k, v in run.metrics.items() if isinstance(v, int | float)}
    print(f"run {run.name}: checkpoint {run.checkpoint}", file=sys.stderr)
    print(f"model {run.model}; last metrics {shown}", file=sys.stderr)
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from deblur.settings import parse_overrides
    from deblur.train.step import load_train_config
    from deblur.train.tune import TABLE1_SPACE, run_tuning

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
        "split_long_videos": args.split_long_videos,
        "warmup_frames": args.warmup_frames,
        "min_chunk_seconds": args.min_chunk_seconds,
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
    elif args.what == "warmup":
        if not args.real_videos:
            raise UsageError(
                "bench warmup needs --real-videos DIR (folders of frames, e.g. ../shared/data/real/videos)"
            )
        bench.run_warmup_benchmark(videos=args.real_videos)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``deblur`` parser (``cli_args.py``); ``main`` runs the subcommand it names."""
    from deblur.cli_args import build_parser as build

    return build()


# Subcommand -> the function that runs it.
_COMMANDS = {
    "video": _cmd_video,
    "info": _cmd_info,
    "corpus": _cmd_corpus,
    "synth": _cmd_synth,
    "train": _cmd_train,
    "batch": _cmd_batch,
    "stream": _cmd_stream,
    "tune": _cmd_tune,
    "evaluate": _cmd_evaluate,
    "bench": _cmd_bench,
}


def main(argv: Sequence[str] | None = None) -> int:
    from deblur.batch import BatchError
    from deblur.checkpoint import CheckpointError
    from deblur.client import EndpointError
    from deblur.storage import StorageError
    from deblur.train.step import TrainingError
    from deblur.video import VideoError

    args = build_parser().parse_args(argv)
    try:
        return int(_COMMANDS[args.command](args))
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
