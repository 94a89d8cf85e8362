"""Corpora rendered from a folder of photographs: bad photographs, the split by photograph, mixed motion."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deblur.cli import main
from deblur.data.corpus import _SKIMAGE_POOL, MOTION_KINDS, CorpusConfig, _plan_scene, generate_corpus, render_video
from deblur.data.dataset import DataConfig
from deblur.data.photos import PhotoError, load_photos, photo_split
from deblur.data.synth_job import plan_tasks


def _photo_dir(root: Path, count: int = 6, size: tuple[int, int] = (200, 160)) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"photo_{i}.png")
    return root


def test_a_folder_without_images_is_a_one_line_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no pictures here")
    with pytest.raises(PhotoError, match=r"empty: no photographs found"):
        load_photos(str(tmp_path / "empty"), eval_fraction=0.1, seed=0)


def test_unreadable_and_tiny_photographs_are_skipped_and_named(tmp_path: Path) -> None:
    folder = _photo_dir(tmp_path / "photos", count=2)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(folder / "tiny.png")
    photos, skipped = load_photos(str(folder), eval_fraction=0.0, seed=0)
    assert sorted(p.name for p in photos) == ["photo_0.png", "photo_1.png"]
    reasons = {s["photo"]: s["reason"] for s in skipped}
    assert reasons["broken.jpg"].startswith("cannot be read as an image")
    assert reasons["tiny.png"].startswith("too small (60x40")


def test_a_folder_of_only_bad_photographs_fails_and_writes_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"garbage")
    out = tmp_path / "raw"
    code = main(["corpus", "--out", str(out), "--videos", "1", "--photos", str(folder), "-q"])
    assert code == 1
    assert not out.exists()


def test_photographs_split_stably_by_name() -> None:
    names = [f"p{i}.jpg" for i in range(400)]
    splits = [photo_split(n, eval_fraction=0.2, seed=0) for n in names]
    assert 0.14 < splits.count("eval") / len(names) < 0.26
    assert splits == [photo_split(n, eval_fraction=0.2, seed=0) for n in names]


def test_held_out_videos_use_only_held_out_photographs(tmp_path: Path) -> None:
    folder = _photo_dir(tmp_path / "photos", count=10)
    config = CorpusConfig(width=64, height=48, seconds=0.05, motion="mixed", photos=str(folder), eval_photos=0.4)
    generate_corpus(str(tmp_path / "raw"), videos=8, seed=1, config=config)
    manifest = json.loads((tmp_path / "raw" / "corpus.json").read_text())
    split_of = manifest["photos"]
    assert set(split_of.values()) == {"train", "eval"}
    assert {v["split"] for v in manifest["videos"]} == {"train", "eval"}
    for video in manifest["videos"]:
        used = [video["background"], *video["objects"]]
        assert {split_of[name] for name in used} == {video["split"]}, video


def test_synthesis_keeps_the_corpus_split(tmp_path: Path) -> None:
    folder = _photo_dir(tmp_path / "photos", count=10)
    config = CorpusConfig(width=64, height=48, seconds=0.05, motion="mixed", photos=str(folder), eval_photos=0.4)
    generate_corpus(str(tmp_path / "raw"), videos=8, seed=1, config=config)
    corpus = {
        v["video"].rsplit("/", 1)[-1]: v["split"]
        for v in json.loads((tmp_path / "raw" / "corpus.json").read_text())["videos"]
    }
    # eval_fraction=0 would put every video in training if the corpus were not read.
    tasks, _ = plan_tasks(str(tmp_path / "raw"), str(tmp_path / "data"), DataConfig.from_dict({"eval_fraction": 0}))
    assert {t["video_id"]: t["split"] for t in tasks} == corpus
    assert all("camera_px_per_frame" in t["motion"] for t in tasks)


def test_mixed_motion_draws_every_kind_with_static_shots_still() -> None:
    config = CorpusConfig(width=64, height=48, seconds=0.05, motion="mixed")
    kinds = {}
    for index in range(60):
        _, camera, objects, description = _plan_scene(np.random.default_rng([3, index]), config, _SKIMAGE_POOL)
        kinds[description["motion"]] = kinds.get(description["motion"], 0) + 1
        if description["motion"] == "static":
            assert np.ptp(camera.tx) == 0 and np.ptp(camera.angle) == 0
            assert all(np.ptp(o.motion.tx) == 0 for o in objects)
    assert set(kinds) == set(MOTION_KINDS)


def test_a_static_shot_renders_identical_frames() -> None:
    config = CorpusConfig(width=64, height=48, seconds=0.05, motion="mixed")
    index = next(
        i
        for i in range(100)
        if _plan_scene(np.random.default_rng([2, i]), config, _SKIMAGE_POOL)[3]["motion"] == "static"
    )
    frames = list(render_video(config, seed=2, index=index)[0])
    assert all(np.array_equal(frames[0], f) for f in frames[1:])


def test_the_corpus_records_its_motion_distribution_and_plots_it(tmp_path: Path) -> None:
    config = CorpusConfig(width=64, height=48, seconds=0.05, motion="mixed")
    generate_corpus(str(tmp_path / "raw"), videos=6, seed=0, config=config)
    manifest = json.loads((tmp_path / "raw" / "corpus.json").read_text())
    summary = manifest["motion"]
    assert sum(summary["videos_per_kind"].values()) == 6
    assert abs(sum(summary["camera_blur_share"]) - 1.0) < 1e-3
    assert manifest["synthesis"]["linear_light"] is True and manifest["synthesis"]["degrade"] is True
    assert (tmp_path / "raw" / "corpus_motion.png").read_bytes()[:4] == b"\x89PNG"
