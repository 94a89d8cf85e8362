"""A synthesized dataset: its settings (``DataConfig``), its layout in storage and its manifest.

``deblur synth`` (``deblur.data.synth_job``) writes, under OUT_PREFIX:

    train/<video_id>/shard-00000.parquet   training windows (train videos)
    eval/<video_id>/clip-000/{blurry,sharp}.mp4   whole clips, full size, lossless (eval videos)
    records/<video_id>.json                 the video's manifest entry, written last
    manifest.json                           every record plus the run's settings (driver, at the end)

Train and evaluation sets are split by source video (a stable hash of its key), never by frame.
Records name their outputs relative to OUT_PREFIX (``train/v/shard-00000.parquet``), so a dataset
copied elsewhere as a whole (``aws s3 sync``) reads from where it now is, not from where it was made.
Readers (``deblur.data.reader``, evaluation) use only what ``status == "ok"`` records name.
No Ray here.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any, ClassVar

from pydantic import Field, StrictInt, StrictStr, model_validator

from deblur import storage
from deblur.data.blur import SynthesisConfig
from deblur.settings import Number, Settings
from deblur.storage import VIDEO_PATTERNS

__all__ = [
    "MANIFEST_FORMAT",
    "DataConfig",
    "config_digest",
    "corpus_synthesis_defaults",
    "load_manifest",
    "output_uris",
    "read_corpus_manifest",
    "split_for",
    "video_id_for",
    "with_overrides",
    "write_manifest",
]

MANIFEST_FORMAT = "deblur-synth-manifest/2"
# Format 1 named outputs by absolute URIs; its datasets are still read (where they were made).
_READABLE_FORMATS = ("deblur-synth-manifest/1", MANIFEST_FORMAT)


class DataConfig(Settings):
    """Settings of one synthesis run (recorded in the manifest).

    Flat keys: the synthesis settings (taus, scale, linear_light, ...) sit beside the others in
    presets, ``--set``, ``from_dict`` and ``to_dict``; ``synthesis`` holds them as a ``SynthesisConfig``.
    """

    label: ClassVar[str] = "data"

    synthesis: SynthesisConfig = Field(default_factory=SynthesisConfig)
    seed: StrictInt = Field(0, ge=0)
    eval_fraction: Number = Field(0.2, ge=0, lt=1)  # of source videos; at least one when there are two or more
    window_frames: StrictInt = Field(16, ge=1)  # pairs per training row: room for 13-frame windows at random offsets
    min_window_frames: StrictInt = Field(13, ge=1)  # a clip's tail shorter than this is not kept for training
    # A shard is closed at the first window past this: one window per shard from about 480x270 up.
    # Small shards let a task upload one while it synthesizes the next (``shards._Committer``;
    # docs/data.md has the timings), and objects of about 12 MB still suit S3 (one PUT each).
    shard_target_bytes: StrictInt = Field(8 << 20, ge=1)
    patterns: tuple[StrictStr, ...] = VIDEO_PATTERNS

    @model_validator(mode="before")
    @classmethod
    def _nest_synthesis(cls, values: Any) -> Any:
        """Flat keys in: the synthesis settings among them go into ``synthesis``."""
        if not isinstance(values, dict):
            return values
        flat = {k: v for k, v in values.items() if k in SynthesisConfig.model_fields}
        nested = values.get("synthesis", {})
        if not flat or not isinstance(nested, dict | SynthesisConfig):
            return values
        if isinstance(nested, SynthesisConfig):
            nested = nested.to_dict()
        return {**{k: v for k, v in values.items() if k not in flat}, "synthesis": {**nested, **flat}}

    @model_validator(mode="after")
    def _windows(self) -> DataConfig:
        if self.min_window_frames > self.window_frames:
            raise ValueError("need 1 <= min_window_frames <= window_frames")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Flat: the synthesis settings, then the others (as manifests record them)."""
        return {**self.synthesis.to_dict(), **self.model_dump(exclude={"synthesis"})}


def with_overrides(config: DataConfig, overrides: dict[str, Any]) -> DataConfig:
    """``config`` with flat ``key=value`` overrides applied (unknown keys are an error)."""
    return DataConfig.from_dict({**config.to_dict(), **overrides})


def unit_hash(*parts: object) -> float:
    digest = hashlib.sha256("\x00".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_for(video_ids: list[str], *, eval_fraction: float, seed: int) -> dict[str, str]:
    """``{video_id: "train" | "eval"}``: a stable per-video hash, so adding videos never moves others."""
    scores = {v: unit_hash("split", seed, v) for v in video_ids}
    split = {v: "eval" if s < eval_fraction else "train" for v, s in scores.items()}
    if eval_fraction > 0 and len(video_ids) >= 2 and "eval" not in split.values():
        split[min(scores, key=scores.__getitem__)] = "eval"
    if len(video_ids) >= 2 and "train" not in split.values():
        split[max(scores, key=scores.__getitem__)] = "train"
    return split


def video_id_for(relative_key: str) -> str:
    return relative_key.replace("/", "--")


def config_digest(config: DataConfig) -> str:
    """A digest of the settings that decide a video's outputs: a record made with others is redone.

    Which files are listed (``patterns``), how new videos are split (``eval_fraction``; a video
    keeps its first split) and how windows are grouped into files (``shard_target_bytes``) do not
    change the windows an existing video produces, so they are left out.
    """
    return _digest_of(_shaping_settings(config))


def _shaping_settings(config: DataConfig) -> dict[str, Any]:
    ignored = ("patterns", "eval_fraction", "shard_target_bytes")
    return {k: v for k, v in config.to_dict().items() if k not in ignored}


def _digest_of(values: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def digests_of_done(config: DataConfig) -> set[str]:
    """The digests that make an existing record of these settings count as done.

    ``config_digest``, and the digest the same settings had while it still counted the shard size,
    with the default of then (64 MB): datasets made then are not redone for a change of grouping.
    """
    values = _shaping_settings(config)
    return {_digest_of(values), _digest_of({**values, "shard_target_bytes": 64 << 20})}


def eval_clip_objects(prefix: str) -> list[str]:
    return [storage.join_uri(prefix, f"{name}.mp4") for name in ("blurry", "sharp")]


def output_uris(record: dict[str, Any], prefix: str) -> list[str]:
    """The URIs of a record's ``outputs`` (shards, or evaluation clip prefixes) in the dataset at ``prefix``.

    Outputs are stored relative to the dataset; format 1 stored absolute URIs, taken as they are.
    """
    outputs = record.get("outputs", [])
    return [o if storage.is_s3(o) or o.startswith("/") else storage.join_uri(prefix, o) for o in outputs]


def record_objects(record: dict[str, Any], prefix: str) -> list[str]:
    """The objects a record's ``outputs`` name (a shard, or an evaluation clip's two videos)."""
    outputs = output_uris(record, prefix)
    if record.get("split") == "eval":
        return [uri for clip_prefix in outputs for uri in eval_clip_objects(clip_prefix)]
    return outputs


def read_corpus_manifest(input_prefix: str) -> dict[str, Any]:
    """The ``corpus.json`` that ``deblur corpus`` wrote beside its videos, or ``{}``."""
    uri = storage.join_uri(input_prefix, "corpus.json")
    if not storage.exists(uri):
        return {}
    try:
        return json.loads(storage.read_bytes(uri))
    except ValueError:
        return {}


def corpus_synthesis_defaults(input_prefix: str) -> dict[str, Any]:
    """The synthesis settings a rendered corpus asks for (``deblur.data.motion.REAL_SYNTHESIS``), or ``{}``."""
    return dict(read_corpus_manifest(input_prefix).get("synthesis", {}))


def write_manifest(
    input_prefix: str, output_prefix: str, config: DataConfig, records: list[dict[str, Any]]
) -> tuple[str, dict[str, Any]]:
    """Write ``OUT/manifest.json`` (every video's record and the run's settings): what readers trust."""
    records.sort(key=lambda r: r["video_id"])
    manifest = {
        "format": MANIFEST_FORMAT,
        "input": input_prefix,
        "output": output_prefix,
        "config": config.to_dict(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "summary": {status: sum(r["status"] == status for r in records) for status in ("ok", "skipped", "failed")}
        | {"pairs_train": sum(r["pairs"] for r in records if r["split"] == "train" and r["status"] == "ok")}
        | {"pairs_eval": sum(r["pairs"] for r in records if r["split"] == "eval" and r["status"] == "ok")},
        "videos": records,
    }
    manifest_uri = storage.join_uri(output_prefix, "manifest.json")
    storage.write_bytes(manifest_uri, json.dumps(manifest, indent=1).encode(), content_type="application/json")
    return manifest_uri, manifest


def load_manifest(prefix: str) -> dict[str, Any]:
    uri = storage.join_uri(prefix, "manifest.json")
    try:
        manifest = json.loads(storage.read_bytes(uri))
    except storage.StorageError as error:
        raise ValueError(f"{prefix}: no dataset here ({error}); run `deblur synth` first") from error
    if manifest.get("format") not in _READABLE_FORMATS:
        raise ValueError(f"{uri}: not a synthesis manifest (format {manifest.get('format')!r})")
    return manifest
