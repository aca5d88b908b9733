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


def check_duplicates(node: yaml.Node, path: str, seen_nodes: set[int]) -> None:
    """Raise DuplicateKey for the first repeated mapping key under ``node``."""
    if id(node) in seen_nodes:  # aliases: walk each node once (no alias blow-up, no cycles)
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        keys: set[str] = set()
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                if key_node.tag == "tag:yaml.org,2002:merge":
                    check_duplicates(value_node, path, seen_nodes)
                    continue
                name = str(key_node.value)
                dotted = f"{path}.{name}" if path else name
                if name in keys:
                    raise DuplicateKey(dotted, key_node.start_mark.line + 1)
                keys.add(name)
            else:
                dotted = f"{path}.?" if path else "?"
            check_duplicates(value_node, dotted, seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            check_duplicates(item, f"{path}[{i}]", seen_nodes)


def load_strict(text: str) -> object:
    """Parse one YAML document with plain types only; duplicate keys raise DuplicateKey."""
    loader = StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        check_duplicates(node, "", set())
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
