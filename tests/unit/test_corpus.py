"""The synthetic high-speed corpus: deterministic, sub-pixel camera motion, moving objects, noise."""

from __future__ import annotations

import json
import math
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch

from deblur.cli import main
from deblur.data.corpus import CorpusConfig, _plan_scene, _sample, generate_corpus, render_video
from deblur.data.motion import _camera_to_world, _object_window, _pixel_grid
from deblur.evaluate import frame_psnr
from deblur.video import probe_video, read_frames

SMALL = {"width": 64, "height": 48, "seconds": 0.1}


def frames_of(config: CorpusConfig, *, seed: int = 0, index: int = 0) -> np.ndarray:
    return np.stack(list(render_video(config, seed=seed, index=index)[0]))


def test_same_seed_same_video_other_seed_other_video() -> None:
    config = CorpusConfig(**SMALL)
    a = frames_of(config, seed=1)
    assert a.shape == (24, 48, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, frames_of(config, seed=1))
    assert not np.array_equal(a, frames_of(config, seed=2))
    assert not np.array_equal(a, frames_of(config, seed=1, index=1))


def test_camera_moves_every_pixel_less_than_the_limit_per_frame() -> None:
    w, h = 640, 360
    corners = torch.tensor([[-w / 2, -h / 2], [w / 2, -h / 2], [-w / 2, h / 2], [w / 2, h / 2], [0.0, 0.0]])
    for pan in (0.0, 0.85):
        config = CorpusConfig(width=w, height=h, seconds=0.5, max_camera_motion=0.9, camera_pan=pan, subframes=1)
        for index in range(3):
            _, camera, _, _ = _plan_scene(np.random.default_rng([5, index]), config)
            world = torch.stack([_camera_to_world(corners, camera, n) for n in range(config.frames)])
            steps = (world[1:] - world[:-1]).norm(dim=-1)  # (frames - 1, 5)
            assert float(steps.max()) <= 0.9 + 1e-4
            assert float(steps.max()) > 0.5  # and it does move: the budget is used
            assert np.ptp(camera.angle) > 0 and np.ptp(camera.log_zoom) > 0  # rotation and zoom too
            if pan:
                # A steady pan: the centre moves at close to the budget in every frame, not only at
                # the peaks of the shake (whose speed averages about a third of its peak).
                assert float(steps[:, 4].min()) >= (2 * pan - 1) * 0.9 - 1e-4
                assert float(steps[:, 4].mean()) > 0.6


def test_camera_pan_is_a_share() -> None:
    with pytest.raises(ValueError, match="camera_pan"):
        CorpusConfig(camera_pan=1.5)


def test_objects_move_on_their_own() -> None:
    still = CorpusConfig(**SMALL, max_camera_motion=0.0, min_objects=0, max_objects=0)
    frames = frames_of(still)
    assert np.array_equal(frames[0], frames[-1])  # no camera motion, no objects: a still photo
    objects_only = CorpusConfig(**SMALL, max_camera_motion=0.0, min_objects=3, max_objects=3)
    frames = frames_of(objects_only).astype(int)
    changed = np.abs(frames[-1] - frames[0]).max(axis=-1) > 8
    # Objects moved: part of the frame changed, but not all of it (the background stood still).
    assert 0.005 < changed.mean() < 0.9
    # Sub-pixel to a few pixels per frame: consecutive frames differ far less than distant ones.
    near = np.mean([np.abs(b - a).mean() for a, b in pairwise(frames[:6])])
    assert near < np.abs(frames[-1] - frames[0]).mean()


def test_noise_is_optional_and_has_the_requested_strength() -> None:
    clean = frames_of(CorpusConfig(**SMALL)).astype(float)
    noisy = frames_of(CorpusConfig(**SMALL, noise_sigma=4.0)).astype(float)
    residual = (noisy - clean)[(clean > 20) & (clean < 235)]  # away from clipping
    assert 3.6 < residual.std() < 4.4


def test_config_is_strict() -> None:
    with pytest.raises(ValueError, match=r"unknown corpus setting\(s\) \['fsp'\]"):
        CorpusConfig.from_dict({"fsp": 30})
    with pytest.raises(ValueError, match="even"):
        CorpusConfig(width=63)


def test_cli_writes_videos_and_a_description(tmp_path: Path) -> None:
    out = tmp_path / "raw"
    args = ["--out", str(out), "--videos", "2", "--seconds", "0.1", "--seed", "4", "--set", "width=64"]
    code = main(["corpus", *args, "--set", "height=48", "-q"])
    assert code == 0
    videos = sorted(out.glob("*.mp4"))
    assert [v.name for v in videos] == ["video_0000.mp4", "video_0001.mp4"]
    info = probe_video(videos[0])
    assert (info.width, info.height, info.fps) == (64, 48, 240)
    assert len(list(read_frames(videos[0]))) == 24
    description = json.loads((out / "corpus.json").read_text())
    assert description["synthetic"] is True and description["seed"] == 4
    assert len(description["videos"]) == 2 and description["videos"][0]["background"].endswith((".png", ".jpg"))


def test_no_point_on_screen_moves_more_than_one_pixel_between_renders() -> None:
    """Paper Sec. 3: motion "ideally less than 1 pixel" between exposures, objects included.

    Each frame averages ``subframes`` renders (its exposure), so the bound holds between renders.
    """
    config = CorpusConfig(seconds=0.5, min_objects=3, max_objects=3)
    k = config.exposure_subframes
    assert k == 3  # 0.8 + 2.0 px per frame
    fastest = []
    for index in range(3):
        _, camera, objects, _ = _plan_scene(np.random.default_rng([7, index]), config)
        assert len(camera.tx) == config.frames * k
        for obj in objects:
            half = obj.texture.shape[-1] / 2  # the texture's corners bound its blob
            local = torch.tensor([[-half, -half], [half, -half], [-half, half], [half, half], [0.0, 0.0]])
            screen = []
            for n in range(config.frames * k):
                m = obj.motion
                c, s = math.cos(m.angle[n]), math.sin(m.angle[n])
                world = torch.stack(
                    [
                        obj.centre[0] + m.tx[n] + c * local[:, 0] - s * local[:, 1],
                        obj.centre[1] + m.ty[n] + s * local[:, 0] + c * local[:, 1],
                    ],
                    dim=-1,
                )
                # Invert the camera: world = R(angle) (screen / zoom) + t.
                cc, cs = math.cos(camera.angle[n]), math.sin(camera.angle[n])
                dx, dy = world[:, 0] - camera.tx[n], world[:, 1] - camera.ty[n]
                zoom = math.exp(camera.log_zoom[n])
                screen.append(torch.stack([cc * dx + cs * dy, -cs * dx + cc * dy], dim=-1) * zoom)
            steps = torch.stack(screen).diff(dim=0).norm(dim=-1)
            fastest.append(float(steps.max()))
    assert max(fastest) <= (config.max_camera_motion + config.max_object_motion) / k + 1e-3 <= 1.0
    assert max(fastest) * k > 1.0  # objects do move faster than a pixel per frame


def test_objects_are_drawn_wherever_they_are_seen() -> None:
    """The renderer composites each object only inside its window: the window must hold every
    pixel the object's full-frame layer touches, or the object would be clipped."""
    config = CorpusConfig(width=96, height=64, seconds=0.3, max_camera_motion=6.0, max_object_motion=12.0)
    grid = _pixel_grid(config.height, config.width)
    seen = hidden = 0
    for index in range(4):
        _, camera, objects, _ = _plan_scene(np.random.default_rng([3, index]), config)
        for n in range(0, len(camera.tx), 5):
            world = _camera_to_world(grid, camera, n)
            for obj in objects:
                m = obj.motion
                ox, oy = obj.centre[0] + m.tx[n], obj.centre[1] + m.ty[n]
                c, s = math.cos(m.angle[n]), math.sin(m.angle[n])
                dx, dy = world[..., 0] - ox, world[..., 1] - oy
                layer = _sample(obj.texture, torch.stack([c * dx + s * dy, -s * dx + c * dy], dim=-1))
                touched = layer.abs().amax(dim=0) > 0
                window = _object_window((ox, oy), obj.texture.shape[-1], camera, n, config.height, config.width)
                if window is None:
                    assert not touched.any()
                    hidden += 1
                    continue
                inside = torch.zeros_like(touched)
                inside[window] = True
                assert not (touched & ~inside).any(), f"video {index}, render {n}: object drawn outside its window"
                seen += int(touched.any())
    assert seen > 20 and hidden > 0  # both cases were exercised


def test_a_frame_integrates_its_exposure() -> None:
    """A frame is the mean of its renders: with one render per frame the same scene is sharper."""
    moving = {**SMALL, "max_camera_motion": 0.0, "max_object_motion": 6.0, "min_objects": 3, "max_objects": 3}
    smeared = frames_of(CorpusConfig(**moving)).astype(float)
    sharp = frames_of(CorpusConfig(**moving, subframes=1)).astype(float)
    assert CorpusConfig(**moving).exposure_subframes == 6

    def detail(frames: np.ndarray) -> float:  # mean absolute horizontal and vertical gradient
        return float(np.abs(np.diff(frames, axis=1)).mean() + np.abs(np.diff(frames, axis=2)).mean())

    assert detail(smeared) < detail(sharp)
    with pytest.raises(ValueError, match="subframes"):
        CorpusConfig(subframes=-1)


def test_an_interrupted_corpus_resumes_and_other_settings_start_over(tmp_path: Path, monkeypatch) -> None:
    config = CorpusConfig(**SMALL)
    out = str(tmp_path / "raw")
    first = generate_corpus(out, videos=2, seed=3, config=config)
    manifest = json.loads((tmp_path / "raw" / "corpus.json").read_text())
    assert manifest["complete"] is True and [v["video"] for v in manifest["videos"]] == first
    stamps = {uri: Path(uri).stat().st_mtime_ns for uri in first}
    # As if the run had been cut off after two of three videos: the two are kept, the third made.
    manifest["complete"] = False
    (tmp_path / "raw" / "corpus.json").write_text(json.dumps(manifest))
    # The same directory spelled another way (here relative to the working directory) is the same corpus.
    monkeypatch.chdir(tmp_path)
    written = generate_corpus("raw/", videos=3, seed=3, config=config)
    written = [str(tmp_path / uri) for uri in written]
    assert written[:2] == first
    assert {uri: Path(uri).stat().st_mtime_ns for uri in first} == stamps
    assert len(written) == 3 and json.loads((tmp_path / "raw" / "corpus.json").read_text())["complete"] is True
    # The third video is video 2 of seed 3, as a fresh run makes it. Compared through the codec's
    # loss, not bit for bit: one CI run decoded a few pixels of two encodes of the same frames
    # differently (never reproduced here), and the claim is about which video is made.
    resumed = np.stack(list(read_frames(written[2])))
    fresh = generate_corpus(str(tmp_path / "fresh"), videos=3, seed=3, config=config)
    assert json.loads((tmp_path / "fresh" / "corpus.json").read_text())["videos"][2] == {
        **json.loads((tmp_path / "raw" / "corpus.json").read_text())["videos"][2],
        "video": fresh[2],
    }
    for index in range(3):
        rendered = frames_of(config, seed=3, index=index)
        worst = min(frame_psnr(a, b) for a, b in zip(resumed, rendered, strict=True))
        assert worst > 25.0 if index == 2 else worst < 15.0, (index, worst)
    # Another seed is another corpus: nothing is reused.
    generate_corpus(out, videos=2, seed=4, config=config)
    assert all(Path(uri).stat().st_mtime_ns != stamps[uri] for uri in first)
