"""The one YAML loader of the project: safe, and bounded in size and nesting before anything is built.

PyYAML's ``safe_load`` builds an alias once and shares it, so a "billion laughs" file loads fast and
then hangs (or exhausts memory) whoever walks, copies or prints the result. :func:`load_yaml` and
:func:`parse_yaml` compose the document into nodes first, refuse it when the nodes it expands to
(every alias counted as often as it is used) exceed :data:`MAX_NODES`, their text
:data:`MAX_CHARS`, or the nesting :data:`MAX_DEPTH` (also while composing, so deep nesting never
reaches Python's recursion limit), refuse recursive aliases and duplicate mapping keys (YAML
forbids them; PyYAML silently keeps the last), and only then construct Python values. Every
refusal is one line naming the file (:class:`YAMLFileError`, which is both a
:class:`~converters.errors.DeeplabError` and a ``yaml.YAMLError``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from converters.errors import DeeplabError

__all__ = ["MAX_BYTES", "MAX_CHARS", "MAX_DEPTH", "MAX_NODES", "YAMLFileError", "load_yaml", "parse_yaml"]

MAX_BYTES = 256 << 10  # a file: the configs and tables are a few KB; PyYAML composes dense YAML at ~50 KB/s
MAX_NODES = 100_000  # values after alias expansion (published.yaml: a few thousand)
MAX_CHARS = 16 << 20  # scalar characters after alias expansion
MAX_DEPTH = 64  # nesting levels after alias expansion (the configs use 5)


class YAMLFileError(DeeplabError, yaml.YAMLError):
    """A YAML file or value that is malformed or over the bounds: one line naming it (exit 1)."""


class _Refused(Exception):
    pass


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader whose composer counts its nesting and stops past :data:`MAX_DEPTH`."""

    _level = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        self._level += 1
        try:
            if self._level > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise _Refused(f"nests deeper than {MAX_DEPTH} levels (line {mark.line + 1})")
            return super().compose_node(parent, index)
        finally:
            self._level -= 1


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _check(root: Node) -> None:
    """Raise :class:`_Refused` if ``root`` expands beyond the bounds, aliases itself or repeats a key.

    Each distinct node is measured once (memoised), so an alias bomb costs its written size, not its
    expanded one; the expanded totals are summed from the memo and checked as they grow.
    """
    memo: dict[int, tuple[int, int, int]] = {}  # id(node) -> (expanded nodes, depth, characters)
    active: set[int] = set()

    def walk(node: Node, level: int) -> tuple[int, int, int]:
        key = id(node)
        if key in active:
            raise _Refused(f"an alias refers to its own ancestor (line {node.start_mark.line + 1})")
        found = memo.get(key)
        if found is None:
            if level > MAX_DEPTH:
                raise _Refused(f"nests deeper than {MAX_DEPTH} levels after alias expansion")
            active.add(key)
            nodes, depth, chars = 1, 0, 0
            if isinstance(node, ScalarNode):
                chars = len(node.value)
            else:
                if isinstance(node, MappingNode):
                    _check_keys(node)
                    children = [n for pair in node.value for n in pair]
                else:
                    children = list(node.value) if isinstance(node, SequenceNode) else []
                for child in children:
                    n, d, c = walk(child, level + 1)
                    nodes, depth, chars = nodes + n, max(depth, d), chars + c
                    if nodes > MAX_NODES:
                        raise _Refused(f"expands to more than {MAX_NODES} values (aliases counted as often as "
                                       "they are used: an alias bomb?)")
                    if chars > MAX_CHARS:
                        raise _Refused(f"expands to more than {MAX_CHARS} characters of text (aliases counted "
                                       "as often as they are used)")
            found = memo[key] = (nodes, depth + 1, chars)
            active.discard(key)
        if level + found[1] - 1 > MAX_DEPTH:
            raise _Refused(f"nests deeper than {MAX_DEPTH} levels after alias expansion")
        return found

    walk(root, 1)


def _check_keys(node: MappingNode) -> None:
    seen: set[tuple[str, str]] = set()
    for key, _ in node.value:
        if isinstance(key, ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
            ident = (key.tag, key.value)
            if ident in seen:
                raise _Refused(f"duplicate key {_short(key.value)!r} (line {key.start_mark.line + 1})")
            seen.add(ident)


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_yaml(text: str, where: str | os.PathLike) -> Any:
    """The value of YAML ``text`` (None if empty), built only after the bounds are checked.

    ``where`` names the source in every error (a file path, or e.g. ``--set solver.base_lr``).
    Raises :class:`YAMLFileError`.
    """
    try:
        loader = _BoundedLoader(text)  # reads the whole text first: refuses control characters
    except yaml.YAMLError as e:
        raise YAMLFileError(f"{where}: not valid YAML ({_one_line(e)})") from None
    try:
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _check(node)
            return loader.construct_document(node)
        except _Refused as e:
            raise YAMLFileError(f"{where}: refused YAML: {e}") from None
        except yaml.YAMLError as e:
            raise YAMLFileError(f"{where}: not valid YAML ({_one_line(e)})") from None
        except (ValueError, TypeError, AttributeError, KeyError, OverflowError) as e:
            # SafeConstructor's own failures on tagged scalars (!!int abc, !!bool maybe, !!timestamp 2001-99-99)
            raise YAMLFileError(f"{where}: not valid YAML (a value cannot be built: {_one_line(e)[:200]})") from None
    finally:
        loader.dispose()


def load_yaml(path: str | os.PathLike) -> Any:
    """The value of the YAML file ``path`` (see :func:`parse_yaml`); refuses files over :data:`MAX_BYTES`.

    Reading errors (``FileNotFoundError``, other ``OSError``, ``UnicodeDecodeError``) pass through so
    callers can say what the file is for; everything about its content is a :class:`YAMLFileError`.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        data = fh.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise YAMLFileError(f"{path}: refused YAML: larger than {MAX_BYTES >> 10} KiB, not a config or table")
    return parse_yaml(data.decode("utf-8"), path)
