"""Regenerate the ``serveConfigV2`` block of infra/k8s/rayservice.yaml from serve/config.yaml.

    python infra/k8s/render_rayservice.py           # rewrite the block in place
    python infra/k8s/render_rayservice.py --check   # exit 1 if the block differs (CI)

serve/config.yaml (what ``serve run`` / ``serve deploy`` read) is the one source of the Serve
applications; the RayService carries a verbatim copy as a YAML block scalar. Only that block is
rewritten: the rest of the manifest, comments included, is left as it is.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVE_CONFIG = ROOT / "serve" / "config.yaml"
RAYSERVICE = ROOT / "infra" / "k8s" / "rayservice.yaml"
_KEY = re.compile(r"^(?P<indent> *)serveConfigV2: \|\s*$")


def _indent_of(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def render(manifest: str, config: str) -> str:
    """``manifest`` with its ``serveConfigV2: |`` block replaced by ``config``."""
    lines = manifest.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if _KEY.match(line)]
    if len(starts) != 1:
        raise ValueError(f"expected one 'serveConfigV2: |' line in the manifest, found {len(starts)}")
    start = starts[0]
    indent = _indent_of(lines[start])
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or _indent_of(lines[end]) > indent):
        end += 1
    while end > start + 1 and not lines[end - 1].strip():  # blank lines after the block stay
        end -= 1

    body = config.strip("\n").splitlines()
    first = next((line for line in body if line.strip()), "")
    if not first or first[0] == " ":
        # A block scalar takes its indentation from its first line: an indented (or no) first
        # line would silently cut or shift the copy.
        raise ValueError(f"{SERVE_CONFIG.name} must be non-empty and start at column 0")
    pad = " " * (indent + 2)
    block = [f"{pad}{line}\n" if line.strip() else "\n" for line in body]
    return "".join(lines[: start + 1] + block + lines[end:])


def _check_round_trip(rendered: str, config: str) -> None:
    """The manifest's serveConfigV2 must parse back to exactly the config's text."""
    import yaml

    value = yaml.safe_load(rendered)["spec"]["serveConfigV2"]
    if value.strip("\n") != config.strip("\n"):
        raise ValueError("serveConfigV2 would not read back as serve/config.yaml (tabs? odd indentation?)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if rayservice.yaml is out of date")
    args = parser.parse_args(argv)
    if not SERVE_CONFIG.is_file():
        print(f"{SERVE_CONFIG.relative_to(ROOT)}: no such file; nothing to render from", file=sys.stderr)
        return 2
    config = SERVE_CONFIG.read_text()
    manifest = RAYSERVICE.read_text()
    try:
        rendered = render(manifest, config)
        _check_round_trip(rendered, config)
    except ValueError as error:
        print(f"render_rayservice: {error}", file=sys.stderr)
        return 2
    if rendered == manifest:
        print(f"{RAYSERVICE.relative_to(ROOT)}: serveConfigV2 matches {SERVE_CONFIG.relative_to(ROOT)}")
        return 0
    if args.check:
        print(
            f"{RAYSERVICE.relative_to(ROOT)}: serveConfigV2 differs from {SERVE_CONFIG.relative_to(ROOT)}; "
            "run: python infra/k8s/render_rayservice.py",
            file=sys.stderr,
        )
        return 1
    RAYSERVICE.write_text(rendered)
    print(f"{RAYSERVICE.relative_to(ROOT)}: serveConfigV2 rewritten from {SERVE_CONFIG.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
