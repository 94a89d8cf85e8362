"""The storage layer against a real S3 server over HTTP (boto3 and pyarrow), and local paths."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deblur import storage
from deblur.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from deblur.inference import deblur_file
from deblur.video import probe_video
from tiny import tiny_model


def test_boto3_and_pyarrow_see_the_same_objects(s3_bucket: str) -> None:
    storage.write_bytes(f"{s3_bucket}/a/one.bin", b"1" * 10)
    storage.write_bytes(f"{s3_bucket}/a/b/two.mp4", b"2" * 20)
    storage.write_bytes(f"{s3_bucket}/other/three.mp4", b"3")
    # pyarrow (used by Ray Data) through its own S3 client, not boto3
    filesystem, path = storage.filesystem_for(f"{s3_bucket}/a")
    from pyarrow import fs

    infos = filesystem.get_file_info(fs.FileSelector(path, recursive=True))
    assert sorted(i.path for i in infos if i.type == fs.FileType.File) == [f"{path}/b/two.mp4", f"{path}/one.bin"]
    assert storage.list_files(f"{s3_bucket}/a") == [f"{s3_bucket}/a/b/two.mp4", f"{s3_bucket}/a/one.bin"]
    assert storage.list_files(f"{s3_bucket}/a", patterns=("*.mp4",)) == [f"{s3_bucket}/a/b/two.mp4"]
    with storage.open_input(f"{s3_bucket}/a/b/two.mp4") as f:
        f.seek(5)
        assert f.read() == b"2" * 15
    assert storage.exists(f"{s3_bucket}/a/one.bin")
    assert not storage.exists(f"{s3_bucket}/a/nope.bin")


def test_staged_output_leaves_nothing_on_failure(s3_bucket: str, tmp_path: Path) -> None:
    for target in (f"{s3_bucket}/out/video.mp4", str(tmp_path / "out" / "video.mp4")):
        with pytest.raises(RuntimeError, match="boom"), storage.staged_output(target, suffix=".mp4") as staged:
            staged.write_bytes(b"half")
            raise RuntimeError("boom")
        assert not storage.exists(target)
        with storage.staged_output(target, suffix=".mp4") as staged:
            staged.write_bytes(b"whole")
        assert storage.read_bytes(target) == b"whole"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["video.mp4"]


def test_staged_stream_writes_whole_objects_or_nothing(s3_bucket: str, tmp_path: Path) -> None:
    # Training shards are staged in memory for S3: one PUT up to 16 MB, a multipart upload above.
    large = bytes(range(256)) * ((17 << 20) // 256)
    for target in (f"{s3_bucket}/train/shard.parquet", str(tmp_path / "train" / "shard.parquet")):
        with pytest.raises(RuntimeError, match="boom"), storage.staged_stream(target) as sink:
            sink.write(b"half")
            raise RuntimeError("boom")
        assert not storage.exists(target)
        for content in (b"whole", large):
            with storage.staged_stream(target) as sink:
                sink.write(content[:1000])
                sink.write(content[1000:])
            assert storage.read_bytes(target) == content
    assert [p.name for p in (tmp_path / "train").iterdir()] == ["shard.parquet"]


def test_checkpoint_and_video_from_s3(s3_bucket: str, make_video, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = tiny_model()
    uri = f"{s3_bucket}/checkpoints/tiny.safetensors"
    save_checkpoint(model, uri)
    loaded = load_model(uri)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name])

    source = make_video("clip.mp4", frames=4, audio=False)
    storage.upload_file(source, f"{s3_bucket}/in/clip.mp4")
    with storage.local_copy(f"{s3_bucket}/in/clip.mp4") as local:
        result = deblur_file(local, tmp_path / "out.mp4", loaded)
    assert result.frames == 4
    assert probe_video(tmp_path / "out.mp4").frames == 4


def test_errors_name_the_uri(s3_bucket: str) -> None:
    with pytest.raises(CheckpointError, match=f"{s3_bucket}/missing.safetensors"):
        load_checkpoint(f"{s3_bucket}/missing.safetensors")
    with pytest.raises(storage.StorageError, match="s3://no-such-bucket-here"):
        storage.list_files("s3://no-such-bucket-here/x")
    with pytest.raises(storage.StorageError, match="not an s3://bucket/key"):
        storage.split_s3_uri("s3:///key")


def test_uri_helpers() -> None:
    assert storage.join_uri("s3://b/p/", "x", "y.mp4") == "s3://b/p/x/y.mp4"
    assert storage.relative_key("s3://b/p/x/y.mp4", "s3://b/p") == "x/y.mp4"
    with pytest.raises(storage.StorageError, match="not under"):
        storage.relative_key("s3://b/q/y.mp4", "s3://b/p")


def test_absolute_leaves_s3_uris_and_anchors_local_paths_where_the_driver_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ray workers run in another directory: a relative dataset path once sent every training
    # worker of `deblur bench train` looking for a manifest that was not there.
    monkeypatch.chdir(tmp_path)
    assert storage.absolute("s3://bucket/a/../b") == "s3://bucket/a/../b"
    assert storage.absolute("data/raw") == str(tmp_path / "data" / "raw")
    assert storage.absolute(tmp_path / "x") == str(tmp_path / "x")
