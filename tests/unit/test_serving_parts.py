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
from deblur.serving.actors import SESSION_ID
from deblur.serving.config import open_endpoint_warning, shown_source
from deblur.serving.wire import PushStats, issued_session, new_session_id
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


@pytest.mark.parametrize("kind", ["image/png", "image/jpeg"])
def test_a_body_that_is_no_image_is_a_422_without_object_reprs(kind: str) -> None:
    status, message = status_of(decode_frame, b"not an image", kind, width=None, height=None, config=SMALL)
    assert status == 422 and message.startswith(f"not a readable {kind} image")
    assert "object at 0x" not in message and "BytesIO" not in message


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
        ('{"type": "stop"}', 422, "type must be settings, finish or resume"),
        ('{"type": "resume"}', 422, "a resume message is"),
        ('{"type": "resume", "received": -1}', 422, "received must be a non-negative integer, got -1"),
        ('{"received": 3}', 422, "a resume message is"),
        ('{"fromat": "raw"}', 422, "unknown key(s) ['fromat']"),
    ],
)
def test_bad_websocket_control_messages_get_a_4xx(text: str, status: int, words: str) -> None:
    got, message = status_of(parse_control, text)
    assert got == status and words in message


def test_good_websocket_control_messages_parse() -> None:
    assert parse_control('{"format": "raw", "width": 40, "height": 30}') == {"format": "raw", "width": 40, "height": 30}
    assert parse_control('{"type": "finish"}') == {"type": "finish"}
    assert parse_control('{"type": "resume", "received": 0}') == {"type": "resume", "received": 0}


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


def test_session_ids_tell_an_ended_session_from_a_made_up_one() -> None:
    secret, other = b"s" * 16, b"o" * 16
    issued = new_session_id(secret)
    assert SESSION_ID.fullmatch(issued) and issued_session(issued, secret)
    assert not issued_session(issued, other)  # another application's session
    assert not issued_session(issued[:32] + "0" * 8, secret) and not issued_session("0" * 40, secret)
    assert not issued_session(issued[:32], secret)


def test_an_open_endpoint_is_named_at_start_up(monkeypatch) -> None:
    config = ServingConfig()
    monkeypatch.delenv(config.api_key_env, raising=False)
    warning = open_endpoint_warning("0.0.0.0", config)
    assert warning and "no API key" in warning and "0.0.0.0" in warning and "$DEBLUR_API_KEY" in warning
    assert open_endpoint_warning(None, config)  # where the host cannot be read: said all the same
    assert open_endpoint_warning("127.0.0.1", config) is None
    monkeypatch.setenv(config.api_key_env, "k")
    assert open_endpoint_warning("0.0.0.0", config) is None


def test_responses_show_a_checkpoints_name_not_the_servers_path() -> None:
    assert shown_source("/srv/models/weights/strcnn_dtb_m1.safetensors") == "strcnn_dtb_m1.safetensors"
    assert shown_source("s3://bucket/models/x.safetensors") == "s3://bucket/models/x.safetensors"


def test_frames_a_close_returns_count_without_a_latency() -> None:
    stats = PushStats()
    stats.add(0.25, 1)
    stats.add(None, 1)  # the last m frames of a close
    summary = stats.summary()
    assert summary["frames_total"] == 2 and summary["push_latency_ms"] == {"p50": 250.0, "p99": 250.0, "count": 1}
