#!/usr/bin/env bash
# The GPU measurements in one go, on a machine with python3, torch, torchvision, OpenCV and prometheus-client
# but nothing else (no Java, no network): unpacks the bundle from bench/offline_bundle.sh, runs the GPU unit
# tests, the scoring benchmarks at 256x256 and the pipeline benchmarks through a real local Kafka broker (steps
# below). Each step has its own time limit, so one failing step still leaves the others' results.
#
#   bench/gpu_run.sh [bundle=.offline] [out=bench/out/gpu]
#   STEPS=pipeline PIPELINE_ARGS="--latency-only --batch 128" bench/gpu_run.sh   # the latency check alone, ~1 min
#   STEPS=small bench/gpu_run.sh                                                  # small batches alone, < 1 min
set -uo pipefail
cd "$(dirname "$0")/.."
bundle=${1:-.offline}
out=${2:-bench/out/gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
site=/tmp/inspector-site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
  "$bundle"/whl/*.whl || exit 1
export PYTHONPATH=$site
if ! command -v java >/dev/null; then
  tar -C /tmp -xJf "$bundle/jre.tar.xz" && export PATH=/tmp/jre/bin:$PATH
fi
if [ -z "$(ls deploy/kafka/lib/kafka_2.13-*.jar 2>/dev/null)" ]; then
  mkdir -p deploy/kafka && tar -C deploy/kafka -xJf "$bundle/kafka-lib.tar.xz"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
python3 -c "import sys, torch, torchvision, cv2; print(sys.version.split()[0], torch.__version__, torchvision.__version__, cv2.__version__, torch.cuda.is_available())"
java -version 2>&1 | head -1

# The default steps fit one 8-minute device run (each step's limit in brackets, seconds): the GPU unit tests [90],
# the score stage at small batches with CUDA graphs off and on [60], the JPEG -> score stage at batch 1024 [60],
# one worker's drain and half-capacity latency per transport [90], and the same for `inspector serve
# --processes 0` (the host's automatic number of workers) fed by two camera processes [180].
steps=" ${STEPS:-tests small scoring pipeline processes} "
[[ $steps == *" tests "* ]] && echo "== GPU unit tests" && timeout "${TESTS_TIMEOUT:-90}" python3 -m pytest -q tests/unit/test_gpu.py -p no:cacheprovider 2>&1 | tail -15
[[ $steps == *" small "* ]] && echo "== score stage, small batches, CUDA graphs off and on" && timeout "${SMALL_TIMEOUT:-60}" python3 bench/scoring.py ${SMALL_ARGS:---small-batches 1,4,16,64 --graphs both --seconds 0.7} \
  --out "$out/small_batches.json"
[[ $steps == *" scoring "* ]] && echo "== scoring benchmark" && timeout "${SCORING_TIMEOUT:-60}" python3 bench/scoring.py ${SCORING_ARGS:---input-size 256 --batch-sizes 1024 --seconds 0.7} \
  --out "$out/scoring.json"
[[ $steps == *" pipeline "* ]] && echo "== pipeline benchmark, one worker" && timeout "${PIPELINE_TIMEOUT:-90}" python3 bench/pipeline.py ${PIPELINE_ARGS:---latency-only --batch 128 --frames 6000 --latency-seconds 8} \
  --out "$out/pipeline.json"
[[ $steps == *" processes "* ]] && echo "== pipeline benchmark, worker processes" && timeout "${PROCESSES_TIMEOUT:-180}" python3 bench/pipeline.py ${PROCESSES_ARGS:---processes 0 --producers 2 --batch 128 --frames 30000 --latency-seconds 8} \
  --out "$out/processes.json"
echo "== done"
