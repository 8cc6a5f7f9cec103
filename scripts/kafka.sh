#!/usr/bin/env bash
# A local Apache Kafka broker without Docker: one JVM in KRaft combined mode (broker and
# controller, node 1) on loopback ports, from jars that Maven resolves from Maven Central
# (scripts/kafka/pom.xml), cached in ~/.cache/weir/kafka-<version>.
#
#   scripts/kafka.sh start [--data-dir DIR] [--port PORT] [--heap SIZE]
#       Starts the broker (formatting DIR's storage on first use) and prints
#       `bootstrap=127.0.0.1:PORT` once it serves. PORT is free on first start unless given,
#       then kept in DIR, so a restart on the same DIR keeps the address, the topics, the
#       records and the committed offsets. Already running: prints the address again.
#   scripts/kafka.sh stop [--data-dir DIR]     SIGTERM (a clean shutdown), SIGKILL after 30 s.
#   scripts/kafka.sh status [--data-dir DIR]   `running bootstrap=…` or `stopped` (exit 1).
#   scripts/kafka.sh install                   Resolves the classpath only.
#   scripts/kafka.sh classpath                 Prints the classpath (installing first).
#   scripts/kafka.sh tool CLASS ARGS...        Runs one of Kafka's tools from the same jars,
#       e.g. `tool org.apache.kafka.tools.consumer.group.ConsumerGroupCommand --describe …`.
#
# DIR defaults to $WEIR_KAFKA_DATA, else ~/.local/state/weir/kafka. The jars are cached in
# $WEIR_CACHE (default ~/.cache/weir); the Maven repository is $WEIR_MAVEN_REPO, else
# $WEIR_CACHE/m2. Java 17 and Maven come from Debian's packages
# when missing. The broker's log is DIR/broker.log, its process id DIR/broker.pid.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$HERE/kafka/pom.xml")"
CACHE="${WEIR_CACHE:-$HOME/.cache/weir}"
LIBS="$CACHE/kafka-$KAFKA_VERSION/libs"
M2="${WEIR_MAVEN_REPO:-$CACHE/m2}"

die() { echo "kafka.sh: $*" >&2; exit 1; }

apt_install() {
  local SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "kafka.sh: installing $* (Debian packages)" >&2
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null; } \
    || die "cannot install $*"
}

need_java() {
  command -v java >/dev/null 2>&1 || apt_install openjdk-17-jre-headless
  local v
  v="$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)"
  [ -n "$v" ] && [ "$v" -ge 17 ] || die "Kafka $KAFKA_VERSION needs Java 17 or later (found '${v:-none}')"
}

install() {
  need_java
  [ -f "$LIBS/.complete" ] && return 0
  command -v mvn >/dev/null 2>&1 || apt_install maven
  mkdir -p "$CACHE"
  # One resolver at a time: tests may start brokers in parallel.
  exec 9>"$CACHE/kafka-install.lock"
  flock 9
  if [ ! -f "$LIBS/.complete" ]; then
    echo "kafka.sh: resolving Apache Kafka $KAFKA_VERSION from Maven Central into $LIBS" >&2
    rm -rf "$LIBS.tmp"
    mkdir -p "$CACHE"
    if ! mvn -q -B -ntp -Dstyle.color=never -f "$HERE/kafka/pom.xml" -Dmaven.repo.local="$M2" \
      dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$LIBS.tmp" \
      > "$CACHE/kafka-install.log" 2>&1; then
      cat "$CACHE/kafka-install.log" >&2
      die "Maven could not resolve Apache Kafka $KAFKA_VERSION (see above)"
    fi
    ls "$LIBS.tmp"/kafka_2.13-*.jar >/dev/null 2>&1 || die "no kafka_2.13 jar was resolved"
    rm -rf "$LIBS"
    mv "$LIBS.tmp" "$LIBS"
    touch "$LIBS/.complete"
  fi
  flock -u 9
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

port_open() {
  python3 - "$1" <<'EOF'
import socket, sys
s = socket.socket()
s.settimeout(1)
try:
    s.connect(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
EOF
}

running_pid() {
  local pid
  [ -f "$DATA/broker.pid" ] || return 1
  pid="$(cat "$DATA/broker.pid")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -q "kafka.Kafka" "/proc/$pid/cmdline" 2>/dev/null \
    && echo "$pid"
}

log4j_config() {
  cat > "$DATA/log4j2.properties" <<'EOF'
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = ${sys:weir.kafka.log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = WARN
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = WARN
EOF
}

server_properties() {
  local port="$1" cport="$2"
  cat > "$DATA/server.properties" <<EOF
# Written by scripts/kafka.sh: one node in KRaft combined mode on loopback.
process.roles=broker,controller
node.id=1
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
controller.quorum.voters=1@127.0.0.1:$cport
log.dirs=$DATA/logs
num.partitions=1
default.replication.factor=1
# One node: the internal topics at replication factor 1, or group and transaction
# coordinators are never available (defaults are 3 replicas, min ISR 2).
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
min.insync.replicas=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
# The log cleaner's dedupe buffer is on the heap (128 MiB by default).
log.cleaner.dedupe.buffer.size=16777216
log.retention.hours=-1
log.retention.bytes=-1
log.segment.bytes=67108864
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
EOF
}

start() {
  install
  mkdir -p "$DATA"
  DATA="$(cd "$DATA" && pwd)"
  if pid="$(running_pid)"; then
    echo "bootstrap=127.0.0.1:$(cat "$DATA/port")"
    return 0
  fi
  local port cport
  if [ -f "$DATA/port" ] && [ -f "$DATA/controller.port" ]; then
    port="$(cat "$DATA/port")"
    cport="$(cat "$DATA/controller.port")"
    [ -z "$PORT" ] || [ "$PORT" = "$port" ] || die "$DATA was created for port $port, not $PORT"
  else
    port="${PORT:-$(free_port)}"
    cport="$(free_port)"
    while [ "$cport" = "$port" ]; do cport="$(free_port)"; done
    echo "$port" > "$DATA/port"
    echo "$cport" > "$DATA/controller.port"
  fi
  port_open "$port" && die "port $port is taken by another process"
  server_properties "$port" "$cport"
  log4j_config
  local cp="$LIBS/*"
  local jvm=(-Xms"$HEAP" -Xmx"$HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true
             -Dlog4j2.configurationFile="$DATA/log4j2.properties" -Dweir.kafka.log="$DATA/broker.log")
  # Format once: meta.properties in the log dir marks formatted storage, and formatting
  # again would refuse (or, with --ignore-formatted, still keep the data).
  if [ ! -f "$DATA/logs/meta.properties" ]; then
    local cluster
    cluster="$(java -cp "$cp" "${jvm[@]}" kafka.tools.StorageTool random-uuid 2>>"$DATA/broker.log" | tail -1)"
    [ -n "$cluster" ] || die "StorageTool random-uuid printed nothing; see $DATA/broker.log"
    java -cp "$cp" "${jvm[@]}" kafka.tools.StorageTool format --cluster-id "$cluster" \
      --config "$DATA/server.properties" >>"$DATA/broker.log" 2>&1 \
      || die "formatting $DATA/logs failed; see $DATA/broker.log"
  fi
  # setsid: the broker outlives this script and the terminal; its own process group.
  setsid java -cp "$cp" "${jvm[@]}" kafka.Kafka "$DATA/server.properties" \
    >>"$DATA/broker.out" 2>&1 < /dev/null &
  local pid=$!
  echo "$pid" > "$DATA/broker.pid"
  # The broker opens its listener once it can serve (a fixed port). Bounded wait.
  local deadline=$((SECONDS + ${WEIR_KAFKA_START_TIMEOUT:-120}))
  until port_open "$port"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -30 "$DATA/broker.log" "$DATA/broker.out" >&2 2>/dev/null || true
      die "the broker exited during start-up (log: $DATA/broker.log)"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      kill -9 "$pid" 2>/dev/null || true
      tail -30 "$DATA/broker.log" >&2 2>/dev/null || true
      die "the broker did not open 127.0.0.1:$port in time (log: $DATA/broker.log)"
    fi
    sleep 0.2
  done
  echo "bootstrap=127.0.0.1:$port"
}

stop() {
  local pid
  if ! pid="$(running_pid)"; then
    echo "stopped"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + 30))
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "kafka.sh: no clean shutdown in 30 s; SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  rm -f "$DATA/broker.pid"
  echo "stopped"
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
DATA="${WEIR_KAFKA_DATA:-${XDG_STATE_HOME:-$HOME/.local/state}/weir/kafka}"
PORT=""
HEAP="${WEIR_KAFKA_HEAP:-512m}"
case "$cmd" in
  tool)
    [ $# -ge 1 ] || die "usage: kafka.sh tool CLASS ARGS..."
    install
    exec java -Xmx256m -cp "$LIBS/*" -Dlog4j2.level=WARN -Dlog4j.rootLogger=WARN "$@"
    ;;
esac
while [ $# -gt 0 ]; do
  case "$1" in
    --data-dir) DATA="${2:?--data-dir needs a directory}"; shift 2 ;;
    --port) PORT="${2:?--port needs a number}"; shift 2 ;;
    --heap) HEAP="${2:?--heap needs a size such as 1g}"; shift 2 ;;
    *) die "unknown argument '$1' (see the comment at the top of scripts/kafka.sh)" ;;
  esac
done
case "$cmd" in
  start) start ;;
  stop) stop ;;
  status)
    if pid="$(running_pid)"; then echo "running bootstrap=127.0.0.1:$(cat "$DATA/port") pid=$pid"; else echo stopped; exit 1; fi ;;
  install) install ;;
  classpath) install; echo "$LIBS/*" ;;
  *) die "usage: kafka.sh start|stop|status|install|classpath|tool [--data-dir DIR] [--port PORT] [--heap SIZE]" ;;
esac
