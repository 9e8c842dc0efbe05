"""The one settings object. Built once at an entry point (CLI) and passed down; the only reader of the
environment. Every field can be set as INSPECTOR_<SECTION>__<FIELD>, e.g. INSPECTOR_KAFKA__BOOTSTRAP_SERVERS."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from inspector.errors import ConfigError
from inspector.paths import DEFAULT_MODEL


class KafkaSettings(BaseModel):
    """Where the broker is, the topic names, and the client's delivery settings."""

    bootstrap_servers: str = "127.0.0.1:9092"  # a cluster: every broker, comma-separated ("k1:9092,k2:9092,k3:9092")
    # Topics the project creates (`inspector topics`, the demo, the belt): replicas of each partition, and how many
    # of them must hold a record before it is acknowledged (acks=all). A cluster: 3 and 2, so one broker may fail.
    replication_factor: int = Field(1, ge=1)
    min_insync_replicas: int = Field(1, ge=1)
    frames_topic: str = "frames"
    alerts_topic: str = "defect-alerts"
    scores_topic: str = "frame-scores"  # "" turns the per-frame score stream off
    dlq_topic: str = "frames-dlq"
    evidence_topic: str = "defect-evidence"  # each alert's annotated image and map; "" turns evidence off
    feedback_topic: str = "alert-feedback"  # operators' verdicts on alerts, written by `inspector ui`
    ejections_topic: str = "ejections"  # what the sorter did with each alert, shown by `inspector ui`; "" turns it off
    group_id: str = "inspector"
    client_id: str = "inspector"
    # Security: PLAINTEXT on loopback; SASL_PLAINTEXT/SASL_SSL with SCRAM or SSL on a real line.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    # How long the worker waits for the broker before it gives up with a clear error.
    request_timeout_ms: int = Field(30_000, ge=1_000)
    delivery_timeout_s: float = Field(60.0, gt=0)
    # A batch is far shorter than this; it bounds a stuck worker before the group takes its partitions.
    max_poll_interval_ms: int = Field(300_000, ge=1_000)
    session_timeout_ms: int = Field(10_000, ge=1_000)
    # Frames are 20-100 KB: fetch several batches' worth per request.
    fetch_max_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    max_partition_fetch_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    # How long the broker holds a fetch that finds no new frame; unset, the measured best of the transport in use
    # (fetch_wait_ms; bench/HISTORY.md, run E).
    fetch_max_wait_ms: int | None = Field(None, ge=0, le=5_000)
    # Producer: a short linger packs alerts of one batch into one request without adding latency.
    linger_ms: int = Field(2, ge=0)
    # kafka-python (pure Python, the default) or confluent-kafka (librdkafka, C): faster per record, see
    # bench/RESULTS.md; needs the `confluent` extra.
    transport: Literal["kafka-python", "confluent"] = "kafka-python"
    exactly_once: bool = False  # transactional alerts+scores with offsets in the transaction
    transactional_id: str | None = None  # unset: "<group_id>-<hostname>-<pid>" (effective_transactional_id)

    @model_validator(mode="after")
    def _limits_fit(self) -> KafkaSettings:
        if self.min_insync_replicas > self.replication_factor:
            raise ValueError(f"min_insync_replicas ({self.min_insync_replicas}) exceeds replication_factor "
                             f"({self.replication_factor}): no record could ever be acknowledged")
        if self.delivery_timeout_s * 1000 <= self.request_timeout_ms + self.linger_ms:
            raise ValueError(f"delivery_timeout_s ({self.delivery_timeout_s:g}) must exceed request_timeout_ms "
                             f"({self.request_timeout_ms}) + linger_ms ({self.linger_ms}): a request must fit in it")
        return self

    def fetch_wait_ms(self) -> int:
        """fetch_max_wait_ms, or 5 ms with kafka-python and 50 ms with librdkafka. kafka-python keeps one fetch per
        broker in flight, and now and then sends one for the idle partitions alone (those with buffered records are
        left out): until the broker answers it, after the whole wait, the busy partitions are not fetched. At 500 ms
        that raised the worker's latency p50 from 66 to about 540 ms. librdkafka fetches every partition each time,
        ahead in the background; at 5 ms its empty fetches took the broker 30-45 % of a core during a drain."""
        if self.fetch_max_wait_ms is not None:
            return self.fetch_max_wait_ms
        return 50 if self.transport == "confluent" else 5

    def effective_transactional_id(self, pid: int | None = None) -> str:
        """The id an exactly-once producer registers under: transactional_id, or "<group_id>-<hostname>-<pid>" with
        this process's pid (the supervisor passes its own, for the ids of its workers)."""
        process = os.getpid() if pid is None else pid
        return self.transactional_id or f"{self.group_id}-{socket.gethostname()}-{process}"

    def client_config(self) -> dict[str, object]:
        """Connection keyword arguments shared by kafka-python producers, consumers and admin clients."""
        cfg: dict[str, object] = {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "security_protocol": self.security_protocol,
            "request_timeout_ms": self.request_timeout_ms,
        }
        if self.security_protocol.startswith("SASL"):
            if not (self.sasl_mechanism and self.sasl_username and self.sasl_password):
                raise ConfigError("SASL needs kafka.sasl_mechanism, kafka.sasl_username and kafka.sasl_password")
            cfg["sasl_mechanism"] = self.sasl_mechanism
            cfg["sasl_plain_username"] = self.sasl_username
            cfg["sasl_plain_password"] = self.sasl_password.get_secret_value()
        if self.security_protocol in ("SSL", "SASL_SSL"):
            for key, path in (("ssl_cafile", self.ssl_cafile), ("ssl_certfile", self.ssl_certfile),
                              ("ssl_keyfile", self.ssl_keyfile)):
                if path is not None:
                    if not path.is_file():
                        raise ConfigError(f"kafka.{key}: {path} does not exist")
                    cfg[key] = str(path)
        return cfg


class BatchSettings(BaseModel):
    """Micro-batching: a batch closes when it is full or its oldest frame has waited max_wait_ms."""

    max_size: int = Field(32, ge=1, le=4096)
    # An idle worker scores what has arrived at once. Under load batches fill by themselves while the previous ones
    # score, so a wait only adds latency: 10 ms doubled the null model's latency p50 at a fixed rate on cpu-2, and
    # left the default model's capacity where it was (bench/HISTORY.md, run F).
    max_wait_ms: float = Field(0.0, ge=0)
    decode_threads: int = Field(2, ge=1, le=64)
    gpu_decode: bool = True  # on CUDA, decode JPEG batches with nvJPEG; OpenCV threads otherwise


class ModelSettings(BaseModel):
    """Which model file to serve and how to score with it."""

    path: Path = DEFAULT_MODEL
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Overrides of the model file's thresholds (its default and its cameras', from `calibrate --from-line`): for
    # every camera, and per camera.
    threshold: float | None = None
    camera_thresholds: dict[str, float] = Field(default_factory=dict)
    bf16: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    compile: bool = False  # torch.compile, warmed up before joining the consumer group
    # On CUDA: the scoring of each padded batch size captured as a CUDA graph at warm-up and replayed per batch, so
    # a small batch pays one launch instead of one per kernel (inspector.model.cuda_graphs). Ignored on the CPU, and
    # with compile, which wins: its max-autotune mode replays the forward through CUDA graphs of its own.
    cuda_graphs: bool = True
    # On the CPU: batches scored at once, each by cores/cpu_streams threads. Two single-threaded batches beat
    # one batch on two threads on 2 cores (bench/HISTORY.md, run D); on CUDA batches are scored one at a time.
    cpu_streams: int = Field(2, ge=1, le=16)
    reload_poll_s: float = Field(5.0, ge=0)  # 0 disables hot reload of a changed model file
    null: bool = False  # benchmarks: serve a model that returns its input (exposes transport + decode cost)

    def threshold_for(self, camera_id: str | None, calibrated: float) -> float:
        """The threshold in force for a camera (None: the default): its override, else the global override,
        else the model file's threshold for it (`ModelArtifact.threshold_for`). The worker alerts and the metrics
        report with this rule."""
        if camera_id is not None and camera_id in self.camera_thresholds:
            return self.camera_thresholds[camera_id]
        return self.threshold if self.threshold is not None else calibrated


class LimitSettings(BaseModel):
    """Bounds that keep a hostile or broken frame from exhausting the worker."""

    max_frame_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    max_pixels: int = Field(4096 * 4096, ge=64 * 64)
    max_cameras: int = Field(256, ge=1)  # distinct camera label values in metrics before "other"


class HttpSettings(BaseModel):
    """The metrics and health endpoint."""

    host: str = "127.0.0.1"
    port: int = Field(9400, ge=0, le=65535)  # 0 picks a free port (tests)
    # The rolling score quantiles per camera (drift alerts) cover this many seconds of frames: at 30 frames/s,
    # 5 minutes put 90 scores above the p99, so a quantile moves with the light and not with one odd fruit.
    score_window_s: float = Field(300.0, gt=0)


class UiSettings(BaseModel):
    """`inspector ui`, the operator's page: where it listens and who may give feedback."""

    host: str = "127.0.0.1"  # loopback unless told otherwise: the page shows the line's frames
    port: int = Field(8088, ge=0, le=65535)  # 0 picks a free port (tests)
    group_id: str = "inspector-ui"  # its own consumer group on alerts, evidence and scores
    # When set, feedback needs it (the page asks once and keeps it in the browser's session storage).
    feedback_token: SecretStr | None = None
    history_minutes: float = Field(10.0, gt=0, le=24 * 60)  # read back at start; also the per-camera count window
    max_alerts: int = Field(200, ge=1, le=10_000)  # alerts (and their evidence) kept in memory for the page

    @field_validator("feedback_token", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value  # compose passes an unset token as ""


class SorterSettings(BaseModel):
    """`inspector sort`: the line file that says where every camera's fruit meets its ejector, and the sorter's
    own topics, group and endpoint."""

    line_file: Path | None = None  # required by `inspector sort` (inspector/sorter/line_file.py)
    group_id: str = "sorter"  # its own consumer group on the alerts topic
    late_topic: str = "late-ejections"  # alerts that arrived after their fire time, for a re-check of the fruit
    dlq_topic: str = "defect-alerts-dlq"  # alerts the sorter cannot read, with the reason (nothing is lost)
    host: str = "127.0.0.1"  # /metrics, /healthz, /readyz
    port: int = Field(9410, ge=0, le=65535)  # 0 picks a free port (tests)
    remember_frames: int = Field(100_000, ge=100)  # frame ids kept to drop at-least-once duplicates
    reconnect_min_s: float = Field(0.5, gt=0)  # first wait before reconnecting a lost actuator; doubles ...
    reconnect_max_s: float = Field(10.0, gt=0)  # ... up to this
    # Scheduling priority: ahead of a worker that keeps the host's cores busy, an alert is decided when it arrives
    # (where the process may: CAP_SYS_NICE or `ulimit -e`; else it runs at its own and logs why).
    nice: int = Field(-5, ge=-20, le=19)


class WorkerProcessSettings(BaseModel):
    """`inspector serve` on one host: how many worker processes (each a consumer-group member with its own model),
    and how their supervisor restarts one that dies (inspector/stream/supervisor.py)."""

    processes: int = Field(1, ge=0, le=64)  # 1: one process as always, no supervisor; 0: chosen from the host
    restart_min_s: float = Field(1.0, gt=0)  # first wait before restarting a dead worker; doubles ...
    restart_max_s: float = Field(30.0, gt=0)  # ... up to this
    # SIGTERM to SIGKILL: a worker finishes and commits its batches in hand; under compose's stop_grace_period.
    stop_timeout_s: float = Field(25.0, gt=0)

    @model_validator(mode="after")
    def _backoff_grows(self) -> WorkerProcessSettings:
        if self.restart_min_s > self.restart_max_s:
            raise ValueError(f"restart_min_s ({self.restart_min_s:g}) exceeds restart_max_s ({self.restart_max_s:g})")
        return self


class FaultSettings(BaseModel):
    """Fault injection, for tests only (tests/integration/test_faults_*.py); every default is "no fault"."""

    score_delay_ms: float = Field(0.0, ge=0)  # extra sleep per frame in the score stage (a slow device)


class ProducerSettings(BaseModel):
    """Frame sources at the edge."""

    camera_id: str = "cam-1"
    fps: float = Field(30.0, ge=0)  # 0 = as fast as possible
    count: int = Field(0, ge=0)  # 0 = until the source ends or Ctrl-C
    width: int = Field(256, ge=0)  # resize at the edge; 0 keeps the source size
    height: int = Field(256, ge=0)
    jpeg_quality: int = Field(90, ge=10, le=100)
    defect_rate: float = Field(0.05, ge=0, le=1)  # synthetic source only
    deadline_ms: float = Field(300.0, ge=0)  # time to the ejector; 0 = no deadline header
    seed: int = 0
    # Frames waiting for the broker (queued or unacknowledged), all cameras together; past it the oldest are dropped.
    buffer_bytes: int = Field(64 * 1024 * 1024, ge=64 * 1024)
    stall_s: float = Field(5.0, gt=0)  # a live camera with no frame for this long is reopened
    reconnect_min_s: float = Field(0.5, gt=0)  # first wait before reopening; doubles per failed try ...
    reconnect_max_s: float = Field(10.0, gt=0)  # ... up to this
    metrics_port: int | None = Field(None, ge=0, le=65535)  # /metrics, /healthz, /readyz; None = off, 0 = any free


class Settings(BaseSettings):
    """Everything the programs can be told, from the environment (INSPECTOR_...) and the command line."""

    model_config = SettingsConfigDict(env_prefix="INSPECTOR_", env_nested_delimiter="__", extra="forbid")

    kafka: KafkaSettings = KafkaSettings()
    batch: BatchSettings = BatchSettings()
    model: ModelSettings = ModelSettings()
    limits: LimitSettings = LimitSettings()
    http: HttpSettings = HttpSettings()
    producer: ProducerSettings = ProducerSettings()
    ui: UiSettings = UiSettings()
    sorter: SorterSettings = SorterSettings()
    workers: WorkerProcessSettings = WorkerProcessSettings()
    faults: FaultSettings = FaultSettings()  # testing only
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


def load_settings(**overrides: object) -> Settings:
    """Build Settings from the environment plus explicit overrides; a bad value becomes one ConfigError line."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"bad setting {where}: {first['msg']}") from None


def prepare_torch_runtime() -> None:
    """Before torch is imported (values the operator set are kept):
    - OpenMP threads that spin while waiting fight the decode threads for the CPU cores (measured on 2 cores: a
      32-frame batch took 630 ms instead of 180 ms).
    - Every tensor of 2 MiB or more on transparent huge pages (where the kernel offers them, "madvise" or "always"):
      the model's activations are fresh memory each batch, and faulting it in 4 KiB pages cost more than the
      arithmetic on it (an out-of-place relu6 over an 8-frame batch's features 44 ms, 9 ms on huge pages; the
      worker 2.06x the frames/s on 2 cores, bench/RESULTS.md).
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def quiet_capture_library() -> None:
    """Before the first cv2.VideoCapture: FFmpeg and OpenCV print a line for every failed try to open a stream,
    which would flood the log of a producer retrying a lost camera; the producer logs each change of state
    itself. A value the operator set is kept."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")


def child_environment(**overrides: str) -> dict[str, str]:
    """This process's environment plus INSPECTOR_* overrides, for a worker started as a child process."""
    return {**os.environ, **overrides}
