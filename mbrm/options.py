"""``mbrm options``: every configuration key with its full dotted path, default and help.

The help of a key is the comment it carries in its config file: the comment lines
right above it (joined into one line) or the comment after it on the same line.
Keys of a config group are printed under the group's name (``planner.horizon``), as
they are written on the command line; the choices of each group come first.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_KEY = re.compile(r"^(\s*)([A-Za-z_][\w.]*)\s*:(.*)$")
_CHOICE = re.compile(r"^\s*-\s*(?:override\s+)?([\w/]+)\s*:\s*([^#\s]+)\s*(?:#\s*(.*))?$")


@dataclass(frozen=True)
class Option:
    """One configurable key of one config file."""

    path: str  # e.g. planner.horizon (or "task=" for a group choice)
    default: str
    help: str
    source: str  # the config file, relative to the configs folder


def _split_comment(text: str) -> tuple[str, str]:
    """``value  # comment`` -> (value, comment), with ``#`` inside quotes kept."""
    quote = None
    for i, ch in enumerate(text):
        if ch in "\"'":
            quote = None if quote == ch else (quote or ch)
        elif ch == "#" and quote is None and (i == 0 or text[i - 1].isspace()):
            return text[:i].strip(), text[i + 1 :].strip()
    return text.strip(), ""


def _description(lines: list[str]) -> tuple[str, int]:
    """The file's description and the index of the first line after it: the comment
    block at the top when a blank line ends it, else its first sentence."""
    top = 0
    while top < len(lines) and lines[top].strip().startswith("#"):
        top += 1
    if 0 < top < len(lines) and not lines[top].strip():
        return " ".join(line.strip().lstrip("#").strip() for line in lines[:top]), top
    parts: list[str] = []
    i = 0
    while i < len(lines) and lines[i].strip().startswith("#"):
        parts.append(lines[i].strip().lstrip("#").strip())
        i += 1
        if parts[-1].endswith((".", ":")):
            break
    return " ".join(parts), i


def file_options(path: Path, root: Path) -> tuple[str, list[Option]]:
    """The description and the options of one config file."""
    rel = path.relative_to(root).as_posix()
    group = "" if "/" not in rel else rel.rsplit("/", 1)[0].replace("/", ".")
    lines = path.read_text().splitlines()
    description, start = _description(lines)
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing mappings
    comment: list[str] = []
    out: list[Option] = []
    in_defaults = False
    for line in lines[start:]:
        s = line.strip()
        if not s:
            comment = []
            continue
        if s.startswith("#"):
            comment.append(s.lstrip("#").strip())
            continue
        choice = _CHOICE.match(line)
        if in_defaults and choice:
            name, value, inline = choice.groups()
            if name != "hydra/launcher" or "override" in line:
                key = name.replace("/", ".")
                out.append(Option(f"{key}=", value, inline or " ".join(comment), rel))
            comment = []
            continue
        m = _KEY.match(line)
        if m is None:  # a list item or a continuation line
            comment = []
            continue
        indent, key, rest = len(m.group(1)), m.group(2), m.group(3)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        value, inline = _split_comment(rest)
        in_defaults = key == "defaults" and not stack
        if in_defaults:
            comment = []
            continue
        prefix = ".".join([*([group] if group else []), *(k for _, k in stack)])
        dotted = f"{prefix}.{key}" if prefix else key
        help_text = " ".join([*comment, inline]).strip() if inline or comment else ""
        if value == "":
            stack.append((indent, key))
            if help_text:  # a commented mapping: print it as a heading
                out.append(Option(dotted, "", help_text, rel))
        else:
            out.append(Option(dotted, value, help_text, rel))
        comment = []
    return description, out


# Folders of ``configs/`` that hold inputs of other commands, not run settings (the
# example test suites of ``mbrm certify``).
NOT_SETTINGS = ("suites",)


def all_options(root: Path) -> Iterator[tuple[str, str, list[Option]]]:
    """(file, description, options) for every config file under ``root``, the primary
    config first."""
    files = sorted(
        (p for p in root.rglob("*.yaml") if p.relative_to(root).parts[0] not in NOT_SETTINGS),
        key=lambda p: (p.parent != root, str(p)),
    )
    for path in files:
        description, options = file_options(path, root)
        yield path.relative_to(root).as_posix(), description, options


def format_options(root: Path, query: str | None = None) -> str:
    """The listing ``mbrm options [QUERY]`` prints; QUERY keeps the files of a group
    (``planner``) or the keys whose path contains it (``risk``).

    A key a file sets without a comment (``world_model/small.yaml`` resizing the
    ensemble) shows the help another file of its group gives it.
    """
    files = list(all_options(root))
    helps: dict[str, str] = {}
    for _, _, options in files:
        for o in options:
            helps.setdefault(o.path, o.help) if o.help else None
    blocks = []
    for rel, description, options in files:
        options = [
            Option(o.path, o.default, o.help or helps.get(o.path, ""), o.source)
            for o in options
            if not o.path.endswith("._target_")
        ]
        group = rel.split("/", 1)[0] if "/" in rel else ""
        if query and not (group == query or rel.startswith(query)):
            options = [o for o in options if query in o.path]
        if not options:
            continue
        width = max(len(o.path) for o in options)
        vwidth = min(max(len(o.default) for o in options), 28)
        head = f"[{rel}] {description}".rstrip()
        body = [f"  {o.path:{width}s}  {o.default:{vwidth}s}  {o.help}".rstrip() for o in options]
        blocks.append("\n".join([head, *body]))
    if not blocks:
        return f"no configuration key matches {query!r}"
    return "\n\n".join(blocks)
