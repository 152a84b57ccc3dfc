"""Build a :class:`RunConfig` from defaults, a budget, a preset or YAML file and ``--set`` overrides.

Resolution order (later wins): dataclass defaults → preset/config file → budget overlay
(``smoke``/``paper`` scale epochs, trials and repeats; ``default`` changes nothing) →
``--set key=value``. An unknown key or a value of the wrong type raises :class:`ConfigError`
naming the key and listing the valid ones.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from raysynth.config.schema import BUDGET_OVERRIDES, BUDGETS, RunConfig
from raysynth.errors import ConfigError

PRESET_PACKAGE = "raysynth.presets"
# a preset names the default run directory (runs/<preset>): one plain folder name, never a path
PRESET_NAME = re.compile(r"[A-Za-z0-9._-]+")


def list_presets() -> list[str]:
    """Names of the presets shipped inside the package (``raysynth run --preset NAME``)."""
    files = resources.files(PRESET_PACKAGE).iterdir()
    return sorted(f.name[: -len(".yaml")] for f in files if f.name.endswith(".yaml"))


def preset_path(name: str) -> Path:
    if name not in list_presets():
        raise ConfigError(
            f"preset {name!r} does not exist; choose one of {', '.join(list_presets())} "
            "or pass --config FILE"
        )
    return Path(str(resources.files(PRESET_PACKAGE) / f"{name}.yaml"))


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path) if isinstance(path, str) else path  # a Path, or a run directory's RemotePath
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of keys, not {type(data).__name__}")
    return data


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (sections only; list values stay whole)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["tune.num_samples=40"]`` → ``{"tune.num_samples": 40}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected dotted.key=value, e.g. tune.num_samples=40")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def valid_keys(cls: type = RunConfig, prefix: str = "") -> list[str]:
    keys: list[str] = []
    for f in dataclasses.fields(cls):
        hint = _hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            keys.extend(valid_keys(hint, f"{prefix}{f.name}."))
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def build_config(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> RunConfig:
    """Resolve the run's config. ``preset`` and ``config_file`` are mutually exclusive."""
    if preset and config_file:
        raise ConfigError("pass either --preset or --config, not both")
    file_values: dict[str, Any] = {}
    if preset:
        file_values = _read_layered(preset_path(preset))
        file_values.setdefault("preset", preset)
    elif config_file:
        file_values = _read_layered(Path(config_file))
        file_values.setdefault("preset", Path(config_file).stem)
    sets = dict(overrides or {})
    budget = sets.get("budget", file_values.get("budget", "default"))
    if budget not in BUDGETS:
        raise ConfigError(f"budget: got {budget!r}; choose one of {', '.join(BUDGETS)}")
    merged = {**file_values, **BUDGET_OVERRIDES[budget], **sets}
    return from_flat(merged)


def _read_layered(path: Path, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A YAML file's dotted values; ``base: PRESET`` starts from a shipped preset first."""
    values = flatten(read_yaml(path))
    base = values.pop("base", None)
    if base is None:
        return values
    if not isinstance(base, str) or base in seen:
        raise ConfigError(f"{path}: base must name a preset ({', '.join(list_presets())}) once")
    return {**_read_layered(preset_path(base), (*seen, base)), **values}


def from_flat(values: dict[str, Any], cls: type = RunConfig) -> Any:
    """Build ``cls`` from dotted keys, checking every key and coercing every value."""
    keys = valid_keys(cls)
    for key in values:
        if key not in keys:
            raise ConfigError(f"unknown config key {key!r}; {_suggest(key, keys)}")
    if "preset" in keys and "preset" in values:
        check_preset_name(values["preset"])
    return _build(cls, values, "")


def check_preset_name(name: Any) -> None:
    """A preset name is one folder name (the default run directory is ``runs/<preset>``):
    letters, digits, ``.``, ``_`` and ``-``, no path separator and no ``..``."""
    text = str(name) if isinstance(name, str | int | float) else None
    if text is not None and PRESET_NAME.fullmatch(text) and ".." not in text and text != ".":
        return
    raise ConfigError(
        f"preset: {name!r} is not a valid name; it names the default run directory "
        "runs/<preset>, so use only letters, digits, '.', '_' and '-' (no '/', '\\' or '..'), "
        "e.g. --set preset=my-run, and pass --out DIR to choose where the run goes"
    )


def _suggest(key: str, keys: list[str]) -> str:
    """A key of the same name one section deeper (``synthesis.max_actors`` →
    ``synthesis.pool.max_actors``), then the valid keys of the same section (its sub-sections as
    ``name.*``), or every key when the section is unknown too."""
    section = key.rsplit(".", 1)[0] + "." if "." in key else ""
    leaf = key.rsplit(".", 1)[-1]
    moved = [k for k in keys if k.startswith(section) and k.endswith("." + leaf) and k != key]
    hint = f"did you mean {' or '.join(moved)}? " if moved else ""
    inside = [k[len(section) :] for k in keys if section and k.startswith(section)]
    near = list(dict.fromkeys(section + (k.split(".")[0] + ".*" if "." in k else k) for k in inside))
    if near:
        return f"{hint}valid keys in {section[:-1]} are: {', '.join(near)}"
    return f"{hint}valid keys are: {', '.join(keys)}"


def to_dict(cfg: Any) -> dict[str, Any]:
    """Nested plain dict (tuples as lists) for YAML/JSON."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        return v

    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        out[f.name] = to_dict(value) if dataclasses.is_dataclass(value) else plain(value)
    return out


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def load_resolved(path: str | Path) -> RunConfig:
    """Load a ``config.yaml`` written by :func:`dump_yaml` (a run directory's resolved config)."""
    return from_flat(flatten(read_yaml(path)))


def replace(cfg: RunConfig, **dotted: Any) -> RunConfig:
    """A copy of ``cfg`` with dotted keys changed (``replace(cfg, **{"tune.num_samples": 4})``)."""
    return from_flat({**flatten(to_dict(cfg)), **dotted})


# --- internals -------------------------------------------------------------------------------


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(cls: type, values: dict[str, Any], prefix: str, base: Any = None) -> Any:
    """``cls`` from the dotted ``values`` under ``prefix``; keys not given keep ``base``'s values
    (a section's own defaults, e.g. ``filter.pool`` has another batch size than ``synthesis.pool``)."""
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        hint = _hints(cls)[f.name]
        dotted = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hint):
            inner = getattr(base, f.name) if base is not None else _default(f)
            kwargs[f.name] = _build(hint, values, dotted + ".", inner)
        elif dotted in values:
            kwargs[f.name] = _coerce(values[dotted], hint, dotted)
    return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in (s.strip() for s in value.split(",")) if v]
        if not isinstance(value, list | tuple):
            value = [value]
        return tuple(_coerce(v, args[0], key) for v in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)  # class names like 0 or 9 read from YAML as numbers
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {hint}")
