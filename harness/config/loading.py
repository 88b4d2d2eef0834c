"""Read layered YAML configs and dotted overrides into one validated `Config`.

A file may name `base: other.yaml` (relative to itself); several `--config` files layer
left to right; `--set a.b=c` overrides come last and are typed by the schema. Every
problem is collected and raised together, each on one line naming the file and the key
(`validation_problems`, which a search-space file's errors go through too).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import yaml
from pydantic import BaseModel, ValidationError

from harness.config.keys import key_problem, known_keys, normalise, value_problem
from harness.config.schema import Config
from harness.errors import ConfigError
from harness.io import write_text_atomic

__all__ = [
    "load_config",
    "read_layers",
    "config_from_dict",
    "apply_overrides",
    "parse_override",
    "deep_merge",
    "set_dotted",
    "flatten",
    "to_yaml",
    "save_config",
    "validation_problems",
    "problem_line",
]


def read_yaml(path: Path) -> dict[str, Any]:
    """Safe-load one YAML mapping, or raise a ConfigError naming the file."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a YAML mapping, but got {type(data).__name__}")
    return data


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Merge `over` into a copy of `base`; nested mappings merge, everything else replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_with_bases(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise ConfigError(f"{path}: `base:` chain loops ({chain})")
    data = read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    bases = [base] if isinstance(base, str) else base
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: `base:` must be a file name or a list of them, but got {base!r}")
    merged: dict[str, Any] = {}
    for name in bases:
        merged = deep_merge(merged, _read_with_bases(path.parent / name, (*seen, path)))
    return deep_merge(merged, data)


def read_layers(paths: Iterable[Path | str]) -> dict[str, Any]:
    """The raw merged mapping of several config files, each with its `base:` chain resolved."""
    merged: dict[str, Any] = {}
    for p in paths:
        merged = deep_merge(merged, _read_with_bases(Path(p)))
    return merged


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set `a.b.c` in a nested dict, creating the intermediate mappings."""
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`optim.lr=3e-4` -> ("optim.lr", 0.0003): the value is read as YAML, then as the key's type wants it."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set must look like key.path=value, but got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if key_problem(key) is None:
        # A config key: its type settles what YAML cannot. `optim.lr=3e-4` (a string to YAML 1.1) is a
        # float, `tracking.run_name=1e3` stays the text "1e3". A value the schema refuses either way is
        # kept as read, so that the loader's error names the key and the value.
        for candidate in (value, raw):
            if value_problem(key, candidate) is None:
                return key, normalise(key, candidate)
        return key, value
    # Other keys (`harness synth --set n_sources=60` names a section's own keys): YAML 1.1 reads 3e-4 as a
    # string, and a float key would then refuse it.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else value
        except ValueError:
            pass
    return key, value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    out = copy.deepcopy(data)
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(out, key, value)
    return out


_NOT_GIVEN = object()

Loc = tuple[int | str, ...]


def problem_line(source: str, key: str, message: str, value: Any = _NOT_GIVEN) -> str:
    """One problem on one line: `<file>: key '<key>': <what must hold>, but got <value>`."""
    if not key:  # a rule across keys names its keys and values itself
        return f"{source}: {message}"
    line = f"{source}: key '{key}': {message}"
    # A validator's own message may already say what it got; pydantic's built-in ones never do.
    if value is _NOT_GIVEN or "but got" in message:
        return line
    return f"{line}, but got {value!r}"


def _dotted(loc: Loc) -> str:
    return ".".join(str(p) for p in loc)


def _config_keys_at(loc: Loc) -> list[str]:
    return known_keys(_dotted(loc))


def validation_problems(
    exc: ValidationError,
    source: str,
    key_of: Callable[[Loc], str] = _dotted,
    allowed_at: Callable[[Loc], list[str]] = _config_keys_at,
) -> list[str]:
    """A pydantic error as one line per problem, naming the file and the key.

    `key_of` writes an error's location as the key a user would look for, `allowed_at` lists the
    keys allowed where an unknown one was found; both default to the run config's.
    """
    lines = []
    for err in exc.errors():
        key = key_of(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(sorted(allowed_at(err["loc"][:-1])))
            lines.append(f"{source}: unknown key '{key}'; allowed here: {allowed}")
        else:
            # A validator reports several problems as several lines of one message.
            lines.extend(problem_line(source, key, part, err.get("input")) for part in msg.split("\n"))
    return lines


def config_from_dict(data: Mapping[str, Any], source: str = "config") -> Config:
    """Validate a raw mapping; every problem is reported at once."""
    try:
        return Config.model_validate(dict(data))
    except ValidationError as exc:
        problems = validation_problems(exc, source)
        raise ConfigError(problems[0], problems) from None


def load_config(paths: Iterable[Path | str], overrides: Iterable[str] = ()) -> Config:
    """Layer config files (each with its `base:` chain) and `--set` overrides into a validated Config."""
    paths = list(paths)
    data = apply_overrides(read_layers(paths), overrides)
    source = " + ".join(str(p) for p in paths) or "defaults"
    return config_from_dict(data, source)


def flatten(cfg: BaseModel | Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys -> leaf values, for MLflow params and config diffs."""
    data = cfg.model_dump(mode="json") if isinstance(cfg, BaseModel) else cfg
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _emit(model: BaseModel, indent: int, lines: list[str]) -> None:
    pad = "  " * indent
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        comment = f"  # {field.description}" if field.description else ""
        if isinstance(value, BaseModel):
            lines.append(f"{pad}{name}:{comment}")
            _emit(value, indent + 1, lines)
        else:
            dumped = yaml.safe_dump(
                model.model_dump(mode="json", include={name})[name], default_flow_style=True, width=10_000
            ).strip()
            dumped = dumped.removesuffix("\n...").removesuffix("...").strip()
            lines.append(f"{pad}{name}: {dumped}{comment}")


def to_yaml(cfg: Config, header: str = "") -> str:
    """A complete, commented YAML of every key; loads back to an equal Config."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    _emit(cfg, 0, lines)
    return "\n".join(lines) + "\n"


def save_config(cfg: Config, path: Path, header: str = "") -> Path:
    """Write atomically so a crash never leaves half a config behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, to_yaml(cfg, header))
