"""Data pipeline pieces that need no cluster: the split, the crops, the config, one video."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from deblur.data import DataConfig, plan_tasks, process_video, sample_training_crop, split_for
from deblur.synthesis import ClipParams, synthesize_clip
from deblur.video import read_frames
from media import write_test_video


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
    for _ in range(50):
        b, s = sample_training_crop(code, code + 1, rng=rng, frames=13, crop=32)
        assert b.shape == s.shape == (13, 32, 32, 3) and b.dtype == np.uint8
        np.testing.assert_array_equal(s, b + 1)  # blurry and sharp cropped identically
        assert len(np.unique(b[..., 1][:, :, 0])) == 1 or len(np.unique(b[..., 1][:, 0, :])) == 1
        # one spatial location for every frame: the y/x codes are identical across frames
        assert (b[..., 1:] == b[:1, ..., 1:]).all()
        # consecutive frames
        assert list(b[:, 0, 0, 0] // 10) == list(range(b[0, 0, 0, 0] // 10, b[0, 0, 0, 0] // 10 + 13))
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
    table = pq.read_table(record["outputs"][0])
    assert table.num_rows == 1
    row = table.to_pylist()[0]
    blurry = np.frombuffer(row["blurry"], np.uint8).reshape(row["frames"], row["height"], row["width"], 3)
    sharp = np.frombuffer(row["sharp"], np.uint8).reshape(blurry.shape)
    # The shard holds exactly Eq. 1 of the decoded source.
    expected = list(synthesize_clip(read_frames(source), ClipParams(tau=7, stride=7), outputs=16))
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
