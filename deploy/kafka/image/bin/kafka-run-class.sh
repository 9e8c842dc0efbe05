#!/bin/sh
# kafka-run-class.sh MAIN_CLASS ARGS...: the JVM with every jar of /opt/kafka/libs, as Kafka's own script.
exec java ${KAFKA_HEAP_OPTS:--Xmx256m} -XX:+UseG1GC -Djava.awt.headless=true \
  -Dlog4j2.configurationFile=/opt/kafka/config/${KAFKA_LOG4J_FILE:-tools-log4j2.properties} \
  ${KAFKA_OPTS:-} -cp '/opt/kafka/libs/*' "$@"
