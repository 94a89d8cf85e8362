"""What the package declares is what it needs, and the base install stays small.

Read from the installed metadata (``pip install -e ".[test]"`` writes it from pyproject.toml), so a
stale install fails here too: reinstall after editing the dependencies.

- the base install runs ``deblur video`` and ``deblur --help``; moto is only in the ``local`` extra
  (the local S3 server), OpenVINO and ONNX only in ``int8`` (``--precision int8``), and ``test``
  brings both, since the tests need them;
- every third-party module that ``platform/deblur/**/*.py`` imports is declared, in the base or
  in an extra.
"""

from __future__ import annotations

import ast
import importlib.metadata
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import deblur

DIST = "deblur-platform"
SOURCE = Path(deblur.__file__).resolve().parent
BASE = "(base)"
EXTRA_ONLY = {"moto": {"local"}, "openvino": {"int8"}, "onnx": {"int8"}, "onnxruntime": {"int8"}}


def requirements_by_place() -> dict[str, list[Requirement]]:
    """BASE and each extra -> the requirements it lists directly, from the installed metadata."""
    metadata = importlib.metadata.metadata(DIST)
    extras = set(metadata.get_all("Provides-Extra") or [])
    direct: dict[str, list[Requirement]] = {BASE: [], **{extra: [] for extra in extras}}
    for line in metadata.get_all("Requires-Dist") or []:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            direct[BASE].append(requirement)
        for extra in extras:
            if requirement.marker is not None and requirement.marker.evaluate({"extra": extra}):
                direct[extra].append(requirement)
    return direct


def direct_places(name: str) -> set[str]:
    """Where ``name`` is required directly (not through a self-reference like ``test = [DIST[local]]``)."""
    wanted = canonicalize_name(name)
    return {
        place
        for place, requirements in requirements_by_place().items()
        if any(canonicalize_name(r.name) == wanted for r in requirements)
    }


def declared() -> dict[str, set[str]]:
    """Distribution name -> the places that bring it: BASE and/or extras, self-references resolved."""
    direct = requirements_by_place()

    def expand(place: str, seen: frozenset[str]) -> set[str]:
        names: set[str] = set()
        for requirement in direct[place]:
            if canonicalize_name(requirement.name) == canonicalize_name(DIST):
                for extra in requirement.extras - seen:
                    names |= expand(extra, seen | {extra})
            else:
                names.add(canonicalize_name(requirement.name))
        return names

    places: dict[str, set[str]] = {}
    for place in direct:
        for name in expand(place, frozenset({place})):
            places.setdefault(name, set()).add(place)
    return places


@pytest.mark.parametrize("name", sorted(EXTRA_ONLY))
def test_optional_backends_are_only_in_their_extra(name: str) -> None:
    assert direct_places(name) == EXTRA_ONLY[name], (
        f"{name} must be required only by the {sorted(EXTRA_ONLY[name])} extra (the base install runs without it), "
        f"not by {sorted(direct_places(name))}"
    )


def test_the_test_extra_brings_the_local_server_and_int8() -> None:
    places = declared()
    for name in EXTRA_ONLY:
        assert "test" in places.get(name, set()), f"the tests need {name}: the test extra must bring it"
        assert "all" in places.get(name, set()), f"the all extra must bring {name}"


@pytest.mark.parametrize("name", ["fastapi", "torch", "ray", "av", "numpy"])
def test_what_the_base_install_needs_is_in_the_base_requirements(name: str) -> None:
    assert BASE in declared().get(canonicalize_name(name), set()), f"{name} must be a base requirement"


def third_party_imports() -> dict[str, list[str]]:
    """Top-level module -> files of platform/deblur that import it (top-level or inside functions)."""
    found: dict[str, list[str]] = {}
    for path in sorted(SOURCE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != "deblur" and top not in sys.stdlib_module_names:
                    found.setdefault(top, []).append(str(path.relative_to(SOURCE)))
    return found


def test_every_third_party_import_is_declared() -> None:
    places = declared()
    owners = importlib.metadata.packages_distributions()
    imports = third_party_imports()
    assert {"torch", "av", "ray"} <= set(imports), "the import scan found too little"
    undeclared = []
    for module, files in sorted(imports.items()):
        distributions = {canonicalize_name(d) for d in owners.get(module, [])}
        if not distributions:
            undeclared.append(f"{module} (imported by {files[0]}): no installed distribution provides it")
        elif not distributions & set(places):
            undeclared.append(f"{module} (imported by {files[0]}): {sorted(distributions)} is not in pyproject.toml")
    assert not undeclared, "imports not declared as dependencies:\n" + "\n".join(undeclared)


# Runs the CLI with the extras' packages invisible, as in an install without them: the path finder
# does not find them (``importlib.util.find_spec`` answers None, ``import`` raises ModuleNotFoundError).
_WITHOUT_EXTRAS = textwrap.dedent(
    """
    import importlib.machinery, sys

    BLOCKED = {"moto", "openvino", "onnx", "onnxruntime"}

    class WithoutExtras(importlib.machinery.PathFinder):
        @classmethod
        def find_spec(cls, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                return None
            return super().find_spec(name, path, target)

    sys.meta_path[:] = [WithoutExtras if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
    assert WithoutExtras in sys.meta_path
    from deblur.cli import main

    try:
        code = main(sys.argv[1:])
    except SystemExit as stop:  # --help
        code = stop.code
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not loaded, loaded
    sys.exit(code)
    """
)


def _run_without_extras(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT_EXTRAS, *args], capture_output=True, text=True, timeout=300, check=False
    )


def test_deblur_help_and_video_run_without_the_extras(make_video, tmp_path: Path) -> None:
    shown = _run_without_extras("--help")
    assert shown.returncode == 0, shown.stderr
    assert "video" in shown.stdout

    source, output = make_video(width=48, height=32, frames=5), tmp_path / "out.mp4"
    ran = _run_without_extras("video", str(source), "-o", str(output), "-q")
    assert ran.returncode == 0, ran.stderr
    assert output.stat().st_size > 0


def test_without_moto_the_local_server_names_the_local_extra(monkeypatch, tmp_path: Path, capsys) -> None:
    from deblur import demo, local_s3
    from deblur.storage import ENDPOINT_ENV

    monkeypatch.setattr(local_s3, "server_available", lambda: False)
    with pytest.raises(local_s3.LocalS3UnavailableError, match=r"pip install 'deblur-platform\[local\]'"):
        local_s3.LocalS3Server().start()

    monkeypatch.delenv(ENDPOINT_ENV, raising=False)
    assert demo.main(["--out", str(tmp_path / "demo")]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "deblur-platform[local]" in line
    assert not (tmp_path / "demo").exists()
