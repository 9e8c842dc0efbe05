"""`inspector COMMAND`: serve | sort | ui | train | calibrate | evaluate | denoise | synth | demo | topics |
standin-plc | kafka-health.

Settings come from INSPECTOR_* environment variables (see inspector/settings.py); flags override them.
A bad setting, a missing file or an unreachable broker ends the program with one line and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys

from inspector.errors import ConfigError, InspectorError, TransportError
from inspector.process import configure_logging
from inspector.settings import Settings, load_settings, prepare_torch_runtime
from inspector.training.commands import add_model_commands

log = logging.getLogger("inspector")


def _settings(args: argparse.Namespace) -> Settings:
    kafka = {k: v for k, v in {"bootstrap_servers": getattr(args, "bootstrap_servers", None),
                               "group_id": getattr(args, "group_id", None)}.items() if v is not None}
    model = {k: v for k, v in {"path": getattr(args, "model", None), "device": getattr(args, "device", None)
                               }.items() if v is not None}
    http = {"port": args.metrics_port} if getattr(args, "metrics_port", None) is not None else {}
    ui = {k: v for k, v in {"host": getattr(args, "host", None), "port": getattr(args, "port", None)}.items()
          if v is not None}
    sorter = {k: v for k, v in {"line_file": getattr(args, "line", None),
                                "port": getattr(args, "sorter_metrics_port", None)}.items() if v is not None}
    workers = {"processes": args.processes} if getattr(args, "processes", None) is not None else {}
    log_level = {"log_level": args.log_level} if getattr(args, "log_level", None) else {}
    return load_settings(kafka=kafka, model=model, http=http, ui=ui, sorter=sorter, workers=workers, **log_level)


def cmd_serve(_args: argparse.Namespace, settings: Settings) -> int:
    from inspector.stream.supervisor import Supervisor, worker_processes

    processes = worker_processes(settings)
    if processes == 1:
        from inspector.stream.serve import serve

        return serve(settings)
    return Supervisor(settings, processes).run()


def cmd_sort(_args: argparse.Namespace, settings: Settings) -> int:
    from inspector.sorter.serve import serve_sorter

    return serve_sorter(settings)


def cmd_standin_plc(args: argparse.Namespace, _settings: Settings) -> int:
    from inspector.sorter.standin_plc import run_standin_plc

    return run_standin_plc(args.host, args.port)


def cmd_ui(_args: argparse.Namespace, settings: Settings) -> int:
    from inspector.ui.app import serve_ui

    return serve_ui(settings)


def cmd_kafka_health(args: argparse.Namespace, settings: Settings) -> int:
    from inspector.kafka_health.serve import serve_kafka_health

    return serve_kafka_health(settings, interval_s=args.interval)


def cmd_topics(args: argparse.Namespace, settings: Settings) -> int:
    from inspector.kafka.kafka_python.clients import create_topics

    s, sorter = settings.kafka, settings.sorter
    create_topics(s, {s.frames_topic: args.frames_partitions, s.alerts_topic: 1, s.scores_topic: 1,
                      s.dlq_topic: 1, s.evidence_topic: 1, s.feedback_topic: 1, s.ejections_topic: 1,
                      sorter.late_topic: 1, sorter.dlq_topic: 1})
    print(f"topics ready on {s.bootstrap_servers}")
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from inspector.demo import run_demo

    return run_demo(settings, seconds=args.seconds, fps=args.fps, defect_rate=args.defect_rate,
                    kafka_nodes=args.kafka_nodes)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="inspector", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR (log_level)")
    sub = p.add_subparsers(dest="command", required=True)

    def with_kafka(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (kafka.bootstrap_servers)")
        sp.add_argument("--group-id")

    def with_model(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--model", help="model file (model.path)")
        sp.add_argument("--device", choices=["auto", "cpu", "cuda"])

    sp = sub.add_parser("serve", help="run a worker: consume frames, publish alerts and scores")
    with_kafka(sp)
    with_model(sp)
    sp.add_argument("--metrics-port", type=int)
    sp.add_argument("--processes", type=int, help="worker processes on this host, one consumer-group member each, "
                    "behind one metrics port (workers.processes): 1 (default) one process, 0 chosen from the cores "
                    "and the GPU")
    sp.set_defaults(func=cmd_serve)

    sp = sub.add_parser("sort", help="run the sorter: alerts in, one on-time ejection per defective object out")
    sp.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (kafka.bootstrap_servers)")
    sp.add_argument("--line", help="the line file, .yaml or .toml (sorter.line_file)")
    sp.add_argument("--metrics-port", dest="sorter_metrics_port", type=int, help="/metrics, /healthz, /readyz "
                    "(sorter.port)")
    sp.set_defaults(func=cmd_sort)

    sp = sub.add_parser("standin-plc", help="a Modbus TCP server standing in for the PLC (demo, tests, compose): "
                        "logs every coil change")
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=5020)
    sp.set_defaults(func=cmd_standin_plc)

    sp = sub.add_parser("ui", help="the operator's web page: live alerts with evidence, and feedback")
    sp.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (kafka.bootstrap_servers)")
    sp.add_argument("--host", help="address to listen on (ui.host; 127.0.0.1 unless told otherwise)")
    sp.add_argument("--port", type=int, help="port (ui.port)")
    sp.set_defaults(func=cmd_ui)

    sp = sub.add_parser("kafka-health", help="probe the Kafka cluster every few seconds: brokers, under-replicated "
                        "and offline partitions on /metrics for Prometheus")
    sp.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (kafka.bootstrap_servers)")
    sp.add_argument("--metrics-port", type=int, help="/metrics, /healthz, /readyz (http.port; http.host)")
    sp.add_argument("--interval", type=float, default=5.0, help="seconds between probes (default 5)")
    sp.set_defaults(func=cmd_kafka_health)

    sp = sub.add_parser("topics", help="create the topics if missing")
    with_kafka(sp)
    sp.add_argument("--frames-partitions", type=int, default=4)
    sp.set_defaults(func=cmd_topics)

    add_model_commands(sub, with_model, with_kafka)

    sp = sub.add_parser("demo", help="local broker + a belt of bananas on two lanes + worker + sorter and stand-in PLC, "
                        "then a summary of what left the belt")
    with_model(sp)
    sp.add_argument("--seconds", type=float, default=20.0, help="how long the belt runs")
    sp.add_argument("--fps", type=float, default=15.0,
                    help="each lane's camera rate; two lanes at 15 leave the default model headroom on 2 CPU cores")
    sp.add_argument("--defect-rate", type=float, default=0.05)
    sp.add_argument("--kafka-nodes", type=int, default=1,
                    help="local Kafka nodes; 3 runs a replicated cluster (replication factor 3, min in-sync replicas 2)")
    sp.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    prepare_torch_runtime()
    args = build_parser().parse_args(argv)
    try:
        settings = _settings(args)
        configure_logging(settings.log_level)
        return int(args.func(args, settings))
    except (ConfigError, TransportError, InspectorError) as exc:
        print(f"inspector {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
