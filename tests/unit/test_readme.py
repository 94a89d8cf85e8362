"""The README and docs/ tell the truth about the command line, and the README stays short.

Every ``deblur SUBCOMMAND ...`` shown in a code block (or an inline code span) of README.md and
docs/*.md must be a subcommand of ``deblur --help``, its ``--options`` must be options of that
subcommand, and values shown for an option or positional with fixed choices
(``--precision fp32|int8``, ``bench data|perf``) must be among them. The parser is the real one
(``deblur.cli.build_parser``), so renaming an option without the docs fails here.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from deblur.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))

# About 10 KB of text for users, plus room for the model card that scripts/bundle_model.py writes
# between the bundle:model markers.
README_LIMIT_BYTES = 10 * 1024

# Blocks that commands rewrite in the README: the markers must stay exactly as they are.
README_MARKERS = ("bundle:model", "bench:perf")

_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
_COMMAND = re.compile(r"^\s*(?:\$\s+)?deblur\s+(?P<rest>.*)$")
_INLINE = re.compile(r"(?<!`)`deblur\s+([^`]+)`")
_LINK = re.compile(r"\]\((?P<path>[^)#\s]*)(?:#(?P<anchor>[^)\s]+))?\)")


def _strip_comment(line: str) -> str:
    return re.split(r"\s#\s", line, maxsplit=1)[0].rstrip()


def shown_commands(text: str) -> list[str]:
    """The argument text after ``deblur`` of every command the Markdown shows.

    In fenced blocks a command starts at a line beginning with ``deblur`` and goes on over lines
    that end in a backslash or are indented continuations (``[--option ...]``, ``--option``).
    """
    commands: list[str] = []
    for block in _FENCE.findall(text):
        current: str | None = None
        for raw in block.splitlines():
            line = _strip_comment(raw)
            match = _COMMAND.match(line)
            if match:
                if current is not None:
                    commands.append(current)
                current = match["rest"]
            elif current is not None and re.match(r"^\s+[\[-]", line):
                current += " " + line.strip()
            else:
                if current is not None:
                    commands.append(current)
                current = None
            if current is not None and current.endswith("\\"):
                current = current[:-1]
        if current is not None:
            commands.append(current)
    outside = _FENCE.sub("", text)
    commands += [m.group(1) for m in _INLINE.finditer(outside)]
    return [c.replace("\\", " ") for c in commands]


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def problems(command: str, subparsers: dict[str, argparse.ArgumentParser]) -> list[str]:
    """What is wrong with ``deblur COMMAND`` as the docs show it (empty: nothing)."""
    tokens = re.sub(r"[\[\]]", " ", command).split()
    if not tokens:
        return ["`deblur` without a subcommand"]
    name, args = tokens[0], tokens[1:]
    if name not in subparsers:
        return [f"`deblur {name}` is not a subcommand of `deblur --help` ({', '.join(sorted(subparsers))})"]
    sub = subparsers[name]
    found: list[str] = []
    options = sub._option_string_actions
    positionals = [a for a in sub._actions if not a.option_strings]
    position = 0
    i = 0
    while i < len(args):
        token = args[i]
        if token.startswith("--"):
            option = token.split("=", 1)[0]
            action = options.get(option)
            if action is None:
                found.append(f"`deblur {name}` has no option {option}")
            elif action.choices is not None and i + 1 < len(args) and not args[i + 1].startswith("-"):
                wrong = [v for v in args[i + 1].split("|") if v not in action.choices]
                if wrong:
                    found.append(f"`deblur {name} {option}` does not take {', '.join(wrong)}")
            i += 1 if action is None or action.nargs == 0 else 2
            continue
        if not token.startswith("-") and position < len(positionals):
            action = positionals[position]
            if action.choices is not None:
                wrong = [v for v in token.split("|") if v not in action.choices]
                if wrong:
                    found.append(f"`deblur {name}` does not take {', '.join(wrong)} (choices: {list(action.choices)})")
            if action.nargs not in ("+", "*"):
                position += 1
        i += 1
    return found


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.name)
def test_every_deblur_command_shown_exists_in_deblur_help(path: Path) -> None:
    subparsers = _subcommands(build_parser())
    commands = shown_commands(path.read_text())
    if path == README:
        assert len(commands) >= 10, "the README's command block was not found"
    wrong = [
        f"{problem}  (shown: deblur {command})" for command in commands for problem in problems(command, subparsers)
    ]
    assert not wrong, f"{path.name} shows commands that `deblur --help` does not have:\n" + "\n".join(wrong)


def test_the_check_catches_a_command_that_does_not_exist() -> None:
    subparsers = _subcommands(build_parser())
    text = "```bash\ndeblur video IN.mp4 -o OUT.mp4\ndeblur sharpen IN.mp4\ndeblur batch a b --actorz 2\n```\n"
    shown = shown_commands(text)
    assert shown == ["video IN.mp4 -o OUT.mp4", "sharpen IN.mp4", "batch a b --actorz 2"]
    assert problems(shown[0], subparsers) == []
    assert problems(shown[1], subparsers) and problems(shown[2], subparsers)
    assert problems("video IN -o OUT --precision fp64", subparsers)
    assert problems("bench data|fast", subparsers)


def test_readme_is_at_most_10_kib() -> None:
    size = len(README.read_bytes())
    assert size <= README_LIMIT_BYTES, (
        f"README.md is {size} bytes, over the limit of {README_LIMIT_BYTES:,} bytes (about 10 KB, the model card "
        "included): move measurement narrative to docs/performance.md or docs/data.md"
    )


def test_readme_opens_with_the_demo_and_test_commands() -> None:
    first_block = _FENCE.search(README.read_text())
    assert first_block is not None
    lines = [line.split("#")[0].strip() for line in first_block.group(1).splitlines() if line.strip()]
    assert lines[:2] == ["scripts/dev.sh demo", "scripts/dev.sh test"]


@pytest.mark.parametrize("name", README_MARKERS)
def test_readme_keeps_the_blocks_that_commands_rewrite(name: str) -> None:
    text = README.read_text()
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    assert text.count(begin) == 1 and text.count(end) == 1, f"README.md must keep {begin} ... {end} exactly once"
    assert text.index(begin) < text.index(end)


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.name)
def test_relative_links_point_at_files_and_headings_that_exist(path: Path) -> None:
    text = path.read_text()
    broken = []
    for match in _LINK.finditer(text):
        target, anchor = match["path"], match["anchor"]
        if re.match(r"^[a-z]+:", target):
            continue  # http:, https:, mailto:
        file = (path.parent / target).resolve() if target else path
        if not file.exists():
            broken.append(f"{target}: no such file")
            continue
        if anchor and file.suffix == ".md":
            headings = {_slug(h) for h in re.findall(r"^#+\s+(.*)$", file.read_text(), re.MULTILINE)}
            if anchor not in headings:
                broken.append(f"{target}#{anchor}: no such heading")
    assert not broken, f"{path.name} has broken links:\n" + "\n".join(broken)
