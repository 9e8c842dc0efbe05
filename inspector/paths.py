"""Where the repository's own files are (the default model, the Kafka jars, the deploy files)."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO_ROOT / "models" / "banana-ae-v1.safetensors"
KAFKA_LIB = REPO_ROOT / "deploy" / "kafka" / "lib"
