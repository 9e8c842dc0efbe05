"""The operator's YAML or TOML files (the producer's cameras file, the sorter's line file): read into plain data,
every problem one ConfigError line that names the file."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import yaml

from inspector.errors import ConfigError


def read_config_file(path: Path, what: str) -> Any:
    """The parsed content of a .yaml, .yml or .toml file; `what` names it in errors ("cameras file")."""
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    text = path.read_text()
    if path.suffix == ".toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    if path.suffix not in (".yaml", ".yml"):
        raise ConfigError(f"{path}: a {what} is .yaml, .yml or .toml")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
