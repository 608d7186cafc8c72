"""Output names from entities and the path patterns of our pybids config (``data/pybids_m2i.json``).

pybids' ``build_path`` gives the same names, but importing it loads all of pybids' layout (SQLAlchemy and
more): about 0.4 CPU s in every process that only writes outputs, such as a GLM node's (issue 13's speed
goal counts the whole process). This reads the same patterns with the rules they are written in:

* ``{name}`` is the entity's value; the pattern needs the entity;
* ``{name<a|b>}`` also requires the value to be one of those listed, else the pattern does not match;
* ``{name<a|b>|d}`` or ``{name|d}``: ``d`` when the entity is not given;
* ``[...]`` (one plain ``{name}`` inside) is kept when its entity is given, dropped otherwise;
* ``extension`` is compared and written with one leading dot;
* the first pattern that matches gives the name; entities no pattern mentions are ignored.

:func:`supported` checks that a pattern uses nothing else (listed values with ``[...]`` alternatives, several
entities in one optional part, text after a field's name...); :func:`build_name` falls back to pybids for one
that does. ``tests/test_derivative_names.py`` compares the two on every pattern of the config.
"""

from __future__ import annotations

import re
from functools import lru_cache

# {name<valid values>|default}: the field syntax of pybids' path patterns (the parts we support)
_FIELD = re.compile(r"\{(\w+)(?:<([^<>{}\[\]]+)>)?(?:\|([\w.]+))?\}")
_OPTIONAL = re.compile(r"\[([^\[\]]*)\]")


def supported(pattern: str) -> bool:
    """Whether :func:`_build_one` reads ``pattern`` as pybids does: every brace is one of our fields, every
    optional part holds exactly one field, and no brackets or braces are left over."""
    for part in _OPTIONAL.findall(pattern):
        fields = _FIELD.findall(part)
        # one plain {entity} per optional part (pybids drops a part whose listed value does not match)
        if len(fields) != 1 or fields[0][1] or fields[0][2]:
            return False
    if ".{extension" in pattern:     # pybids then writes the extension without its dot
        return False
    rest = _FIELD.sub("", _OPTIONAL.sub(lambda m: m.group(1), pattern))
    return not any(c in rest for c in "{}[]<>|")


@lru_cache(maxsize=None)
def _parsed(pattern: str):
    """The pattern as a list of (optional, literal text or field) pieces, fields as (name, valid, default)."""
    pieces = []
    position = 0
    for match in _OPTIONAL.finditer(pattern):
        pieces.extend(_fields(pattern[position:match.start()], optional=False))
        pieces.append(("optional", _fields(match.group(1), optional=True)))
        position = match.end()
    pieces.extend(_fields(pattern[position:], optional=False))
    return pieces


def _fields(text: str, optional: bool):
    out, position = [], 0
    for match in _FIELD.finditer(text):
        if match.start() > position:
            out.append(("text", text[position:match.start()]))
        name, valid, default = match.groups()
        out.append(("field", (name, tuple(valid.split("|")) if valid else (), default)))
        position = match.end()
    if position < len(text):
        out.append(("text", text[position:]))
    return out


def _value(field, entities: dict[str, str]):
    """The text of one field, or None when the pattern does not match (missing entity, value not listed)."""
    name, valid, default = field
    value = entities.get(name)
    if value is None:
        return default
    if valid and value not in valid:
        return None
    return value


def _build_one(pattern: str, entities: dict[str, str]) -> str | None:
    out = []
    for kind, content in _parsed(pattern):
        if kind == "text":
            out.append(content)
        elif kind == "field":
            text = _value(content, entities)
            if text is None:
                return None
            out.append(text)
        else:  # an optional part: kept when its entity is given (a default alone does not keep it)
            name = next(c[0] for k, c in content if k == "field")
            if name not in entities:
                continue
            for k, c in content:
                text = c if k == "text" else _value(c, entities)
                if text is None:
                    return None
                out.append(text)
    return "".join(out)


def build_name(entities: dict[str, str], patterns: list[str]) -> str | None:
    """The relative path of the first pattern that matches ``entities`` (string values; none empty), or None."""
    if not all(supported(p) for p in patterns):
        from bids.layout.writing import build_path

        return build_path(entities, patterns, strict=False)
    entities = {k: str(v) for k, v in entities.items() if v is not None and v != ""}
    if "extension" in entities:
        entities["extension"] = "." + entities["extension"].lstrip(".")
    for pattern in patterns:
        name = _build_one(pattern, entities)
        if name is not None:
            return name
    return None
