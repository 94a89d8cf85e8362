"""Data pipeline pieces that need no cluster: the split, the crops, the config, one video."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from deblur import storage
from deblur.data.blur import ClipParams, synthesize_clip
from deblur.data.dataset import DataConfig, output_uris, split_for, write_manifest
from deblur.data.reader import (
    _CropSampler,
    add_gaussian_noise,
    iterate_eval_clips,
    sample_training_crop,
    training_shards,
    window_key,
    worker_batches,
)
from deblur.data.shards import _Committer, _read_shard, _ShardWriter
from deblur.data.synth_job import _settings_for_one_operator, plan_tasks, process_video
from deblur.video import frame_to_rgb, read_frames
from media import write_test_video

# 130 frames at tau = T = 7 and one 16-pair clip: two 8-pair windows, each in its own shard.
TWO_SHARDS = {
    "taus": [7],
    "stride_max": 1.01,
    "scale": 1.0,
    "clip_frames": 16,
    "window_frames": 8,
    "min_window_frames": 8,
    "shard_target_bytes": 1,
    "eval_fraction": 0,
}


def _video_dir(tmp_path: Path, frames: int = 130) -> Path:
    (tmp_path / "in").mkdir(exist_ok=True)
    write_test_video(tmp_path / "in" / "clip.mp4", width=48, height=40, frames=frames, fps=240, audio=False)
    return tmp_path / "in"


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_split_is_by_video_and_stable() -> None:
    ids = [f"video_{i:03d}.mp4" for i in range(200)]
    split = split_for(ids, eval_fraction=0.2, seed=0)
    assert set(split) == set(ids)
    assert 25 <= sum(s == "eval" for s in split.values()) <= 55
    # Adding videos never moves an existing one to the other side.
    bigger = split_for([*ids, *(f"new_{i}.mp4" for i in range(50))], eval_fraction=0.2, seed=0)
    assert all(bigger[v] == split[v] for v in ids)
    assert split_for(ids, eval_fraction=0.2, seed=1) != split
    # Small sets still get both sides.
    assert sorted(split_for(["a", "b"], eval_fraction=0.2, seed=0).values()) == ["eval", "train"]
    assert split_for(["a", "b"], eval_fraction=0.0, seed=0) == {"a": "train", "b": "train"}


def test_crop_is_shared_across_the_window() -> None:
    rng = np.random.default_rng(0)
    frames, h, w = 16, 40, 50
    # Pixel value encodes (frame, y, x) so that any misalignment between frames shows.
    t, y, x = np.meshgrid(np.arange(frames), np.arange(h), np.arange(w), indexing="ij")
    code = np.stack([t * 10, y * 5, x * 5], axis=-1).astype(np.uint8)
    places = set()
    for _ in range(50):
        b, s = sample_training_crop(code, code + 1, rng=rng, frames=13, crop=32)
        assert b.shape == s.shape == (13, 32, 32, 3) and b.dtype == np.uint8
        np.testing.assert_array_equal(s, b + 1)  # blurry and sharp cropped identically
        # one spatial location for every frame: the y/x codes are identical across frames
        assert (b[..., 1:] == b[:1, ..., 1:]).all()
        # consecutive frames
        assert list(b[:, 0, 0, 0] // 10) == list(range(b[0, 0, 0, 0] // 10, b[0, 0, 0, 0] // 10 + 13))
        # and the whole sample is one 13x32x32 block of the source (flipped or not), read back from
        # the codes of its corner: the same block in every frame, nothing shifted or resampled.
        t0, rows, cols = b[0, 0, 0, 0] // 10, b[0, :, 0, 1] // 5, b[0, 0, :, 2] // 5
        block = code[t0 : t0 + 13, rows.min() : rows.min() + 32, cols.min() : cols.min() + 32]
        block = block[:, ::-1] if rows[0] > rows[-1] else block
        block = block[:, :, ::-1] if cols[0] > cols[-1] else block
        np.testing.assert_array_equal(b, block)
        places.add((int(t0), int(rows.min()), int(cols.min())))
    assert len(places) > 25  # drawn at random: 50 samples, about as many places
    with pytest.raises(ValueError, match="cannot give 13 frames at 64x64"):
        sample_training_crop(code, code, rng=rng, frames=13, crop=64)


def test_flips_happen_and_are_consistent() -> None:
    rng = np.random.default_rng(0)
    base = np.arange(13 * 4 * 4 * 3, dtype=np.uint8).reshape(13, 4, 4, 3)
    seen = set()
    for _ in range(40):
        b, _ = sample_training_crop(base, base, rng=rng, frames=13, crop=4)
        for kind, candidate in {
            "none": base,
            "h": base[:, :, ::-1],
            "v": base[:, ::-1],
            "hv": base[:, ::-1, ::-1],
        }.items():
            if np.array_equal(b, candidate):
                seen.add(kind)
    assert seen == {"none", "h", "v", "hv"}


def test_config_is_strict_and_flat() -> None:
    config = DataConfig.from_dict({"taus": [7], "scale": 1.0, "eval_fraction": 0.5})
    assert config.synthesis.taus == (7,) and config.eval_fraction == 0.5
    assert DataConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"unknown data setting\(s\) \['window'\]"):
        DataConfig.from_dict({"window": 3})


def test_one_video_to_shards_and_record(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    source = write_test_video(tmp_path / "in" / "clip.mp4", width=48, height=40, frames=130, fps=240, audio=False)
    config = DataConfig.from_dict(
        {"taus": [7], "stride_max": 1.01, "scale": 1.0, "clip_frames": 16, "eval_fraction": 0}
    )
    (task,), done = plan_tasks(str(tmp_path / "in"), str(tmp_path / "out"), config)
    assert done == [] and task["split"] == "train"
    record = process_video(task)
    assert record["status"] == "ok", record["error"]
    # 130 frames at tau = T = 7: 18 outputs; one clip of 16 = one window (the rest is too short).
    assert [c["pairs"] for c in record["clips"]] == [16]
    assert record["clips"][0]["source_end"] == 16 * 7
    assert record["outputs"] == ["train/clip.mp4/shard-00000.parquet"]  # relative to the dataset
    table = pq.read_table(output_uris(record, str(tmp_path / "out"))[0])
    assert table.num_rows == 1
    row = table.to_pylist()[0]
    blurry = np.frombuffer(row["blurry"], np.uint8).reshape(row["frames"], row["height"], row["width"], 3)
    sharp = np.frombuffer(row["sharp"], np.uint8).reshape(blurry.shape)
    # The shard holds exactly Eq. 1 of the decoded source, as synthesize_clip makes it of decoded frames.
    decoded = read_frames(source, rgb=False)
    expected = list(synthesize_clip(decoded, ClipParams(tau=7, stride=7), outputs=16, to_rgb=frame_to_rgb))
    np.testing.assert_array_equal(blurry, np.stack([b for b, _ in expected]))
    np.testing.assert_array_equal(sharp, np.stack([s for _, s in expected]))
    saved = json.loads((tmp_path / "out" / "records" / "clip.mp4.json").read_text())
    assert saved["outputs"] == record["outputs"]
    # Done videos are not planned again; a changed object is.
    assert plan_tasks(str(tmp_path / "in"), str(tmp_path / "out"), config)[0] == []
    write_test_video(source, width=48, height=40, frames=140, fps=240, audio=False)
    assert len(plan_tasks(str(tmp_path / "in"), str(tmp_path / "out"), config)[0]) == 1


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"\x00" * 5000, "not a readable video"), (None, "too short for one training window")],
)
def test_bad_videos_are_skipped_with_a_reason(tmp_path: Path, content: bytes | None, reason: str) -> None:
    path = tmp_path / "in" / "bad.mp4"
    path.parent.mkdir()
    if content is None:
        write_test_video(path, width=32, height=32, frames=20, fps=240, audio=False)
    else:
        path.write_bytes(content)
    config = DataConfig.from_dict({"eval_fraction": 0, "scale": 1.0})
    (task,), _ = plan_tasks(str(tmp_path / "in"), str(tmp_path / "out"), config)
    record = process_video(task)
    assert record["status"] == "skipped"
    assert reason in record["error"] and str(path) in record["error"]
    assert not (tmp_path / "out" / "train").exists()


def test_shards_are_read_row_group_by_row_group_and_samples_name_their_window(tmp_path: Path) -> None:
    config = DataConfig.from_dict({**TWO_SHARDS, "shard_target_bytes": 1 << 30})
    (task,), _ = plan_tasks(str(_video_dir(tmp_path)), str(tmp_path / "out"), config)
    record = process_video(task)
    (shard,) = output_uris(record, str(tmp_path / "out"))
    assert pq.ParquetFile(shard).num_row_groups == 2  # one window per row group
    rows = list(_read_shard({"uri": shard}))
    assert [(r["clip"], r["start"]) for r in rows] == [(0, 0), (0, 8)]
    assert [window_key(r) for r in rows] == ["clip.mp4/clip-000/window-0", "clip.mp4/clip-000/window-8"]
    sampler = _CropSampler(frames=5, crop=16, flips=True, seed=0, samples=3)
    samples = list(sampler(rows[1]))
    assert [s["key"] for s in samples] == ["clip.mp4/clip-000/window-8"] * 3
    assert all(s["blurry"].shape == (5, 16, 16, 3) for s in samples)


def test_noise_augmentation_adds_noise_to_the_blurry_frames_only() -> None:
    rows = {"frames": 6, "height": 24, "width": 24, "video_id": "v.mp4", "clip": 0, "start": 0}
    flat = np.full((6, 24, 24, 3), 128, np.uint8)
    row = {**rows, "blurry": flat.tobytes(), "sharp": flat.tobytes()}
    clean = _CropSampler(frames=5, crop=16, flips=False, seed=0, samples=20)
    noisy = _CropSampler(frames=5, crop=16, flips=False, seed=0, samples=20, noise_sigma=6.0)
    assert all((s["blurry"] == 128).all() for s in clean(row))
    samples = list(noisy(row))
    assert all((s["sharp"] == 128).all() for s in samples)  # the target stays clean
    sigmas = [float(np.std(s["blurry"].astype(np.float32))) for s in samples]
    assert max(sigmas) > 2.0 and min(sigmas) < max(sigmas) and max(sigmas) < 6.5  # drawn per sample, up to 6


def test_sharp_fraction_gives_some_samples_their_sharp_frames_as_input() -> None:
    rows = {"frames": 6, "height": 24, "width": 24, "video_id": "v.mp4", "clip": 0, "start": 0}
    blurry, sharp = np.full((6, 24, 24, 3), 60, np.uint8), np.full((6, 24, 24, 3), 200, np.uint8)
    row = {**rows, "blurry": blurry.tobytes(), "sharp": sharp.tobytes()}
    sampler = _CropSampler(frames=5, crop=16, flips=False, seed=0, samples=400, sharp_fraction=0.25)
    samples = list(sampler(row))
    assert all((s["sharp"] == 200).all() for s in samples)
    from_sharp = [bool((s["blurry"] == 200).all()) for s in samples]
    assert all(from_sharp[i] or (samples[i]["blurry"] == 60).all() for i in range(len(samples)))
    assert 0.18 < sum(from_sharp) / len(samples) < 0.32


def test_sensor_noise_has_the_drawn_sigma() -> None:
    flat = np.full((4, 64, 64, 3), 100, np.uint8)
    rng = np.random.default_rng(1)
    noisy = add_gaussian_noise(flat, rng=rng, max_sigma=4.0)
    sigma = float(np.random.default_rng(1).uniform(0.0, 4.0))
    assert abs(float(np.std(noisy.astype(np.float32))) - sigma) < 0.05 * sigma + 0.05


@pytest.mark.parametrize("split", ["train", "eval"])
def test_a_video_that_fails_half_way_leaves_nothing_behind(tmp_path: Path, split: str) -> None:
    config = DataConfig.from_dict(TWO_SHARDS)
    out = tmp_path / "out"
    (task,), _ = plan_tasks(str(_video_dir(tmp_path)), str(out), config)
    task["split"] = split
    # The second object of the video cannot be written (a directory holds its name): the first
    # one was already written when the error comes.
    second = "train/clip.mp4/shard-00001.parquet" if split == "train" else "eval/clip.mp4/clip-000/sharp.mp4"
    (out / second).mkdir(parents=True)
    record = process_video(task)
    assert record["status"] == "failed" and record["outputs"] == [] and record["pairs"] == 0, record
    assert _files(out) == []  # the first object deleted again, no record: the next run retries it


def test_a_shard_is_visible_only_once_flushed_and_an_aborted_one_never(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    window = {"video_id": "v", "clip": 0, "start": 0, "tau": 7, "stride": 9, "frames": 3, "height": 5, "width": 4}
    rows = [
        {
            **window,
            "start": s,
            "blurry": rng.integers(0, 256, (3, 5, 4, 3), np.uint8),
            "sharp": rng.integers(0, 256, (3, 5, 4, 3), np.uint8),
        }
        for s in (0, 3)
    ]
    written: list[str] = []
    committer = _Committer(written=written)
    writer = _ShardWriter(str(tmp_path / "train" / "v"), 1 << 30, committer=committer)
    writer.add(rows[0])
    assert [p for p in _files(tmp_path) if not p.split("/")[-1].startswith(".")] == []  # staged only
    writer.abort()
    assert _files(tmp_path) == [] and written == [] and writer.shards == []
    for row in rows:
        writer.add(row)
    writer.flush()
    committer.wait()
    assert _files(tmp_path) == ["train/v/shard-00000.parquet"] and written == writer.shards
    read = list(_read_shard({"uri": writer.shards[0]}))
    assert [r["start"] for r in read] == [0, 3]  # one row group per window, in order
    table = pq.read_table(writer.shards[0])
    for got, row in zip(table.to_pylist(), rows, strict=True):
        assert got["blurry"] == row["blurry"].tobytes() and got["sharp"] == row["sharp"].tobytes()


def test_a_storage_error_is_retried_by_the_next_run(tmp_path: Path) -> None:
    source = _video_dir(tmp_path)
    config = DataConfig.from_dict(TWO_SHARDS)
    (task,), _ = plan_tasks(str(source), str(tmp_path / "out"), config)
    moved = tmp_path / "elsewhere.mp4"
    (source / "clip.mp4").rename(moved)  # gone between listing and reading (or S3 unreachable)
    record = process_video(task)
    assert record["status"] == "failed" and "cannot open" in record["error"], record
    moved.rename(source / "clip.mp4")
    (again,), done = plan_tasks(str(source), str(tmp_path / "out"), config)
    assert done == [] and process_video(again)["status"] == "ok"


def test_a_rerun_with_other_settings_redoes_the_video_and_drops_its_old_shards(tmp_path: Path) -> None:
    source, out = _video_dir(tmp_path), tmp_path / "out"
    config = DataConfig.from_dict(TWO_SHARDS)
    (task,), _ = plan_tasks(str(source), str(out), config)
    first = process_video(task)
    assert first["outputs"] == ["train/clip.mp4/shard-00000.parquet", "train/clip.mp4/shard-00001.parquet"]
    # Same settings, or only ones that do not shape a video's outputs: nothing to do.
    assert plan_tasks(str(source), str(out), config)[0] == []
    assert plan_tasks(str(source), str(out), DataConfig.from_dict({**TWO_SHARDS, "eval_fraction": 0.1}))[0] == []
    assert (
        plan_tasks(str(source), str(out), DataConfig.from_dict({**TWO_SHARDS, "shard_target_bytes": 1 << 30}))[0] == []
    )
    # One 16-pair window per shard instead of two 8-pair ones: redone, and the old second shard goes.
    bigger = DataConfig.from_dict({**TWO_SHARDS, "window_frames": 16, "min_window_frames": 16})
    (task,), done = plan_tasks(str(source), str(out), bigger)
    assert done == []
    second = process_video(task)
    assert second["status"] == "ok" and second["config_digest"] != first["config_digest"]
    assert _files(out) == ["records/clip.mp4.json", "train/clip.mp4/shard-00000.parquet"]
    assert pq.read_table(output_uris(second, str(out))[0]).to_pylist()[0]["frames"] == 16
    assert plan_tasks(str(source), str(out), bigger)[0] == []


def test_a_dataset_copied_elsewhere_reads_from_where_it_is_now(tmp_path: Path) -> None:
    import shutil

    source, out, moved = _video_dir(tmp_path), tmp_path / "out", tmp_path / "moved"
    config = DataConfig.from_dict(TWO_SHARDS)
    tasks, _ = plan_tasks(str(source), str(out), config)
    train = process_video(tasks[0])
    evaluation = process_video({**tasks[0], "split": "eval"} | {"video_id": "other.mp4"})
    write_manifest(str(source), str(out), config, [train, evaluation])
    shutil.copytree(out, moved)
    shutil.rmtree(out)  # a copy must not lean on the original, not even for reading
    shards = training_shards(str(moved))
    assert shards == [str(moved / f"train/clip.mp4/shard-0000{i}.parquet") for i in (0, 1)]
    assert all(pq.ParquetFile(uri).metadata.num_rows == 1 for uri in shards)
    clips = list(iterate_eval_clips(str(moved)))
    assert clips[0]["blurry"] == str(moved / "eval/other.mp4/clip-000/blurry.mp4")
    assert all(Path(c["blurry"]).is_file() and Path(c["sharp"]).is_file() for c in clips)
    # A format-1 manifest (absolute URIs of where the dataset was made) is still read as it was.
    old = json.loads((moved / "manifest.json").read_text())
    old["format"] = "deblur-synth-manifest/1"
    for record in old["videos"]:
        record["outputs"] = [str(moved / o) for o in record["outputs"]]
    (moved / "manifest.json").write_text(json.dumps(old))
    assert training_shards(str(moved)) == shards and list(iterate_eval_clips(str(moved))) == clips


def test_a_record_made_while_the_digest_counted_the_shard_size_is_still_done(tmp_path: Path) -> None:
    import hashlib

    source, out = _video_dir(tmp_path), tmp_path / "out"
    config = DataConfig.from_dict({k: v for k, v in TWO_SHARDS.items() if k != "shard_target_bytes"})
    (task,), _ = plan_tasks(str(source), str(out), config)
    # The digest as it was computed then: every setting but the listing and the split, 64 MB shards.
    values = {k: v for k, v in config.to_dict().items() if k not in ("patterns", "eval_fraction")}
    earlier = hashlib.sha256(json.dumps({**values, "shard_target_bytes": 64 << 20}, sort_keys=True).encode())
    assert process_video({**task, "config_digest": earlier.hexdigest()[:16]})["status"] == "ok"
    assert plan_tasks(str(source), str(out), config)[0] == []
    # Made with other shards then, it is redone: the digest of then named that size.
    values["shard_target_bytes"] = 1 << 30
    other = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]
    assert process_video({**task, "config_digest": other})["status"] == "ok"
    assert len(plan_tasks(str(source), str(out), config)[0]) == 1


def test_the_job_polls_ray_data_tasks_promptly_and_restores_ray_settings() -> None:
    """The 10 ms poll patches a private Ray Data constant: this fails when a Ray upgrade drops it."""
    import ray.data
    from ray.data._internal.execution import streaming_executor_state as executor_state

    context = ray.data.DataContext.get_current()
    before = (
        executor_state.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S,
        context.op_resource_reservation_enabled,
        context.downstream_capacity_backpressure_ratio,
    )
    assert isinstance(before[0], float) and before[0] > 0.01
    with pytest.raises(RuntimeError, match="a task failed"), _settings_for_one_operator():
        assert executor_state.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S == 0.01
        assert context.op_resource_reservation_enabled is False
        assert context.downstream_capacity_backpressure_ratio is None
        raise RuntimeError("a task failed")
    after = (
        executor_state.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S,
        context.op_resource_reservation_enabled,
        context.downstream_capacity_backpressure_ratio,
    )
    assert after == before


def test_listings_skip_the_staging_files_of_an_interrupted_write(tmp_path: Path) -> None:
    source = _video_dir(tmp_path)
    # What an interrupted `deblur corpus` leaves beside the finished videos (storage.staged_output).
    destination = source / "video_0001.mp4"
    with pytest.raises(RuntimeError), storage.staged_output(destination) as staged:
        raise RuntimeError
    staged.write_bytes(b"half a video")  # a process killed inside the block never cleans up
    assert staged.parent == source and staged.name.startswith(".video_0001.") and staged.suffix == ".mp4"
    storage.write_bytes(str(source / "sub" / ".hidden.mp4"), b"x")
    assert storage.list_files(str(source)) == [str(source / "clip.mp4")]
    tasks, _ = plan_tasks(str(source), str(tmp_path / "out"), DataConfig.from_dict(TWO_SHARDS))
    assert [t["video_id"] for t in tasks] == ["clip.mp4"]


@pytest.mark.parametrize("pix_fmt", ["yuv420p", "yuv444p"])
def test_decoded_yuv_frames_are_averaged_in_their_planes(tmp_path: Path, pix_fmt: str) -> None:
    """Plain averaging of decoded YUV sums the planes and converts once per exposure: Eq. 1 of the
    RGB frames up to rounding; sharp frames exactly; linear light still converts every frame."""
    # Moving mid-tone texture: colours inside the RGB gamut, where only rounding tells the two apart
    # (averaging clipped colours differs by design: the planes keep what clipping would cut).
    source = tmp_path / "v.mp4"
    y, x = np.mgrid[0:48, 0:64]
    with av.open(str(source), "w") as container:
        stream = container.add_stream("libx264", rate=240)
        stream.width, stream.height, stream.pix_fmt = 64, 48, pix_fmt
        for i in range(48):
            phase = (x + 2 * i) / 6.0
            rgb = np.stack([np.sin(phase), np.cos(phase + y / 9.0), np.sin(y / 7.0 - i / 5.0)], axis=-1)
            frame = av.VideoFrame.from_ndarray((128 + 60 * rgb).astype(np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    params = ClipParams(tau=9, stride=13)
    conversions = 0

    def counting_to_rgb(frame: Any) -> np.ndarray:
        nonlocal conversions
        conversions += 1
        return frame_to_rgb(frame)

    for linear_light in (False, True):
        conversions = 0
        reference = list(synthesize_clip(read_frames(source), params, linear_light=linear_light, scale=0.75))
        pairs = list(
            synthesize_clip(
                read_frames(source, rgb=False), params, linear_light=linear_light, scale=0.75, to_rgb=counting_to_rgb
            )
        )
        assert len(pairs) == len(reference) == 4
        # Planes: one conversion for the mean, one for the sharp frame; linear light: tau.
        assert conversions == len(pairs) * (params.tau if linear_light else 2)
        for (blurry, sharp), (blurry_rgb, sharp_rgb) in zip(pairs, reference, strict=True):
            np.testing.assert_array_equal(sharp, sharp_rgb)
            if linear_light:
                np.testing.assert_array_equal(blurry, blurry_rgb)
            else:
                difference = np.abs(blurry.astype(int) - blurry_rgb.astype(int))
                assert difference.max() <= 2 and difference.mean() < 0.6, (difference.mean(), difference.max())


def test_frames_between_exposures_may_go_undecoded_and_the_shards_are_eq1_of_every_frame(tmp_path: Path) -> None:
    # B-frames (libx264's default) and T > tau: the decoder is offered the frames between exposures.
    config = DataConfig.from_dict(
        {"taus": [7], "stride_min": 1.5, "stride_max": 2.0, "scale": 1.0, "clip_frames": 6, "window_frames": 6}
        | {"min_window_frames": 6, "eval_fraction": 0}
    )
    (task,), _ = plan_tasks(str(_video_dir(tmp_path, frames=200)), str(tmp_path / "out"), config)
    record = process_video(task)
    assert record["status"] == "ok", record["error"]
    assert len(record["clips"]) >= 2 and min(c["stride"] for c in record["clips"]) > 7
    assert record["frames_dropped"] > 0  # non-reference frames between exposures, never decoded
    rows = [row for uri in output_uris(record, str(tmp_path / "out")) for row in pq.read_table(uri).to_pylist()]
    assert len(rows) == len(record["clips"])
    for clip, row in zip(record["clips"], rows, strict=True):
        params = ClipParams(tau=clip["tau"], stride=clip["stride"])
        every_frame = itertools.islice(read_frames(task["uri"], rgb=False), clip["source_start"], None)
        expected = list(synthesize_clip(every_frame, params, outputs=clip["pairs"], to_rgb=frame_to_rgb))
        shape = (row["frames"], row["height"], row["width"], 3)
        np.testing.assert_array_equal(np.frombuffer(row["blurry"], np.uint8).reshape(shape), [b for b, _ in expected])
        np.testing.assert_array_equal(np.frombuffer(row["sharp"], np.uint8).reshape(shape), [s for _, s in expected])


def _two_shard_dataset(tmp_path: Path) -> Path:
    source, out = _video_dir(tmp_path), tmp_path / "out"
    config = DataConfig.from_dict(TWO_SHARDS)
    (task,), _ = plan_tasks(str(source), str(out), config)
    write_manifest(str(source), str(out), config, [process_video(task)])
    return out


def test_worker_batches_split_the_shards_between_workers_and_draw_batches_of_crops(tmp_path: Path) -> None:
    out = _two_shard_dataset(tmp_path)
    sampling = {"frames": 5, "crop": 16, "flips": True, "samples": 3}
    keys = []
    for rank in (0, 1):
        batches = worker_batches(str(out), batch_size=2, rank=rank, world_size=2, seed=[0, rank], **sampling)
        drawn = [next(batches) for _ in range(6)]
        batches.close()  # stops the reader thread
        assert all(b["blurry"].shape == (2, 5, 16, 16, 3) == b["sharp"].shape for b in drawn)
        keys.append({k for b in drawn for k in b["key"]})
    # Each worker reads its own shard, every pass: the two windows are split between them.
    assert keys == [{"clip.mp4/clip-000/window-0"}, {"clip.mp4/clip-000/window-8"}]


def test_worker_batches_raise_what_the_reader_thread_hit(tmp_path: Path) -> None:
    out = _two_shard_dataset(tmp_path)
    batches = worker_batches(str(out), batch_size=2, frames=9, crop=16, flips=False, samples=1)
    with pytest.raises(ValueError, match="window of 8 frames at 48x40 cannot give 9 frames"):
        next(batches)
