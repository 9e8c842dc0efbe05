#!/usr/bin/env bash
# Packs what the benchmarks need on a GPU machine that has Python and torch but no Java, no Kafka and no
# network (an air-gapped line PC, or a lent benchmark box): a trimmed Java 17 runtime (jlink), the Kafka
# broker's jars (natives for other platforms dropped, stored uncompressed so xz packs them as one stream)
# and the few Python wheels the worker needs beyond torch/OpenCV/prometheus-client. About 40 MB.
#
#   make kafka && bench/offline_bundle.sh [.offline]      then on the GPU box: bench/gpu_run.sh [.offline]
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-.offline}
py=${PYTHON_VERSION:-3.12}
[ -n "$(ls deploy/kafka/lib/kafka_2.13-*.jar 2>/dev/null)" ] || { echo "no Kafka jars: run 'make kafka' first" >&2; exit 1; }
command -v jlink >/dev/null || { echo "jlink not found: needs a JDK 17+" >&2; exit 1; }
rm -rf "$dest" && mkdir -p "$dest/whl"
work=$(mktemp -d) && trap 'rm -rf "$work"' EXIT

jlink --add-modules java.base,java.desktop,java.instrument,java.logging,java.management,java.management.rmi,\
java.naming,java.net.http,java.rmi,java.scripting,java.security.jgss,java.security.sasl,java.sql,java.xml,\
jdk.crypto.ec,jdk.management,jdk.unsupported,jdk.security.auth,jdk.security.jgss,jdk.naming.dns,jdk.zipfs,jdk.jfr \
  --strip-debug --no-header-files --no-man-pages --output "$work/jre"
strip --strip-unneeded "$work/jre/lib/server/libjvm.so" 2>/dev/null || true
tar -C "$work" -cf - jre | xz -T0 -6 > "$dest/jre.tar.xz"

mkdir -p "$work/lib"
for jar in deploy/kafka/lib/*.jar; do
  name=$(basename "$jar"); x="$work/x"; rm -rf "$x"; mkdir "$x"; (cd "$x" && unzip -q "$OLDPWD/$jar")
  case $name in
    zstd-jni-*) find "$x" -maxdepth 3 \( -name '*.so' -o -name '*.dll' -o -name '*.dylib' \) ! -path "$x/linux/amd64/*" -delete ;;
    snappy-java-*) find "$x/org/xerial/snappy/native" -type f ! -path '*/Linux/x86_64/*' -delete ;;
  esac
  (cd "$x" && zip -q -0 -r -X "$work/lib/$name" .)
done
tar -C "$work" -cf - lib | xz -T0 -6 > "$dest/kafka-lib.tar.xz"

# The pins in pyproject.toml, as wheels for CPython $py on x86-64 Linux.
pins=$(python3 - <<'PY'
import re, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
deps = project["dependencies"] + project["optional-dependencies"]["confluent"]
want = ("kafka-python", "pydantic", "pydantic-settings", "crc32c", "confluent-kafka")
print(" ".join(d.split(";")[0].split("#")[0].strip() for d in deps if re.split("[=<>]", d)[0] in want))
PY
)
extra="pydantic-core==$(.venv/bin/python -c 'import pydantic_core; print(pydantic_core.__version__)') \
annotated-types==$(.venv/bin/python -c 'from importlib.metadata import version; print(version("annotated-types"))') \
typing-inspection==$(.venv/bin/python -c 'from importlib.metadata import version; print(version("typing-inspection"))') \
python-dotenv==$(.venv/bin/python -c 'from importlib.metadata import version; print(version("python-dotenv"))') \
typing-extensions==$(.venv/bin/python -c 'from importlib.metadata import version; print(version("typing-extensions"))')"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d "$dest/whl" $pins $extra
du -sh "$dest"
