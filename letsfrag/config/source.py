"""Reading a config file: YAML with line numbers, ``${VAR}`` expansion, and one-line problem reports.

This module knows nothing about the config models; :mod:`letsfrag.config` feeds it pydantic errors and model
classes. Every problem is one line: ``file:line: dotted.key: what was expected, what was found``.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from letsfrag.errors import ConfigError
from letsfrag.logs import SECRET_KEYS, mask_urls

Loc = tuple[str | int, ...]

#: key names whose values are secrets: never shown in problems
SECRET_NAMES = SECRET_KEYS
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_STR_TAG = "tag:yaml.org,2002:str"


@dataclass(frozen=True)
class Problem:
    """One problem: the key path it concerns, the message, and (if different) the path to take its line from."""

    loc: Loc
    message: str
    line_loc: Loc | None = None


@dataclass
class Source:
    """A parsed config document: its data, where each key path sits, and problems found so far."""

    name: str
    data: dict[str, Any]
    lines: dict[Loc, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    #: the text of every unquoted value YAML read as something else than a string (``on``, ``01234``)
    unquoted: dict[Loc, str] = field(default_factory=dict)

    def line_of(self, loc: Loc) -> int | None:
        """Line of ``loc`` in the file, or of its nearest ancestor that appears there."""
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.lines:
                return self.lines[loc[:end]]
        return None

    def add(self, loc: Loc, message: str, line_loc: Loc | None = None) -> None:
        """Record a problem about ``loc``."""
        self.problems.append(Problem(loc, message, line_loc))

    def format(self, problem: Problem) -> str:
        """One problem line: ``file:line: key.path: message`` (a URL password in the message shown as ``***``)."""
        line = self.line_of(problem.loc if problem.line_loc is None else problem.line_loc)
        where = f"{self.name}:{line}" if line is not None else self.name
        path = dotted(problem.loc)
        message = mask_url(problem.message)
        return f"{where}: {path}: {message}" if path else f"{where}: {message}"

    def formatted_problems(self) -> list[str]:
        """Problems collected so far, in file order (problems without a line first)."""

        def order(p: Problem) -> tuple[int, str]:
            return (self.line_of(p.loc if p.line_loc is None else p.line_loc) or 0, dotted(p.loc))

        return [self.format(p) for p in sorted(self.problems, key=order)]


def dotted(loc: Loc) -> str:
    """``('bot', 'command', 0)`` -> ``bot.command[0]``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def mask_url(url: str) -> str:
    """Replace the password of a ``scheme://user:password@host`` URL (anywhere in ``url``) by ``***``."""
    return mask_urls(url)


def is_secret(loc: Loc) -> bool:
    """True when ``loc`` names a secret value (token, password, secret)."""
    return any(isinstance(part, str) and part in SECRET_NAMES for part in loc)


def describe(value: Any, loc: Loc = ()) -> str:
    """Render a found value for a problem line, masking secrets and URL passwords."""
    if is_secret(loc) and value is not None:
        return "***"
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, str):
        if value == "":
            return "an empty string"
        text = mask_url(value)
        return repr(text if len(text) <= 60 else text[:57] + "...")
    return type(value).__name__


# ---------------------------------------------------------------------------------------------- reading


def read_source(path: str | Path, env: Mapping[str, str] | None = None) -> Source:
    """Read and parse ``path``, expand ``${VAR}`` references; raise :class:`ConfigError` if unreadable.

    Problems in variable references are recorded on the returned source (so validation can still report
    the rest of the file in the same go).
    """
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{name}: no such file"], name) from None
    except IsADirectoryError:
        raise ConfigError([f"{name}: is a directory, expected a YAML file"], name) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})"], name) from None
    except OSError as exc:
        raise ConfigError([f"{name}: cannot read: {exc.strerror}"], name) from None
    try:
        _check_depth(text, name)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None:
            _check_expanded_size(node, name)
        data = None if node is None else yaml.SafeLoader("").construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{name}:{mark.line + 1}" if mark is not None else name
        raise ConfigError([f"{where}: YAML syntax error: {exc.problem or exc.context}"], name) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{name}: YAML error: {exc}"], name) from None
    if node is None or data is None:
        raise ConfigError([f"{name}: the file is empty, expected a mapping of settings"], name)
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else describe(data)
        line = node.start_mark.line + 1
        raise ConfigError([f"{name}:{line}: expected a mapping of settings at the top level, found {kind}"], name)
    source = Source(name=name, data=data)
    _collect_lines(node, (), source)
    source.data = expand_env(data, os.environ if env is None else env, source)
    return source


#: deepest nesting of mappings and lists accepted (a config needs 4; deeper input only costs recursion)
MAX_DEPTH = 32
#: most values a document may hold once aliases are expanded (a config has a few hundred; "billion laughs")
MAX_VALUES = 10_000


def _check_depth(text: str, name: str) -> None:
    """Refuse nesting deeper than :data:`MAX_DEPTH` before composing (the composer recurses per level)."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                where = f"{name}:{event.start_mark.line + 1}" if event.start_mark is not None else name
                raise ConfigError(
                    [f"{where}: mappings and lists nested deeper than {MAX_DEPTH} levels; "
                     "a config needs a handful"], name)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _check_expanded_size(root: yaml.Node, name: str) -> None:
    """Refuse a document that holds more than :data:`MAX_VALUES` values once aliases are expanded, or an
    alias inside its own anchor; counted on the node graph (each shared node once), so it is quick."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    aliased = False
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        children = _children(node)
        if children_done:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[key] > MAX_VALUES:
                line = node.start_mark.line + 1
                what = "aliases expand it to" if aliased else "it holds"
                raise ConfigError(
                    [f"{name}:{line}: {what} more than {MAX_VALUES} values; a config needs far fewer "
                     "(write the values out instead of nesting aliases)"], name)
            continue
        if key in sizes:
            aliased = True
            continue
        if key in open_nodes:
            line = node.start_mark.line + 1
            raise ConfigError([f"{name}:{line}: an alias refers to the mapping or list it is inside of"], name)
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in children)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _collect_lines(node: yaml.Node, loc: Loc, source: Source) -> None:
    """Record the line of every key path under ``node``; report duplicate keys."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key: Any = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                source.add(loc, f"duplicate key '{key}' on lines {seen[key]} and {line}", (*loc, key))
            seen[key] = line
            source.lines[(*loc, key)] = line
            _collect_lines(value_node, (*loc, key), source)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            source.lines[(*loc, index)] = item.start_mark.line + 1
            _collect_lines(item, (*loc, index), source)
    elif isinstance(node, yaml.ScalarNode) and node.style is None and node.tag != _STR_TAG:
        source.unquoted[loc] = node.value


def expand_env(value: Any, env: Mapping[str, str], source: Source, loc: Loc = ()) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string value; ``$${`` is a literal ``${``."""
    if isinstance(value, dict):
        return {k: expand_env(v, env, source, (*loc, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, env, source, (*loc, i)) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value
    return "${".join(_expand_piece(piece, env, source, loc) for piece in value.split("$${"))


def _expand_piece(text: str, env: Mapping[str, str], source: Source, loc: Loc) -> str:
    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        found = env.get(name)
        if found is not None and (found != "" or default is None):
            return found
        if default is not None:
            return default
        source.add(loc, f"environment variable {name} is not set (set it, or write ${{{name}:-default}})")
        return ""

    result = _VAR.sub(replace, text)
    if "${" in _VAR.sub("", text):
        source.add(loc, "malformed variable reference: expected ${NAME} or ${NAME:-default}")
    return result


# ---------------------------------------------------------------------------------------- validating


class KeyProblems(ValueError):
    """Raised by cross-field validators: several ``(key path, message)`` problems at once."""

    def __init__(self, problems: Sequence[tuple[Loc, str]]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(f"{dotted(loc)}: {msg}" for loc, msg in self.problems))


def validate(model: type[BaseModel], source: Source) -> BaseModel:
    """Validate ``source.data`` against ``model``; raise :class:`ConfigError` with every problem."""
    try:
        result = model.model_validate(source.data)
    except ValidationError as exc:
        env_locs = [p.loc for p in source.problems]
        for error in exc.errors(include_url=False):
            for problem in _explain(model, error, source):
                if not any(problem.loc[: len(bad)] == bad for bad in env_locs):
                    source.problems.append(problem)
        raise ConfigError(source.formatted_problems(), source.name) from None
    if source.problems:
        raise ConfigError(source.formatted_problems(), source.name)
    return result


_EXPECTED = {
    "missing": "required key is missing",
    "int_type": "expected a whole number",
    "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "finite_number": "expected a finite number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "string_type": "expected a string",
    "dict_type": "expected a mapping",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
    "list_type": "expected a list",
    "greater_than_equal": "expected a number >= {ge}",
    "greater_than": "expected a number > {gt}",
    "less_than_equal": "expected a number <= {le}",
    "less_than": "expected a number < {lt}",
    "literal_error": "expected {expected}",
    "too_short": "expected at least {min_length} item(s)",
    "string_too_short": "expected at least {min_length} character(s)",
}


def _number(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _explain(model: type[BaseModel], error: Any, source: Source) -> list[Problem]:
    """Turn one pydantic error into problems, saying so when YAML read an unquoted value as a non-string."""
    loc: Loc = tuple(error["loc"])
    text = source.unquoted.get(loc)
    if text is None:
        return _explain_value(model, error)
    value = error.get("input")
    read_as = _yaml_reading(value)
    if error["type"] == "string_type":
        if is_secret(loc):
            kind = "a boolean" if isinstance(value, bool) else "a number" if isinstance(value, int | float) \
                else "a non-string"
            return [Problem(loc, f"YAML reads the unquoted value as {kind}, expected a string; quote it")]
        if text == "":
            return [Problem(loc, f"the value is empty (YAML reads it as null), expected a string; "
                                 f"write {loc[-1]}: '' for an empty string")]
        return [Problem(loc, f"YAML reads the unquoted {text} as {read_as}, expected a string; "
                             f"quote it: {loc[-1]}: {text!r}")]
    problems = _explain_value(model, error)
    if isinstance(value, bool) and text.lower() not in ("true", "false") and not is_secret(loc):
        problems = [Problem(p.loc, f"{p.message} (YAML reads the unquoted {text} as {read_as})", p.line_loc)
                    for p in problems]
    return problems


def _yaml_reading(value: Any) -> str:
    """What YAML made of an unquoted scalar: ``the boolean true``, ``the number 668``, ``a date``."""
    if isinstance(value, bool):
        return f"the boolean {describe(value)}"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if value is None:
        return "null"
    return f"a {type(value).__name__}"


def _explain_value(model: type[BaseModel], error: Any) -> list[Problem]:
    loc: Loc = tuple(error["loc"])
    kind, found, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    if kind == "extra_forbidden":
        key = loc[-1]
        message = f"unknown key '{key}'"
        allowed = allowed_keys(model, loc[:-1])
        close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
        if close:
            message += f" (did you mean '{close[0]}'?)"
        return [Problem(loc[:-1], message, loc)]
    if kind == "value_error" and isinstance(ctx.get("error"), KeyProblems):
        return [Problem((*loc, *sub), msg) for sub, msg in ctx["error"].problems]
    if kind in ("value_error", "assertion_error"):
        text = str(ctx.get("error", error["msg"]))
        return [Problem(loc, text if "found" in text else f"{text}, found {describe(found, loc)}")]
    if kind == "missing":
        return [Problem(loc, _EXPECTED[kind])]
    template = _EXPECTED.get(kind)
    if template is None:
        return [Problem(loc, f"{error['msg'].lower()}, found {describe(found, loc)}")]
    expected = template.format(**{k: _number(v) for k, v in ctx.items()})
    return [Problem(loc, f"{expected}, found {describe(found, loc)}")]


def allowed_keys(model: type[BaseModel], loc: Loc) -> list[str]:
    """Field names of the (nested) model found at ``loc`` below ``model``; empty if unknown."""
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            return []
        current = _model_of(current.model_fields[str(part)].annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _model_of(annotation: Any) -> Any:
    """The BaseModel class inside ``X``, ``X | None`` or ``Annotated[X, ...]``, else ``annotation``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return annotation
