"""The endpoint's plain parts, without a cluster: frames on the wire, WebSocket control messages,
video limits, the settings and their agreement with serve/config.yaml."""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from deblur.serving import ApiError, ServingConfig, check_video_limits, decode_frame, parse_control
from deblur.video import VideoInfo

ROOT = Path(__file__).resolve().parents[2]
SMALL = ServingConfig(max_width=320, max_height=240, max_frames=10)


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, with no pixel data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def status_of(call: object, *args: object, **kwargs: object) -> tuple[int, str]:
    with pytest.raises(ApiError) as error:
        call(*args, **kwargs)  # type: ignore[operator]
    return error.value.status, error.value.message


def test_an_image_header_claiming_a_giant_size_is_a_422_not_a_crash() -> None:
    # 20000 x 20000 trips PIL's decompression-bomb guard before any size check of ours.
    status, message = status_of(
        decode_frame, png_declaring(20_000, 20_000), "image/png", width=None, height=None, config=SMALL
    )
    assert status == 422 and "too large" in message and "320x240" in message
    status, message = status_of(
        decode_frame, png_declaring(4000, 3000), "image/png", width=None, height=None, config=SMALL
    )
    assert status == 422 and "4000x3000 exceeds the limit 320x240" in message


def test_frames_within_the_limits_decode() -> None:
    frame = np.arange(24 * 16 * 3, dtype=np.uint8).reshape(16, 24, 3)
    png = io.BytesIO()
    Image.fromarray(frame).save(png, format="PNG")
    decoded = decode_frame(png.getvalue(), "image/png", width=None, height=None, config=SMALL)
    np.testing.assert_array_equal(decoded, frame)
    raw = decode_frame(frame.tobytes(), "application/octet-stream", width=24, height=16, config=SMALL)
    np.testing.assert_array_equal(raw, frame)


@pytest.mark.parametrize(
    ("text", "status", "words"),
    [
        ("not json", 400, "must be JSON"),
        ("[1, 2]", 400, "JSON object, got list"),
        ('"finish"', 400, "JSON object, got str"),
        ('{"width": "abc"}', 422, "width must be a positive integer, got 'abc'"),
        ('{"height": 0}', 422, "height must be a positive integer, got 0"),
        ('{"width": true}', 422, "width must be a positive integer, got True"),
        ('{"width": 2.5}', 422, "width must be a positive integer"),
        ('{"format": "jpeg"}', 422, "raw or png, got 'jpeg'"),
        ('{"type": "stop"}', 422, "type must be settings or finish"),
        ('{"fromat": "raw"}', 422, "unknown key(s) ['fromat']"),
    ],
)
def test_bad_websocket_control_messages_get_a_4xx(text: str, status: int, words: str) -> None:
    got, message = status_of(parse_control, text)
    assert got == status and words in message


def test_good_websocket_control_messages_parse() -> None:
    assert parse_control('{"format": "raw", "width": 40, "height": 30}') == {"format": "raw", "width": 40, "height": 30}
    assert parse_control('{"type": "finish"}') == {"type": "finish"}


def test_video_limits_name_the_video() -> None:
    info = VideoInfo(
        name="v.mp4",
        width=320,
        height=240,
        fps=Fraction(25),
        time_base=Fraction(1, 25),
        frames=10,
        duration=0.4,
        rotation=0,
        codec="h264",
        pix_fmt="yuv420p",
    )
    check_video_limits(info, SMALL, name="s3://b/v.mp4")  # at the limits: fine
    status, message = status_of(check_video_limits, replace(info, width=400, height=300), SMALL, name="s3://b/v.mp4")
    assert status == 422 and message.startswith("s3://b/v.mp4: ") and "400x300" in message
    status, message = status_of(check_video_limits, replace(info, frames=11), SMALL, name="s3://b/v.mp4")
    assert status == 422 and "11 frames exceeds the limit of 10" in message
    check_video_limits(replace(info, frames=None), SMALL, name="v.mkv")  # undeclared: counted while decoding


def test_settings_are_checked() -> None:
    assert ServingConfig.from_dict({"precision": "int8", "max_sessions": 3}).precision == "int8"
    with pytest.raises(ValueError, match="precision: unknown 'int4'"):
        ServingConfig.from_dict({"precision": "int4"})
    for bad in (0, -1, True, 2.5):
        with pytest.raises(ValueError, match="max_sessions"):
            ServingConfig.from_dict({"max_sessions": bad})
    with pytest.raises(ValueError, match="must be positive"):
        ServingConfig.from_dict({"session_start_timeout_s": 0})
    with pytest.raises(ValueError, match="unknown serving setting"):
        ServingConfig.from_dict({"precison": "int8"})


def test_serve_config_yaml_states_every_default() -> None:
    """serve/config.yaml (and so infra/k8s/rayservice.yaml, rendered from it) lists every setting at its default."""
    (app,) = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())["applications"]
    args = app["args"]
    defaults = ServingConfig().to_dict()
    defaults["allowed_prefixes"] = list(defaults["allowed_prefixes"])
    assert sorted(args) == sorted(defaults)
    assert args == defaults
    assert ServingConfig.from_dict(args) == ServingConfig()
