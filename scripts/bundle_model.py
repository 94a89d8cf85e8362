"""Train the bundled default model, end to end, and write it into the package.

The recipe of ``platform/deblur/weights/strcnn_dtb_m1.safetensors`` (the paper's final model,
``strcnn_dtb`` with m = 1, preset ``cpu-real``), in the order a user would run it:

    deblur corpus --out WORK/raw --videos 300 --seconds 1.6 --seed 0 --photos PHOTOS --set motion=mixed
    deblur synth WORK/raw WORK/data          # the corpus asks for linear light, tau 7-23, degradations
    deblur train WORK/data --storage WORK/runs --name bundled --preset cpu-real
    deblur evaluate WORK/runs/.../model.safetensors INIT WORK/data -o WORK/report \
        --photos PHOTOS --real-videos VIDEOS

PHOTOS and VIDEOS are the real photographs and sequences in ``../shared/data/real/`` (research /
non-commercial terms, see its README): they are read from there, never copied into the project.
INIT is the model the run was fine-tuned from, compared on the same sets.

then the trained weights are written to the package with their provenance (data recipe, preset,
steps, the commit that trained them, the evaluation on the held-out videos) in the checkpoint's
header and, for people, in ``strcnn_dtb_m1.json`` beside it; the README's paragraph on the bundled
model (between ``<!-- bundle:model:begin -->`` and ``<!-- bundle:model:end -->``) is rewritten from it.

Every stage resumes: the corpus keeps the videos it finished, synthesis skips finished videos, training
resumes its run from the latest checkpoint. The work directory is local (``out/bundle`` by default)
so that a run of an hour or more survives a restart of this process.

    .venv/bin/python scripts/bundle_model.py [--work out/bundle] [--set steps=1200]
    .venv/bin/python scripts/bundle_model.py --readme-only   # only rewrite the README's paragraph
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CORPUS = {"videos": 300, "seconds": 1.6, "seed": 0}  # the defaults of --videos and --seconds
PRESET = "cpu-real"
RUN_NAME = "bundled"
REPO = Path(__file__).resolve().parents[1]
SHARED_REAL = REPO.parent / "shared" / "data" / "real"


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="out/bundle", help="work directory for data, runs and reports")
    parser.add_argument("--videos", type=int, default=CORPUS["videos"], help="corpus size (300)")
    parser.add_argument("--seconds", type=float, default=CORPUS["seconds"], help="seconds per corpus video (1.6)")
    parser.add_argument(
        "--real", default=str(SHARED_REAL), help="folder with photos/ and videos/ (../shared/data/real)"
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="training override")
    parser.add_argument(
        "--dest",
        default=None,
        help="where to write the checkpoint (default: the package's weights/strcnn_dtb_m1.safetensors)",
    )
    parser.add_argument(
        "--readme", default=str(REPO / "README.md"), help="README whose bundled-model paragraph to rewrite"
    )
    parser.add_argument(
        "--readme-only", action="store_true", help="only rewrite the README's paragraph from the bundled model's JSON"
    )
    args = parser.parse_args(argv)

    from deblur.bench import replace_marked_block
    from deblur.checkpoint import BUNDLED_NAME

    package_weights = REPO / "platform" / "deblur" / "weights"
    dest = Path(args.dest) if args.dest else package_weights / BUNDLED_NAME
    if args.readme_only:
        provenance = json.loads(dest.with_suffix(".json").read_text())["provenance"]
        replace_marked_block(Path(args.readme), "bundle:model", describe_bundle(provenance, dest))
        print(f"rewrote the bundled model's paragraph in {args.readme}", flush=True)
        return 0

    import torch

    from deblur.bench import describe_machine
    from deblur.checkpoint import load_checkpoint, save_checkpoint
    from deblur.data.corpus import CorpusConfig, generate_corpus
    from deblur.data.dataset import DataConfig, corpus_synthesis_defaults
    from deblur.data.synth_job import synthesize_dataset
    from deblur.evaluate import evaluate_model, write_reports
    from deblur.evaluate_real import no_harm, real_sequences
    from deblur.settings import parse_overrides
    from deblur.train.driver import run_training
    from deblur.train.step import load_train_config

    real = Path(args.real).resolve()
    photos, real_videos = real / "photos", real / "videos"
    if not photos.is_dir() or not real_videos.is_dir():
        print(f"bundle_model: {real}: no photos/ and videos/ of real footage here (see --real)", file=sys.stderr)
        return 2
    work = Path(args.work).resolve()
    raw, data, runs, report_dir = work / "raw", work / "data", work / "runs", work / "report"
    commit = _git("rev-parse", "--short=12", "HEAD")
    if _git("status", "--porcelain", "--untracked-files=no", "platform/"):
        print("bundle_model: commit the changes in platform/ first (the provenance names the commit)", file=sys.stderr)
        return 2
    overrides = parse_overrides(args.set)
    config = load_train_config(PRESET, overrides)

    corpus_cmd = (
        f"deblur corpus --out raw --videos {args.videos} --seconds {args.seconds:g} --seed {CORPUS['seed']} "
        "--photos ../shared/data/real/photos --set motion=mixed"
    )
    print(f"1/4 {corpus_cmd}", flush=True)
    generate_corpus(  # resumes: keeps the videos an interrupted run of the same settings finished
        str(raw),
        videos=args.videos,
        seed=CORPUS["seed"],
        config=CorpusConfig(seconds=args.seconds, motion="mixed", photos=str(photos)),
        on_video=lambda uri: print(f"    {uri}", flush=True),
    )

    from deblur.cluster import connect_ray

    ray = connect_ray(num_cpus=os.cpu_count())
    data_config = DataConfig.from_dict(corpus_synthesis_defaults(str(raw)))
    print("2/4 deblur synth raw data", flush=True)
    synthesis = synthesize_dataset(str(raw), str(data), config=data_config)
    print(f"    {json.dumps(synthesis.summary)}", flush=True)

    shown = " ".join(f"--set {k}={v}" for k, v in overrides.items())
    train_cmd = f"deblur train data --storage runs --name {RUN_NAME} --preset {PRESET} {shown}".strip()
    print(f"3/4 {train_cmd}", flush=True)
    # A run with checkpoints in its directory resumes: it was trained (in part) by an earlier
    # invocation, perhaps at another commit and for a time this one does not see.
    resumed = any((runs / RUN_NAME).glob("checkpoint_*"))
    started = time.perf_counter()
    run = run_training(config, dataset=str(data), storage_path=str(runs), name=RUN_NAME)
    train_seconds = time.perf_counter() - started
    if run.model is None:
        print("bundle_model: training ended without a checkpoint", file=sys.stderr)
        return 1
    ray.shutdown()

    print(f"4/4 deblur evaluate {run.model} data", flush=True)
    trained = load_checkpoint(run.model)
    step = int(trained.provenance.get("step", -1))
    if step != config.steps:
        print(f"bundle_model: the run stopped at step {step}, expected {config.steps}", file=sys.stderr)
        return 1
    eval_started = time.perf_counter()

    def show_clip(score) -> None:  # a full evaluation takes minutes: show that it moves
        print(
            f"    {score.video_id} clip {score.clip}: {score.frames} frames, "
            f"{sum(score.psnr) / score.frames:.2f} dB (input {sum(score.input_psnr) / score.frames:.2f}), "
            f"{time.perf_counter() - eval_started:.0f} s",
            flush=True,
        )

    report = evaluate_model(
        trained.model, str(data), device="cpu", label=f"strcnn_dtb m=1 ({PRESET})", on_clip=show_clip
    )
    reports = [report]
    init = None if not config.init else load_checkpoint(None if config.init == "bundled" else config.init)
    if init is not None:  # the model the run started from, on the same held-out clips
        reports.append(evaluate_model(init.model, str(data), device="cpu", label="initial weights"))
    write_reports(reports, str(report_dir))
    overall = report.overall
    print("    no-harm set and real sequences", flush=True)
    pictures = REPO / "docs" / "images" / "real"
    checks = {
        "no_harm": no_harm(trained.model, str(photos), device="cpu"),
        "real": real_sequences(trained.model, str(real_videos), out=str(pictures), device="cpu"),
    }
    if init is not None:
        checks["initial"] = {
            "no_harm": no_harm(init.model, str(photos), device="cpu"),
            "real": real_sequences(init.model, str(real_videos), device="cpu"),
            "evaluation": {k: round(float(v), 4) for k, v in reports[1].overall.items()},
        }
    print(
        f"    PSNR {overall['psnr']:.2f} dB (input {overall['input_psnr']:.2f}), "
        f"SSIM {overall['ssim']:.4f} (input {overall['input_ssim']:.4f}) over {overall['frames']} frames",
        flush=True,
    )

    provenance = {
        "purpose": "the bundled default model of deblur (paper's final model: STRCNN+DTB, m=1)",
        "recipe": "scripts/bundle_model.py",
        "preset": PRESET,
        "overrides": overrides,
        "step": step,
        "train_config": config.to_dict(),
        "training_commit": None if resumed else commit,
        "packaged_commit": commit,  # the commit that evaluated the model and wrote these files
        "training_seconds": None if resumed else round(train_seconds, 1),
        "machine": describe_machine(),
        "torch_version": torch.__version__,
        "ray_version": ray.__version__,
        "init": None
        if init is None
        else {"source": config.init, "sha256": hashlib.sha256(Path(init.source).read_bytes()).hexdigest()[:16]},
        "data": {
            "synthetic": True,
            "corpus": corpus_cmd,
            "photos": "322 real photographs: Kodak24, McMaster18, BSDS500 test (200), Urban100 HR (40), "
            "Sun-Hays80 HR (40); research / non-commercial terms (../shared/data/real/README.md)",
            "synth": "deblur synth raw data (defaults: " + json.dumps(data_config.to_dict(), sort_keys=True) + ")",
            "summary": synthesis.summary,
        },
        "evaluation": {
            "set": "held-out videos of the same corpus, rendered from held-out photographs",
            "clips": len(report.clips),
            **{k: round(float(v), 4) for k, v in overall.items()},
            "by_blur": {k: {m: round(float(v), 4) for m, v in s.items()} for k, s in report.by_blur.items()},
        },
        "real_checks": _rounded(checks),
    }
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(trained.model, dest, provenance=provenance)
    dest.with_suffix(".json").write_text(
        json.dumps({"config": trained.config.to_dict(), "provenance": provenance}, indent=2, sort_keys=True) + "\n"
    )
    print(f"wrote {dest} and {dest.with_suffix('.json').name}", flush=True)
    replace_marked_block(Path(args.readme), "bundle:model", describe_bundle(provenance, dest))
    print(f"rewrote the bundled model's paragraph in {args.readme}", flush=True)
    return 0


def _rounded(value):
    """Floats to 3 decimals throughout (the provenance is read by people); per-photo cases dropped."""
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items() if k != "cases"}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def describe_bundle(provenance: dict, weights: Path) -> str:
    """The README's model card of the bundled model, from the provenance its recipe recorded."""
    config, evaluation = provenance["train_config"], provenance["evaluation"]
    machine = provenance["machine"]
    # (describe_machine writes "AMX_BF16" for a CPU with the tiles and "no AMX_BF16" for one without.)
    amx = "AMX_BF16" in machine and "no AMX_BF16" not in machine
    if not config["amp"] or (not amx and "no GPU" in machine):
        precision = "fp32"
    else:
        precision = "bf16 autocast" if "no GPU" in machine else "mixed precision"
    try:
        shown = weights.resolve().relative_to(REPO)
    except ValueError:
        shown = weights
    hours = provenance.get("training_hours")
    # A run trained in stages on different machines names its precisions (``training_precision``).
    precision = provenance.get("training_precision") or precision
    where = "the last stage on" if provenance.get("training_precision") else "on"
    trained = f"about {hours:.1f} h of {precision}" if hours else precision
    init = provenance.get("init")
    start = "fine-tuned from the previous bundled model" if init else "trained from a random start"
    # A run trained in stages (resumed, or restarted from its own weights) records them in ``history``.
    steps = provenance.get("history") or (
        f"{start}: {provenance['step']} steps of batch {config['batch_size']} ({config['sequence_frames']} "
        f"frames, {config['crop']}x{config['crop']} crops)"
    )
    lines = [
        f"The bundled model (`{shown}`, the default of `deblur video`): STRCNN+DTB, m = 1, preset "
        f"`{provenance['preset']}`, {steps}; {trained}, {where} {machine.split(';')[0]}, by "
        f"`{provenance['recipe']}` (commit {provenance.get('packaged_commit', '?')}).",
        "",
        f"**Data.** {provenance['data']['photos']}. `deblur corpus --photos` renders 240 fps videos of "
        "them (still, tripod, pans, hand-held shake, moving objects); `deblur synth` blurs them by Eq. 1 "
        "in linear light and degrades the blurry frames as a camera would (clipped highlights, noise, "
        "H.264). A tenth of the photographs is held out: the evaluation below.",
        "",
    ]
    lines += _card_table(provenance)
    pictures = sorted((REPO / "docs" / "images" / "real").glob("*.png"))
    if pictures:
        lines += ["", "Real footage, input left, output right:", ""]
        lines += [f"![{p.stem}](docs/images/real/{p.name})" for p in pictures if "bmx" in p.name or "bedroom" in p.name]
    del evaluation
    return "\n".join(lines)


def _card_table(provenance: dict) -> list[str]:
    """One table: this model beside the previous bundled model (or its initial weights), on every check."""
    new, checks = provenance["evaluation"], provenance["real_checks"]
    # The previous bundled model when it was scored beside this one; else the run's initial weights.
    old = checks.get("previous") or checks.get("initial")
    theirs_label = "previous bundled model" if "previous" in checks else "initial weights"
    head = f"| check | {theirs_label} | this model |" if old else "| check | this model |"
    rows = [head, "|---|---|---|" if old else "|---|---|"]

    def row(label: str, ours: str, theirs: str | None) -> None:
        rows.append(f"| {label} | {theirs} | {ours} |" if old else f"| {label} | {ours} |")

    held = f"held-out videos ({new['clips']} clips): PSNR gain over the input ({new['input_psnr']:.2f} dB)"
    row(held, f"**{new['psnr_gain']:+.2f} dB**", f"{old['evaluation']['psnr_gain']:+.2f} dB" if old else None)
    old_bins = old["evaluation"].get("by_blur", {}) if old else {}
    for label, s in sorted(new.get("by_blur", {}).items(), key=lambda item: float(item[0].split("-")[0])):
        b = old_bins.get(label)
        theirs = f"{b['psnr'] - b['input_psnr']:+.2f} dB" if b else ""
        row(f"&nbsp;&nbsp;blur {label} ({s['frames']:.0f} frames)", f"{s['psnr'] - s['input_psnr']:+.2f} dB", theirs)
    for condition, s in checks["no_harm"]["summary"].items():
        if condition == "clean":
            label, ours = "still sharp photographs: output vs input", f"{s['output_vs_input']:.2f} dB"
            theirs = f"{old['no_harm']['summary'][condition]['output_vs_input']:.2f} dB" if old else None
        else:
            label = f"still, {condition}: output vs clean (input {s['input_vs_clean']:.2f} dB)"
            ours = f"{s['output_vs_clean']:.2f} dB"
            theirs = f"{old['no_harm']['summary'][condition]['output_vs_clean']:.2f} dB" if old else None
        row(label, ours, theirs)
    for name, r in checks["real"].items():
        if not name.startswith("vid4/"):  # the nearly sharp sequences; the others are shown as pictures
            continue
        theirs = f"{old['real'][name]['output_vs_input']:.2f} dB" if old and name in old["real"] else None
        row(f"real sharp video `{name}`: output vs input", f"{r['output_vs_input']:.2f} dB", theirs)
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
