"""Generator -> local S3 server -> Ray Data synthesis -> training reader, end to end."""

from __future__ import annotations

import itertools
import json
from fractions import Fraction

import numpy as np
import pytest

from deblur import storage
from deblur.cli import main
from deblur.data.blur import ClipParams, synthesize_clip
from deblur.data.corpus import CorpusConfig, generate_corpus
from deblur.data.dataset import DataConfig, load_manifest
from deblur.data.reader import count_training_windows, iterate_eval_clips, read_training_dataset
from deblur.data.synth_job import synthesize_dataset
from deblur.video import frame_to_rgb, probe_video, read_frames

pytestmark = pytest.mark.usefixtures("ray_session")


def test_corpus_to_training_batches(s3_bucket: str) -> None:
    raw, out = f"{s3_bucket}/raw", f"{s3_bucket}/dataset"
    corpus = CorpusConfig.from_dict({"width": 192, "height": 160, "seconds": 0.75})
    written = generate_corpus(raw, videos=3, seed=5, config=corpus)
    assert len(written) == 3
    storage.write_bytes(f"{raw}/broken.mp4", b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 20)
    storage.write_bytes(f"{raw}/notes.txt", b"not a video, and not listed as one")

    # 180 frames per video: with tau <= 9 and T < 1.5 tau every video holds one 13-pair clip.
    config = DataConfig.from_dict(
        {"clip_frames": 13, "eval_fraction": 0.3, "scale": 1.0, "seed": 2, "taus": [7, 9], "stride_max": 1.5}
    )
    run = synthesize_dataset(raw, out, config=config, workers=2, cpus_per_task=0.5)
    by_id = {r["video_id"]: r for r in run.records}
    assert set(by_id) == {"video_0000.mp4", "video_0001.mp4", "video_0002.mp4", "broken.mp4"}
    assert by_id["broken.mp4"]["status"] == "skipped"
    assert f"{raw}/broken.mp4" in by_id["broken.mp4"]["error"]
    good = [r for r in run.records if r["status"] == "ok"]
    assert len(good) == 3 and {r["split"] for r in good} == {"train", "eval"}

    manifest = load_manifest(out)
    assert manifest["summary"]["ok"] == 3 and manifest["summary"]["skipped"] == 1
    for record in good:
        for clip in record["clips"]:
            assert clip["tau"] in (7, 9) and clip["tau"] <= clip["stride"] < 1.5 * clip["tau"]
            assert clip["source_end"] - clip["source_start"] == (clip["pairs"] - 1) * clip["stride"] + clip["tau"]

    # Evaluation clips: whole, full size, at f / T, and lossless: decoded, they are exactly Eq. 1
    # of the source frames the manifest names.
    clips = list(iterate_eval_clips(out))
    assert clips
    for clip in clips:
        blurry_info = probe_video(storage.open_input(clip["blurry"]), name=clip["blurry"])
        assert (blurry_info.width, blurry_info.height) == (192, 160)
        assert blurry_info.fps == Fraction(240, clip["stride"])
        with storage.open_input(by_id[clip["video_id"]]["video"]) as source:
            expected = list(
                synthesize_clip(
                    itertools.islice(read_frames(source, rgb=False), clip["source_start"], None),
                    ClipParams(tau=clip["tau"], stride=clip["stride"]),
                    outputs=clip["pairs"],
                    linear_light=config.synthesis.linear_light,
                    gamma=config.synthesis.gamma,
                    scale=config.synthesis.scale,
                    to_rgb=frame_to_rgb,
                )
            )
        assert len(expected) == clip["pairs"]
        for name, index in (("blurry", 0), ("sharp", 1)):
            with storage.open_input(clip[name]) as f:
                decoded = np.stack(list(read_frames(f)))
            np.testing.assert_array_equal(decoded, np.stack([pair[index] for pair in expected]), err_msg=name)

    # Here every clip is one 13-pair window, so one row per clip of a training video.
    train_rows = sum(len(r["clips"]) for r in good if r["split"] == "train")
    assert count_training_windows(out) == train_rows  # what training sizes its reader's buffer by
    dataset = read_training_dataset(out, frames=13, crop=128, seed=0, samples_per_window=1)
    batch = next(iter(dataset.iter_batches(batch_size=train_rows, batch_format="numpy")))
    assert batch["blurry"].shape == batch["sharp"].shape == (train_rows, 13, 128, 128, 3)
    assert batch["blurry"].dtype == batch["sharp"].dtype == np.uint8
    # Each sample names its stored window: here every window of every training clip, once.
    windows = {
        f"{r['video_id']}/clip-{c['clip']:03d}/window-0" for r in good if r["split"] == "train" for c in r["clips"]
    }
    assert sorted(batch["key"]) == sorted(windows)
    # Blur is an average: the blurry frames are smoother than the sharp ones.
    blurry, sharp = batch["blurry"].astype(np.float32), batch["sharp"].astype(np.float32)
    assert np.abs(np.diff(blurry, axis=3)).mean() < np.abs(np.diff(sharp, axis=3)).mean()

    # A rerun does nothing: no video processed, no object rewritten.
    before = {uri: storage.read_bytes(uri) for uri in storage.list_files(out) if "manifest" not in uri}
    again = synthesize_dataset(raw, out, config=config, workers=2, cpus_per_task=0.5)
    assert again.processed == 0
    assert {uri: storage.read_bytes(uri) for uri in storage.list_files(out) if "manifest" not in uri} == before


def test_cli_exits_non_zero_when_nothing_is_usable(s3_bucket: str, capsys: pytest.CaptureFixture[str]) -> None:
    storage.write_bytes(f"{s3_bucket}/raw/a.mp4", b"garbage" * 100)
    code = main(["synth", f"{s3_bucket}/raw", f"{s3_bucket}/out", "--cpus-per-task", "0.5"])
    assert code == 1
    err = capsys.readouterr().err
    assert "no video could be used" in err and "a.mp4" in err
    record = json.loads(storage.read_bytes(f"{s3_bucket}/out/records/a.mp4.json"))
    assert record["status"] == "skipped"
    assert main(["synth", f"{s3_bucket}/empty", f"{s3_bucket}/out2"]) == 1
    assert "no videos found" in capsys.readouterr().err
