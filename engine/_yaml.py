"""Strict YAML loading for configuration files (imported only when a YAML file is read).

Plain YAML types only (SafeLoader), and duplicate keys refused: PyYAML silently keeps the last
one, which would let a second ``forbid:`` quietly replace the first.
"""

from __future__ import annotations

import yaml

__all__ = ["DuplicateKey", "describe_error", "load_strict"]


class DuplicateKey(Exception):
    """A mapping repeats a key (dotted path and 1-based line)."""

    def __init__(self, key: str, line: int) -> None:
        super().__init__(key, line)
        self.key, self.line = key, line


class StrictLoader(yaml.SafeLoader):
    """SafeLoader (plain YAML types only); duplicate keys are checked on the node tree."""


_MERGE = "tag:yaml.org,2002:merge"


def check_duplicates(node: yaml.Node, path: str, seen: dict[int, dict[str, int]]) -> dict[str, int]:
    """Raise DuplicateKey for the first repeated mapping key under ``node``.

    Returns the keys ``node`` ends up with (name -> 1-based line) if it is a mapping. A key that
    a merge (``<<``) brings in counts as written: YAML lets an explicit key, or a later merged
    mapping, override it silently, which is the replacement this check exists to refuse.
    ``seen`` holds each node's result, so an alias is walked once (no blow-up, no cycles).
    """
    if id(node) in seen:
        return seen[id(node)]
    keys: dict[str, int] = {}
    seen[id(node)] = keys
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:  # merged keys first: explicit ones may follow
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag == _MERGE:
                merged = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                for item in merged:
                    for name, line in check_duplicates(item, path, seen).items():
                        if name in keys:
                            raise DuplicateKey(f"{path}.{name}" if path else name, line)
                        keys[name] = line
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                if key_node.tag == _MERGE:
                    continue
                name = str(key_node.value)
                dotted = f"{path}.{name}" if path else name
                if name in keys:
                    raise DuplicateKey(dotted, key_node.start_mark.line + 1)
                keys[name] = key_node.start_mark.line + 1
            else:
                dotted = f"{path}.?" if path else "?"
            check_duplicates(value_node, dotted, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            check_duplicates(item, f"{path}[{i}]", seen)
    return keys


def load_strict(text: str) -> object:
    """Parse one YAML document with plain types only; duplicate keys raise DuplicateKey."""
    loader = StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        check_duplicates(node, "", {})
        return loader.construct_document(node)
    finally:
        loader.dispose()




def describe_error(exc: BaseException) -> str | None:
    """A one-line description of a YAML parse error, or None if ``exc`` is not one."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return f"{exc.problem or exc.context}{at}"
    if isinstance(exc, yaml.YAMLError):
        return str(exc)
    return None
