#!/bin/sh
# The official image's configuration rule: KAFKA_FOO_BAR=x becomes foo.bar=x (`__` stands for `_` and `___`
# for `-`); the variables that configure the JVM or the scripts are not broker properties.
set -eu
props=/opt/kafka/config/server.properties
env | grep '^KAFKA_' | while IFS='=' read -r name value; do
  case "$name" in
    KAFKA_HEAP_OPTS|KAFKA_OPTS|KAFKA_LOG4J_FILE|KAFKA_JVM_PERFORMANCE_OPTS|KAFKA_VERSION) continue ;;
  esac
  key=$(printf '%s' "${name#KAFKA_}" | tr 'A-Z' 'a-z' | sed -e 's/___/-/g' -e 's/__/\x01/g' -e 's/_/./g' -e 's/\x01/_/g')
  printf '%s=%s\n' "$key" "$value"
done > "$props"
grep -q '^log\.dirs=' "$props" || echo "log.dirs=/var/lib/kafka/data" >> "$props"

# "--cluster-id=": an id may start with "-", which the tool would read as an option.
KAFKA_LOG4J_FILE=log4j2.properties /opt/kafka/bin/kafka-run-class.sh kafka.tools.StorageTool format \
  "--cluster-id=${CLUSTER_ID:?CLUSTER_ID is required}" --config "$props" --ignore-formatted
KAFKA_HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xmx1g} KAFKA_LOG4J_FILE=log4j2.properties \
  exec /opt/kafka/bin/kafka-run-class.sh kafka.Kafka "$props"
