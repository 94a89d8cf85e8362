"""One storage layer for every data path: local paths and ``s3://bucket/key`` URIs.

Endpoint, region and credentials come from the standard AWS mechanisms (environment, shared
config/credentials files, instance roles; resolved by botocore) plus one explicit override,
``DEBLUR_S3_ENDPOINT`` (e.g. ``http://127.0.0.1:9000``), so the same code runs against AWS S3 and a
local S3-compatible server. pyarrow's S3 client ignores ``AWS_ENDPOINT_URL`` (see NOTES), so the
endpoint is always passed to it explicitly; ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` are
honoured as fallbacks for both clients.

No other module builds S3 clients: they ask this one for a boto3 client, a pyarrow filesystem, or
a higher-level operation (list, open, upload, atomic write).
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import io
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

ENDPOINT_ENV = "DEBLUR_S3_ENDPOINT"
# What counts as a video when a prefix is listed (by file name; the content is checked on decode).
VIDEO_PATTERNS = ("*.mp4", "*.mov", "*.mkv", "*.avi", "*.webm", "*.m4v", "*.nut")
_READ_BUFFER = 8 << 20  # unbuffered pyarrow S3 reads run at about half speed (NOTES)
_MULTIPART_THRESHOLD = 16 << 20


class StorageError(RuntimeError):
    """A URI that cannot be read or written, with the URI in the message."""


def is_s3(uri: str | os.PathLike[str]) -> bool:
    return str(uri).startswith("s3://")


def absolute(uri: str | os.PathLike[str]) -> str:
    """An s3:// URI as it is; a local path made absolute.

    Ray workers do not run in the driver's directory, so a relative path handed to them would
    name another place (or nothing).
    """
    return str(uri) if is_s3(uri) else str(Path(uri).resolve())


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise StorageError(f"{uri!r} is not an s3://bucket/key URI")
    return parsed.netloc, parsed.path.lstrip("/")


def join_uri(base: str | os.PathLike[str], *parts: str) -> str:
    """Join path parts onto a local path or an s3:// URI."""
    base = str(base)
    if is_s3(base):
        pieces = [base.rstrip("/")] + [p.strip("/") for p in parts if p.strip("/")]
        return "/".join(pieces)
    return str(Path(base, *parts))


def relative_key(uri: str, prefix: str) -> str:
    """The part of ``uri`` below ``prefix`` (both local or both s3://)."""
    uri, prefix = str(uri), str(prefix).rstrip("/")
    if is_s3(uri) != is_s3(prefix):
        raise StorageError(f"{uri!r} and {prefix!r} are not on the same storage")
    if not is_s3(uri):
        return Path(uri).resolve().relative_to(Path(prefix).resolve()).as_posix()
    if not uri.startswith(prefix + "/"):
        raise StorageError(f"{uri!r} is not under {prefix!r}")
    return uri[len(prefix) + 1 :]


@dataclass(frozen=True)
class S3Settings:
    """Where S3 is. ``endpoint_url`` None means AWS itself (region-derived endpoint)."""

    endpoint_url: str | None = None
    region: str = "us-east-1"

    @classmethod
    def from_env(cls) -> S3Settings:
        endpoint = (
            os.environ.get(ENDPOINT_ENV) or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        )
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        if endpoint and "://" not in endpoint:
            raise StorageError(f"{ENDPOINT_ENV}={endpoint!r} must be a URL such as http://127.0.0.1:9000")
        return cls(endpoint_url=endpoint or None, region=region)


@functools.lru_cache(maxsize=8)
def _boto3_client(settings: S3Settings) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        signature_version="s3v4",
        # Local S3-compatible servers have no virtual-host DNS; AWS accepts path style too.
        s3={"addressing_style": "path" if settings.endpoint_url else "auto"},
        # "adaptive" backs off on throttling (503 SlowDown) as well as retrying 5xx.
        retries={"max_attempts": 10, "mode": "adaptive"},
        connect_timeout=10,
        read_timeout=120,
    )
    return boto3.session.Session().client(
        "s3", endpoint_url=settings.endpoint_url, region_name=settings.region, config=config
    )


def s3_client() -> Any:
    """A boto3 S3 client for the current settings (cached per settings, thread-safe for calls)."""
    return _boto3_client(S3Settings.from_env())


# Credential sources whose keys do not expire; pyarrow gets these passed explicitly. Anything else
# (instance roles, IRSA web identity, SSO, assumed roles) hands out temporary keys that a frozen
# copy would outlive: pyarrow then resolves them itself through the AWS SDK's default chain, which
# refreshes them, so a days-long training run does not fail at a checkpoint upload.
_STATIC_CREDENTIALS = {"env", "explicit", "shared-credentials-file", "config-file"}


def _resolve_credentials() -> tuple[str | None, str | None, str | None]:
    import boto3

    credentials = boto3.session.Session().get_credentials()
    if credentials is None or getattr(credentials, "method", "env") not in _STATIC_CREDENTIALS:
        return None, None, None
    frozen = credentials.get_frozen_credentials()
    return frozen.access_key, frozen.secret_key, frozen.token


def pyarrow_s3(settings: S3Settings | None = None) -> Any:
    """A ``pyarrow.fs.S3FileSystem`` for the same endpoint and credentials boto3 uses."""
    from pyarrow import fs

    settings = settings or S3Settings.from_env()
    kwargs: dict[str, Any] = {"region": settings.region, "retry_strategy": fs.AwsStandardS3RetryStrategy(10)}
    access, secret, token = _resolve_credentials()
    if access and secret:
        kwargs.update(access_key=access, secret_key=secret, session_token=token)
    if settings.endpoint_url:
        parsed = urlparse(settings.endpoint_url)
        kwargs.update(endpoint_override=parsed.netloc, scheme=parsed.scheme)
    return fs.S3FileSystem(**kwargs)


def filesystem_for(uri: str | os.PathLike[str]) -> tuple[Any, str]:
    """``(pyarrow filesystem, path inside it)`` for a URI: what Ray Data's ``filesystem=`` wants."""
    from pyarrow import fs

    uri = str(uri)
    if is_s3(uri):
        bucket, key = split_s3_uri(uri)
        return pyarrow_s3(), f"{bucket}/{key}".rstrip("/")
    return fs.LocalFileSystem(), str(Path(uri).resolve())


def to_uri(filesystem_path: str, like: str) -> str:
    """Turn a path returned by a pyarrow filesystem back into a URI of the same kind as ``like``."""
    return f"s3://{filesystem_path}" if is_s3(like) else filesystem_path


def list_files(prefix: str | os.PathLike[str], *, patterns: tuple[str, ...] = ("*",)) -> list[str]:
    """Every object/file under ``prefix`` whose base name matches one of ``patterns``, sorted.

    Zero-byte "directory" markers that S3 tools leave behind are skipped, and so are local staging
    files (``.NAME.XXXXXXXX.partial.EXT``, see ``staged_output``, ``write_bytes``, ``write_video``):
    a listing of an interrupted run's output must not offer its half-written files as inputs.
    """
    prefix = str(prefix)
    found: list[str] = []
    if is_s3(prefix):
        bucket, key = split_s3_uri(prefix)
        key = key.rstrip("/") + "/" if key else ""
        paginator = s3_client().get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=bucket, Prefix=key):
                for item in page.get("Contents", []):
                    if item["Key"].endswith("/"):
                        continue
                    found.append(f"s3://{bucket}/{item['Key']}")
        except Exception as error:  # botocore raises several unrelated types
            raise StorageError(f"cannot list {prefix}: {error}") from error
    else:
        root = Path(prefix)
        if not root.is_dir():
            raise StorageError(f"{prefix}: no such directory")
        found = [str(p) for p in root.rglob("*") if p.is_file() and not _is_staging_name(p.name)]
    names = [u for u in found if any(fnmatch.fnmatch(u.rsplit("/", 1)[-1], pat) for pat in patterns)]
    return sorted(names)


def _is_staging_name(name: str) -> bool:
    # Every local staging file is hidden (leading dot) and has ".partial" in its name.
    return name.startswith(".") or ".partial" in name


def exists(uri: str | os.PathLike[str]) -> bool:
    uri = str(uri)
    if not is_s3(uri):
        return Path(uri).exists()
    from botocore.exceptions import ClientError

    bucket, key = split_s3_uri(uri)
    try:
        s3_client().head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise StorageError(f"cannot check {uri}: {error}") from error


def object_version(uri: str) -> str:
    """Size and ETag (S3) or size and mtime (local): work keyed on this is redone only when it changes."""
    if is_s3(uri):
        bucket, key = split_s3_uri(uri)
        try:
            head = s3_client().head_object(Bucket=bucket, Key=key)
        except Exception as error:
            raise StorageError(f"cannot read {uri}: {error}") from error
        return f"{head['ContentLength']}:{head['ETag'].strip(chr(34))}"
    try:
        stat = Path(uri).stat()
    except OSError as error:
        raise StorageError(f"cannot read {uri}: {error.strerror or error}") from error
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def open_input(uri: str | os.PathLike[str]) -> IO[bytes]:
    """A seekable, buffered binary file (PyAV needs seeking for MP4s whose index is at the end)."""
    uri = str(uri)
    if not is_s3(uri):
        try:
            return open(uri, "rb")
        except OSError as error:
            raise StorageError(f"cannot open {uri}: {error.strerror or error}") from error
    filesystem, path = filesystem_for(uri)
    try:
        raw = filesystem.open_input_file(path)
    except (OSError, FileNotFoundError) as error:
        raise StorageError(f"cannot open {uri}: {error}") from error
    return io.BufferedReader(raw, buffer_size=_READ_BUFFER)  # type: ignore[arg-type]


def read_bytes(uri: str | os.PathLike[str]) -> bytes:
    with open_input(uri) as f:
        return f.read()


def write_bytes(uri: str | os.PathLike[str], data: bytes, *, content_type: str | None = None) -> None:
    """Write a whole object atomically: readers see the old content or the new, never a part."""
    uri = str(uri)
    if is_s3(uri):
        bucket, key = split_s3_uri(uri)
        extra = {"ContentType": content_type} if content_type else {}
        try:
            s3_client().put_object(Bucket=bucket, Key=key, Body=data, **extra)
        except Exception as error:
            raise StorageError(f"cannot write {uri}: {error}") from error
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _transfer_config() -> Any:
    """Multipart above 16 MB, in 16 MB parts, for every upload."""
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=_MULTIPART_THRESHOLD, multipart_chunksize=_MULTIPART_THRESHOLD)


def upload_file(local_path: str | os.PathLike[str], uri: str | os.PathLike[str]) -> None:
    """Copy a local file to ``uri``; multipart for large files. S3 objects appear only when complete."""
    uri = str(uri)
    if is_s3(uri):
        bucket, key = split_s3_uri(uri)
        try:
            s3_client().upload_file(str(local_path), bucket, key, Config=_transfer_config())
        except Exception as error:
            raise StorageError(f"cannot upload to {uri}: {error}") from error
        return
    dest = Path(uri)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        shutil.copyfile(local_path, tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def commit_file(local_path: str | os.PathLike[str], uri: str, *, staging_uri: str) -> None:
    """Upload ``local_path`` to ``staging_uri`` (multipart when large), then make it ``uri``.

    S3 has no rename: the staged object is copied server-side onto the final key and deleted,
    so ``uri`` only ever holds a complete file, and an upload cut off half-way leaves at most a
    staging key (which the caller cleans up), never a partial object at ``uri``.
    """
    if not is_s3(uri):
        upload_file(local_path, uri)  # local: written beside the target and renamed
        return
    bucket, key = split_s3_uri(uri)
    staging_bucket, staging_key = split_s3_uri(staging_uri)
    upload_file(local_path, staging_uri)
    try:
        s3_client().copy({"Bucket": staging_bucket, "Key": staging_key}, bucket, key)
    except Exception as error:
        raise StorageError(f"cannot write {uri}: {error}") from error
    finally:
        with contextlib.suppress(Exception):
            s3_client().delete_object(Bucket=staging_bucket, Key=staging_key)


def delete_prefix(prefix: str) -> int:
    """Delete every object under ``prefix`` (and abort unfinished multipart uploads there)."""
    prefix = str(prefix)
    if not is_s3(prefix):
        root = Path(prefix)
        if root.is_dir():
            shutil.rmtree(root)
        return 0
    bucket, key = split_s3_uri(prefix)
    key = key.rstrip("/") + "/"
    client = s3_client()
    count = 0
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
            for item in page.get("Contents", []):
                client.delete_object(Bucket=bucket, Key=item["Key"])
                count += 1
        for upload in client.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", []):
            client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    except Exception as error:
        raise StorageError(f"cannot clean up {prefix}: {error}") from error
    return count


def download_file(uri: str | os.PathLike[str], local_path: str | os.PathLike[str]) -> None:
    uri = str(uri)
    if not is_s3(uri):
        shutil.copyfile(uri, local_path)
        return
    bucket, key = split_s3_uri(uri)
    try:
        s3_client().download_file(bucket, key, str(local_path))
    except Exception as error:
        raise StorageError(f"cannot download {uri}: {error}") from error


def delete(uri: str | os.PathLike[str]) -> None:
    uri = str(uri)
    if is_s3(uri):
        bucket, key = split_s3_uri(uri)
        s3_client().delete_object(Bucket=bucket, Key=key)
    else:
        Path(uri).unlink(missing_ok=True)


@contextlib.contextmanager
def staged_output(uri: str | os.PathLike[str], *, suffix: str = "") -> Iterator[Path]:
    """Yield a local temporary path; on success its content becomes ``uri``, on error nothing does.

    For s3:// the object is uploaded only after the block finished, so a failure never leaves a
    half-written object at ``uri``; locally the file is renamed into place.
    """
    uri = str(uri)
    if is_s3(uri):
        with tempfile.TemporaryDirectory(prefix="deblur-stage-") as tmpdir:
            path = Path(tmpdir) / f"staged{suffix}"
            yield path
            upload_file(path, uri)
        return
    dest = Path(uri)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.stem}.{uuid.uuid4().hex[:8]}.partial{suffix or dest.suffix}")
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def staged_stream(uri: str | os.PathLike[str]) -> Iterator[Any]:
    """Yield a pyarrow output stream; on success what was written becomes ``uri``, on error nothing.

    For s3:// the bytes are held in memory and uploaded whole when the block ends (one PUT up to
    16 MB, multipart above): an object is complete or absent. Staging on local disk instead cost
    page-cache writeback stalls on every object, and a second copy through the disk. Locally the
    stream is a file beside ``uri``, renamed into place. For outputs of tens of megabytes (training
    shards); a writer that needs a path uses ``staged_output``.
    """
    import pyarrow as pa

    uri = str(uri)
    if is_s3(uri):
        sink = pa.BufferOutputStream()
        yield sink
        _upload_buffer(sink.getvalue(), uri)
        return
    with staged_output(uri) as path, pa.OSFile(str(path), "wb") as sink:
        yield sink


def _upload_buffer(buffer: Any, uri: str) -> None:
    import pyarrow as pa

    bucket, key = split_s3_uri(uri)
    try:
        # A reader over the buffer, not a copy of it: s3transfer reads, seeks and retries on it.
        s3_client().upload_fileobj(pa.BufferReader(buffer), bucket, key, Config=_transfer_config())
    except Exception as error:
        raise StorageError(f"cannot upload to {uri}: {error}") from error


@contextlib.contextmanager
def local_copy(uri: str | os.PathLike[str], *, suffix: str = "") -> Iterator[Path]:
    """A local path with the content of ``uri`` (the file itself when it is local)."""
    uri = str(uri)
    if not is_s3(uri):
        yield Path(uri)
        return
    with tempfile.TemporaryDirectory(prefix="deblur-fetch-") as tmpdir:
        path = Path(tmpdir) / f"input{suffix or Path(split_s3_uri(uri)[1]).suffix}"
        download_file(uri, path)
        yield path


def ensure_bucket(uri: str) -> None:
    """Create the bucket of an s3:// URI if it does not exist (for local servers and tests)."""
    from botocore.exceptions import ClientError

    bucket, _ = split_s3_uri(uri)
    client = s3_client()
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError:
        client.create_bucket(Bucket=bucket)
