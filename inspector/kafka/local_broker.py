"""A real Apache Kafka (KRaft) on free loopback ports, for the demo and the tests: one node, or a replicated
cluster of several (`LocalKafkaCluster`), each node killable and restartable on its ports and data.

The jars come from Maven Central through `deploy/kafka/pom.xml` (see `make kafka`); this module formats
a temporary data directory, starts `kafka.Kafka` on Java, waits until it answers, and stops it cleanly.

    python -m inspector.kafka.local_broker               # one node, in the foreground until Ctrl-C
    python -m inspector.kafka.local_broker --nodes 3     # three, replication factor 3, min in-sync replicas 2
"""

from __future__ import annotations

import argparse
import base64
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from inspector.errors import ConfigError, TransportError
from inspector.paths import KAFKA_LIB

_LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log_file}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.file.ref = file
"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _kafka_cluster_id() -> str:
    # Kafka cluster ids are 16 random bytes in URL-safe base64 without padding.
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise ConfigError("java is not on PATH: the local Kafka broker needs Java 17 or newer")
    return java


class LocalKafka:
    """Start/stop one KRaft broker+controller process; use as a context manager. Alone by default; a node of a
    cluster when given its `node_id`, the quorum's `voters` and the shared `cluster_id`. `long_running` for a
    broker meant to run for hours (the JVM's full JIT: cheaper per record once it has compiled, for a minute
    dearer)."""

    def __init__(
        self,
        *,
        port: int | None = None,
        data_dir: Path | None = None,
        extra_config: dict[str, str] | None = None,
        heap: str = "768m",
        log_level: str = "WARN",
        long_running: bool = False,
        scram_users: dict[str, str] | None = None,
        node_id: int = 1,
        controller_port: int | None = None,
        voters: str | None = None,
        cluster_id: str | None = None,
    ) -> None:
        self.port = port or free_port()
        self.controller_port = controller_port or free_port()
        self.node_id = node_id
        self.voters = voters or f"{node_id}@127.0.0.1:{self.controller_port}"
        self.cluster_id = cluster_id or _kafka_cluster_id()
        # With SCRAM users: a second client listener, SASL_PLAINTEXT + SCRAM-SHA-256, on its own port (the
        # PLAINTEXT listener stays for the controller, the broker itself and readiness checks).
        self.scram_users = dict(scram_users or {})
        self.sasl_port = free_port() if self.scram_users else None
        self._own_dir = data_dir is None
        self.work_dir = Path(data_dir or tempfile.mkdtemp(prefix="local-kafka-"))
        self.extra_config = dict(extra_config or {})
        self.heap = heap
        self.log_level = log_level
        self.long_running = long_running
        self._proc: subprocess.Popen[bytes] | None = None
        self._formatted = False

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def sasl_bootstrap_servers(self) -> str:
        """The SASL_PLAINTEXT (SCRAM-SHA-256) listener; only with `scram_users`."""
        if self.sasl_port is None:
            raise ConfigError("this LocalKafka has no SASL listener: pass scram_users")
        return f"127.0.0.1:{self.sasl_port}"

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs (benchmarks account for its CPU)."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def log_file(self) -> Path:
        return self.work_dir / "server.log"

    def _classpath(self) -> str:
        if not KAFKA_LIB.is_dir() or not any(KAFKA_LIB.glob("kafka_2.13-*.jar")):
            raise ConfigError(f"Kafka jars not found in {KAFKA_LIB}: run `make kafka` first")
        return str(KAFKA_LIB / "*")

    def _write_config(self) -> Path:
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": self.voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.work_dir / "data"),
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            "message.max.bytes": str(8 * 1024 * 1024),
        }
        if self.sasl_port is not None:
            sasl = f"SASL_PLAINTEXT://127.0.0.1:{self.sasl_port}"
            props["listeners"] += f",{sasl}"
            props["advertised.listeners"] += f",{sasl}"
            props["listener.security.protocol.map"] += ",SASL_PLAINTEXT:SASL_PLAINTEXT"
            props["sasl.enabled.mechanisms"] = "SCRAM-SHA-256"
            props["listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config"] = (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;")
        props.update(self.extra_config)
        path = self.work_dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        log4j = self.work_dir / "log4j2.properties"
        log4j.write_text(_LOG4J2.format(log_file=self.log_file, level=self.log_level))
        return path

    def _java_cmd(self, main_class: str, *args: str) -> list[str]:
        return [
            _java(),
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            # A broker that lives minutes (tests, the demo, benchmarks) compiles with C1 alone: on 2 cores C2's
            # first minute took up to a core from the worker beside it (bench/RESULTS.md, "A broker for minutes").
            *([] if self.long_running else ["-XX:TieredStopAtLevel=1"]),
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.work_dir / 'log4j2.properties'}",
            "-cp",
            self._classpath(),
            main_class,
            *args,
        ]

    def format(self) -> None:
        """Format the KRaft metadata log once (a restart reuses it)."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        # "--cluster-id=": a random id may start with "-", which argparse would read as an option.
        cmd = self._java_cmd("kafka.tools.StorageTool", "format", f"--cluster-id={self.cluster_id}",
                             "--config", str(config))
        for name, password in self.scram_users.items():  # SCRAM credentials live in the metadata log
            cmd += ["--add-scram", f"SCRAM-SHA-256=[name={name},password={password}]"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise TransportError(f"kafka storage format failed: {done.stderr.strip() or done.stdout.strip()}")
        self._formatted = True

    def start(self, timeout_s: float = 90.0) -> "LocalKafka":
        """Start the broker and block until it serves metadata."""
        self.launch()
        self.wait_ready(timeout_s)
        return self

    def launch(self) -> None:
        """Start the process without waiting (a cluster's nodes wait for each other's quorum)."""
        if not self._formatted:
            self.format()
        else:
            self._write_config()
        with (self.work_dir / "stdout.log").open("ab") as out:
            self._proc = subprocess.Popen(
                self._java_cmd("kafka.Kafka", str(self.work_dir / "server.properties")),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal reaches us, and we stop it in order
            )

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        """Block until this node serves metadata; TransportError (and the node stopped) if it does not in time."""
        from kafka import KafkaAdminClient  # imported here: the module is also used before install

        deadline = time.monotonic() + timeout_s
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise TransportError(f"Kafka exited with code {self._proc.returncode}; see {self.log_file}")
            try:
                # A short bootstrap timeout: kafka-python would otherwise back off for up to 30 s on a refused port.
                admin = KafkaAdminClient(bootstrap_servers=self.bootstrap_servers, request_timeout_ms=3000,
                                         bootstrap_timeout_ms=3000)
                try:
                    admin.list_topics()
                    return
                finally:
                    admin.close()
            except Exception as exc:  # any failure means "not ready yet"
                last_error = exc
                time.sleep(0.5)
        self.stop()
        raise TransportError(f"Kafka did not answer on {self.bootstrap_servers} in {timeout_s:.0f}s: {last_error}")

    def kill(self) -> None:
        """SIGKILL the broker (fault injection); `start()` brings it back on the same ports and data."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=30)
        self._proc = None

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the broker and wait for a controlled shutdown; SIGKILL if it hangs."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
        self._proc = None

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> "LocalKafka":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalKafkaCluster:
    """`nodes` KRaft nodes on loopback, each broker and controller (the quorum is all of them: metadata changes
    while a majority runs), with their own data dirs; replication factor min(3, nodes) and one in-sync replica
    fewer required, so any one node may fail without losing or refusing an acknowledged record. Each node is
    killable and restartable (`node(i)`); use as a context manager."""

    def __init__(self, nodes: int = 3, *, data_dir: Path | None = None, heap: str = "512m", long_running: bool = False,
                 log_level: str = "WARN", extra_config: dict[str, str] | None = None) -> None:
        if nodes < 1:
            raise ConfigError("a cluster needs at least one node")
        self._own_dir = data_dir is None
        self.work_dir = Path(data_dir or tempfile.mkdtemp(prefix="local-kafka-cluster-"))
        self.replication_factor = min(3, nodes)
        self.min_insync_replicas = max(1, self.replication_factor - 1)
        rf, isr = str(self.replication_factor), str(self.min_insync_replicas)
        config = {
            "default.replication.factor": rf, "min.insync.replicas": isr, "unclean.leader.election.enable": "false",
            "offsets.topic.replication.factor": rf,
            "transaction.state.log.replication.factor": rf, "transaction.state.log.min.isr": isr,
            "share.coordinator.state.topic.replication.factor": rf, "share.coordinator.state.topic.min.isr": isr,
            # A killed node is fenced, and its partitions get new leaders, after 3 s instead of 9.
            "broker.session.timeout.ms": "3000", "broker.heartbeat.interval.ms": "1000",
            **(extra_config or {}),
        }
        ports = [(free_port(), free_port()) for _ in range(nodes)]
        voters = ",".join(f"{i}@127.0.0.1:{controller}" for i, (_, controller) in enumerate(ports, start=1))
        cluster_id = _kafka_cluster_id()
        self.nodes = [
            LocalKafka(port=port, controller_port=controller, node_id=i, voters=voters, cluster_id=cluster_id,
                       data_dir=self.work_dir / f"node-{i}", heap=heap, log_level=log_level,
                       long_running=long_running, extra_config={**config, "broker.rack": f"rack-{i}"})
            for i, (port, controller) in enumerate(ports, start=1)
        ]

    @property
    def bootstrap_servers(self) -> str:
        """Every node's client listener, comma-separated (clients bootstrap from any that answers)."""
        return ",".join(node.bootstrap_servers for node in self.nodes)

    def node(self, node_id: int) -> LocalKafka:
        """The node whose broker id is `node_id` (1-based, as Kafka names leaders)."""
        if not 1 <= node_id <= len(self.nodes):
            raise ValueError(f"no node {node_id} in a cluster of {len(self.nodes)}")
        return self.nodes[node_id - 1]

    def start(self, timeout_s: float = 120.0) -> "LocalKafkaCluster":
        """Start every node, then wait for each (a node's broker waits for the controllers' quorum)."""
        for node in self.nodes:
            node.launch()
        deadline = time.monotonic() + timeout_s
        for node in self.nodes:
            node.wait_ready(max(1.0, deadline - time.monotonic()))
        return self

    def leader_of(self, topic: str, partition: int) -> int:
        """The broker id leading `topic`/`partition` now, as the first running node that answers says; -1 for none
        (no leader, or no node answered)."""
        from kafka import KafkaAdminClient

        for node in self.nodes:
            if not node.running:
                continue
            try:  # one node at a time: an admin client may pick a dead one from stale metadata
                admin = KafkaAdminClient(bootstrap_servers=node.bootstrap_servers, request_timeout_ms=3000,
                                         bootstrap_timeout_ms=3000)
                try:
                    described = admin.describe_topics([topic])
                finally:
                    admin.close()
            except Exception:  # this node is starting or stopping: ask the next
                continue
            for p in (p for t in described for p in t["partitions"] if p["partition_index"] == partition):
                return int(p["leader_id"])
        return -1

    def close(self) -> None:
        for node in self.nodes:
            node.stop()
        if self._own_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> "LocalKafkaCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a local Kafka broker, or a cluster, until interrupted.")
    parser.add_argument("--port", type=int, default=None, help="client port of a single node (default: a free one)")
    parser.add_argument("--nodes", type=int, default=1, help="nodes; several make a replicated cluster")
    args = parser.parse_args(argv)
    broker: LocalKafka | LocalKafkaCluster
    try:
        broker = (LocalKafka(port=args.port, long_running=True).start() if args.nodes == 1
                  else LocalKafkaCluster(args.nodes, long_running=True).start())
    except (ConfigError, TransportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"Kafka is up: bootstrap servers {broker.bootstrap_servers} (data in {broker.work_dir})", flush=True)
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    while not stop:
        time.sleep(0.3)
    broker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
