#!/usr/bin/env bash
# Local Apache Kafka broker for development and tests.
#
# Runs a single-node KRaft broker (combined broker + controller) from the Maven Central jars
# listed in kafka/pom.xml. No Kafka tarball or container is needed: Java 17+ and Maven are.
# Run `kafka/broker.sh --help` for usage.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
POM="$SCRIPT_DIR/pom.xml"
KAFKA_VERSION="4.3.1"

HOST="127.0.0.1"
PORT="${KAFKA_PORT:-9092}"
CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
STATE_DIR="${KAFKA_STATE_DIR:-$REPO_ROOT/.kafka}"
START_TIMEOUT="${KAFKA_START_TIMEOUT:-60}"
STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"
LOCK_TIMEOUT="${KAFKA_LOCK_TIMEOUT:-300}"
HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xmx512m}"
# Start-up oriented JVM flags: with them a cold start is ~0.5 s faster than with Kafka's
# default G1 flags (measured on a 2-core machine). Override to tune.
JVM_PERF_OPTS="${KAFKA_JVM_PERFORMANCE_OPTS:--XX:+UseSerialGC -XX:TieredStopAtLevel=1}"
LOG_LEVEL="${KAFKA_LOG_LEVEL:-INFO}"
USE_CDS="${KAFKA_CDS:-1}"
# Opt-in secure listeners beside PLAINTEXT (unset: none, the broker is as without them).
SSL_PORT="${KAFKA_SSL_PORT:-}"
SASL_PORT="${KAFKA_SASL_PORT:-}"
SCRAM_USER="${KAFKA_SCRAM_USER:-rpc}"
SCRAM_PASSWORD="${KAFKA_SCRAM_PASSWORD:-rpc-secret}"
SCRAM_MECHANISMS=(SCRAM-SHA-256 SCRAM-SHA-512)
SECURE_PORTS=()
if [[ -n "$SSL_PORT" ]]; then SECURE_PORTS+=("$SSL_PORT"); fi
if [[ -n "$SASL_PORT" ]]; then SECURE_PORTS+=("$SASL_PORT"); fi

# Node of a cluster (kafka/cluster.sh sets these; the defaults are the single-node broker).
NODE_ID="${KAFKA_NODE_ID:-1}"
QUORUM_VOTERS="${KAFKA_QUORUM_VOTERS:-$NODE_ID@$HOST:$CONTROLLER_PORT}"
REPLICATION="${KAFKA_REPLICATION:-1}"
INTERNAL_PARTITIONS="${KAFKA_INTERNAL_PARTITIONS:-1}"
EXTRA_PROPERTIES="${KAFKA_EXTRA_PROPERTIES:-}"

LIBS_DIR="${KAFKA_LIBS_DIR:-$STATE_DIR/libs}"
DATA_DIR="$STATE_DIR/data"
PROPS="$STATE_DIR/server.properties"
LOG4J_CONF="$STATE_DIR/log4j2.properties"
LOG_FILE="$STATE_DIR/broker.log"
PID_FILE="$STATE_DIR/broker.pid"
LOCK_FILE="$STATE_DIR/broker.lock"
# AppCDS archive of the broker's classes: written when the first broker exits cleanly
# ('down'), used by later starts (cold start ~2.1 s -> ~1.3 s on a 2-core machine).
CDS_ARCHIVE="$STATE_DIR/broker.jsa"
CDS_STAMP="$STATE_DIR/broker.jsa.stamp"
POM_STAMP="$LIBS_DIR/.pom.sha256"
# TLS material of the secure listeners, made once by ensure_tls: clients trust CA_FILE.
TLS_DIR="$STATE_DIR/tls"
CA_FILE="$TLS_DIR/ca.pem"
SERVER_KEYSTORE="$TLS_DIR/server-keystore.pem"
# Hash of the SCRAM user, password and mechanisms the storage or broker has (never the password).
SCRAM_STAMP="$STATE_DIR/scram.sha256"

# Main classes in kafka_2.13 4.3.1 (checked: StorageTool is still the Scala kafka.tools.StorageTool).
BROKER_MAIN="kafka.Kafka"
STORAGE_TOOL_MAIN="kafka.tools.StorageTool"
CONFIG_COMMAND_MAIN="kafka.admin.ConfigCommand"
# Line KafkaRaftServer logs once the broker and controller are up.
STARTED_PATTERN="Kafka Server started"

usage() {
    cat <<EOF
Usage: kafka/broker.sh <command>

Local single-node Apache Kafka $KAFKA_VERSION broker (KRaft, combined broker + controller),
run from Maven Central jars. Needs Java 17+ and Maven (only the first time, to fetch jars).

Commands:
  up        Start the broker in the background, or reuse the one already running; waits
            until it accepts connections. Safe to run concurrently (serialised by a lock).
  libs      Fetch the Kafka jars into the state dir (or KAFKA_LIBS_DIR) and start nothing.
  down      Stop the broker (SIGTERM, then SIGKILL after ${STOP_TIMEOUT}s). Fine if not running.
  status    Print whether the broker is running; exit 0 if it is, 1 if not.
  logs      Print the end of the broker log. Options: -f (follow), -n N (lines, default 100).
  -h, --help  Show this help.

Environment:
  KAFKA_BOOTSTRAP_SERVERS  If set, use that Kafka instead: start nothing, only check that the
                           first host:port accepts TCP connections (up/status).
  KAFKA_PORT               Broker port on $HOST (default 9092).
  KAFKA_CONTROLLER_PORT    KRaft controller port on $HOST (default 9093).
  KAFKA_STATE_DIR          Jars, data, config, log and pid file (default <repo>/.kafka).
  KAFKA_START_TIMEOUT      Seconds to wait for the broker to start (default 60).
  KAFKA_HEAP_OPTS          JVM heap flags (default -Xmx512m).
  KAFKA_JVM_PERFORMANCE_OPTS  GC/JIT flags (default -XX:+UseSerialGC -XX:TieredStopAtLevel=1).
  KAFKA_OPTS               Extra JVM flags for the broker.
  KAFKA_LOG_LEVEL          Root log level of the broker log (default INFO).
  KAFKA_CDS                1 (default): keep a class-data-sharing archive of the broker in the
                           state dir for faster starts (made on the first clean 'down'); 0: off.
  JAVA_HOME                Java to use (default: java on PATH).

Cluster nodes (kafka/cluster.sh sets these for each of its nodes):
  KAFKA_NODE_ID            KRaft node id (default 1).
  KAFKA_QUORUM_VOTERS      controller.quorum.voters (default: this node alone).
  KAFKA_CLUSTER_ID         Cluster id to format new storage with (default: made once per state dir).
  KAFKA_REPLICATION        Replicas of internal topics and of auto-created topics (default 1);
                           min.insync.replicas is 2 from 3 replicas up, else 1.
  KAFKA_INTERNAL_PARTITIONS  Partitions of the offsets and transaction-state topics (default 1).
  KAFKA_LIBS_DIR           Where the jars are (default \$KAFKA_STATE_DIR/libs).
  KAFKA_EXTRA_PROPERTIES   Lines appended to server.properties (a later key wins).

Secure listeners (opt-in, beside the PLAINTEXT one; for testing TLS and SASL clients):
  KAFKA_SSL_PORT           Add an SSL listener on $HOST:\$KAFKA_SSL_PORT (TLS, no client
                           certificate). Its server certificate (IP 127.0.0.1, DNS localhost)
                           is signed by a CA made with openssl in \$KAFKA_STATE_DIR/tls/ on the
                           first secure 'up'; clients trust \$KAFKA_STATE_DIR/tls/ca.pem.
  KAFKA_SASL_PORT          Add a SASL_SSL listener on $HOST:\$KAFKA_SASL_PORT: TLS as above,
                           then SCRAM-SHA-512 or SCRAM-SHA-256 authentication.
  KAFKA_SCRAM_USER         SCRAM user (default rpc).
  KAFKA_SCRAM_PASSWORD     Its password (default rpc-secret). For local testing only: Kafka's
                           tools get it on their command line.
                           User and password: letters, digits, '.', '_', '-'. The user is
                           created when the storage is formatted; if the storage already
                           exists, or the user or password changed, 'up' adds or updates it
                           (Kafka's ConfigCommand, a few seconds more, once).
  With either port set, 'up' also prints the secure bootstrap addresses and the CA file.
  The inter-broker and controller listeners stay PLAINTEXT.

Bootstrap address of the local broker: $HOST:\$KAFKA_PORT (default $HOST:9092).
EOF
}

log() { echo "kafka: $*"; }
err() { echo "kafka: error: $*" >&2; }
die() { err "$*"; exit 1; }

JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"

# port_open HOST PORT: true if a TCP connection succeeds within 2 seconds.
port_open() {
    # shellcheck disable=SC2016  # $0/$1 expand in the inner bash
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null
}

# is_our_broker PID: the process is alive and is kafka.Kafka run with this state dir's config.
is_our_broker() {
    local pid="$1" cmdline
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
    [[ "$cmdline" == *" $BROKER_MAIN $PROPS"* ]]
}

# broker_pid: print the pid of the broker started from this state dir, if it is running.
broker_pid() {
    local pid=""
    if [[ -f "$PID_FILE" ]]; then
        pid="$(tr -dc '0-9' <"$PID_FILE" 2>/dev/null || true)"
        if is_our_broker "$pid"; then
            echo "$pid"
            return 0
        fi
    fi
    # Pid file lost or stale: look for a broker running with our server.properties.
    for pid in $(pgrep -f -- "$BROKER_MAIN $PROPS" 2>/dev/null || true); do
        if is_our_broker "$pid"; then
            echo "$pid" >"$PID_FILE"
            echo "$pid"
            return 0
        fi
    done
    return 1
}

take_lock() {
    mkdir -p "$STATE_DIR"
    exec 9>>"$LOCK_FILE"
    if ! flock -n 9; then
        log "waiting for another broker.sh in $STATE_DIR (lock $LOCK_FILE)..."
        flock -w "$LOCK_TIMEOUT" 9 || die "could not get the lock $LOCK_FILE within ${LOCK_TIMEOUT}s"
    fi
}

# external_check: with KAFKA_BOOTSTRAP_SERVERS set, check its first host:port.
external_check() {
    local first="${KAFKA_BOOTSTRAP_SERVERS%%,*}" host port
    first="${first#*://}"          # drop a PLAINTEXT:// style prefix
    first="${first// /}"
    if [[ "$first" =~ ^\[([^]]+)\]:([0-9]+)$ ]]; then
        host="${BASH_REMATCH[1]}"; port="${BASH_REMATCH[2]}"
    elif [[ "$first" =~ ^([^:]+):([0-9]+)$ ]]; then
        host="${BASH_REMATCH[1]}"; port="${BASH_REMATCH[2]}"
    else
        die "KAFKA_BOOTSTRAP_SERVERS='$KAFKA_BOOTSTRAP_SERVERS': expected host:port[,host:port...]"
    fi
    if port_open "$host" "$port"; then
        log "using external Kafka at $KAFKA_BOOTSTRAP_SERVERS ($host:$port accepts connections)"
    else
        die "KAFKA_BOOTSTRAP_SERVERS is set but $host:$port does not accept connections; start that Kafka, or unset KAFKA_BOOTSTRAP_SERVERS to use the local broker"
    fi
}

check_java() {
    command -v "$JAVA" >/dev/null 2>&1 || die "java not found (install Java 17+ or set JAVA_HOME)"
    local v
    v="$("$JAVA" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1)"
    if [[ -n "$v" && "$v" -lt 17 ]]; then
        die "Kafka $KAFKA_VERSION needs Java 17+, found Java $v ($JAVA)"
    fi
}

pom_hash() { sha256sum "$POM" | cut -d' ' -f1; }

secure() { ((${#SECURE_PORTS[@]})); }

# check_secure_settings: the secure listeners' settings are usable, or die saying which is not.
check_secure_settings() {
    local name value
    for name in KAFKA_SSL_PORT KAFKA_SASL_PORT; do
        value="${!name:-}"
        if [[ -n "$value" ]] && ! [[ "$value" =~ ^[0-9]{1,5}$ && "$value" -ge 1 && "$value" -le 65535 ]]; then
            die "$name='$value' is not a TCP port (1-65535)"
        fi
    done
    secure || return 0
    local ports=("$PORT" "$CONTROLLER_PORT" "${SECURE_PORTS[@]}")
    if [[ "$(printf '%s\n' "${ports[@]}" | sort -u | wc -l)" -ne "${#ports[@]}" ]]; then
        die "KAFKA_PORT, KAFKA_CONTROLLER_PORT, KAFKA_SSL_PORT and KAFKA_SASL_PORT must differ (got ${ports[*]})"
    fi
    if [[ -n "$SASL_PORT" ]]; then
        # They go into StorageTool's and kafka-configs' 'SCRAM-SHA-512=[name=U,password=P]' syntax.
        [[ "$SCRAM_USER" =~ ^[A-Za-z0-9._-]+$ ]] \
            || die "KAFKA_SCRAM_USER='$SCRAM_USER': use letters, digits, '.', '_', '-'"
        [[ "$SCRAM_PASSWORD" =~ ^[A-Za-z0-9._-]+$ ]] \
            || die "KAFKA_SCRAM_PASSWORD: use letters, digits, '.', '_', '-' (value not shown)"
    fi
    if [[ ! -s "$CA_FILE" || ! -s "$SERVER_KEYSTORE" ]]; then
        command -v openssl >/dev/null 2>&1 || die "openssl is needed to make the TLS certificates of KAFKA_SSL_PORT / KAFKA_SASL_PORT"
    fi
}

# listeners_value / advertised_value / protocol_map: the listener settings of server.properties.
# Without KAFKA_SSL_PORT / KAFKA_SASL_PORT they are the plain single-listener ones.
listeners_value() {
    local value="PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT"
    if [[ -n "$SSL_PORT" ]]; then value+=",SSL://$HOST:$SSL_PORT"; fi
    if [[ -n "$SASL_PORT" ]]; then value+=",SASL_SSL://$HOST:$SASL_PORT"; fi
    echo "$value"
}

advertised_value() {
    local value="PLAINTEXT://$HOST:$PORT"
    if [[ -n "$SSL_PORT" ]]; then value+=",SSL://$HOST:$SSL_PORT"; fi
    if [[ -n "$SASL_PORT" ]]; then value+=",SASL_SSL://$HOST:$SASL_PORT"; fi
    echo "$value"
}

protocol_map() {
    local value="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
    if [[ -n "$SSL_PORT" ]]; then value+=",SSL:SSL"; fi
    if [[ -n "$SASL_PORT" ]]; then value+=",SASL_SSL:SASL_SSL"; fi
    echo "$value"
}

# ensure_tls: a CA and a server certificate it signs (IP 127.0.0.1, DNS localhost), made once.
# The broker reads the PEM key and chain from SERVER_KEYSTORE; clients trust CA_FILE.
ensure_tls() {
    if [[ -s "$CA_FILE" && -s "$SERVER_KEYSTORE" ]]; then
        return 0
    fi
    log "making a local CA and server certificate in $TLS_DIR"
    local tmp="$TLS_DIR.tmp"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    if ! (
        set -e
        umask 077
        cd "$tmp"
        cat >server.ext <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:$HOST,DNS:localhost
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid,issuer
EOF
        openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
            -subj "/CN=kafka-grpc-adapter local broker CA" -keyout ca.key -out ca.pem \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
        openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -subj "/CN=localhost" -keyout server.key -out server.csr
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -set_serial "0x$(openssl rand -hex 16)" \
            -days 3650 -extfile server.ext -out server.pem
        # Kafka's PEM key store wants an unencrypted PKCS#8 key followed by the chain.
        openssl pkcs8 -topk8 -nocrypt -in server.key -out server.p8
        cat server.p8 server.pem ca.pem >server-keystore.pem
        rm -f server.csr server.ext server.p8
        chmod 644 ca.pem server.pem
    ) >"$STATE_DIR/openssl.log" 2>&1; then
        cat "$STATE_DIR/openssl.log" >&2
        rm -rf "$tmp"
        die "openssl could not make the TLS certificates (output above)"
    fi
    rm -rf "$TLS_DIR"
    mv "$tmp" "$TLS_DIR"
}

# scram_fingerprint: what the SCRAM user should be, as a hash (the password is not written out).
scram_fingerprint() {
    printf '%s\n' "$SCRAM_USER" "$SCRAM_PASSWORD" "${SCRAM_MECHANISMS[@]}" | sha256sum | cut -d' ' -f1
}

tool_jvm_opts() {
    printf '%s\n' -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC \
        "-Dlog4j2.configurationFile=$LOG4J_CONF" -Dkafka.root.logger.level=WARN -cp "$LIBS_DIR/*"
}

# ensure_scram_user: on a running broker whose storage was formatted without this SCRAM user
# (or with another password), add or update it through the PLAINTEXT listener.
ensure_scram_user() {
    [[ -n "$SASL_PORT" ]] || return 0
    local want
    want="$(scram_fingerprint)"
    if [[ -f "$SCRAM_STAMP" && "$(cat "$SCRAM_STAMP")" == "$want" ]]; then
        return 0
    fi
    log "adding SCRAM user '$SCRAM_USER' (${SCRAM_MECHANISMS[*]}) to the running broker"
    local opts=() mechanism
    mapfile -t opts < <(tool_jvm_opts)
    # One mechanism per call: Kafka refuses to alter a user's credentials twice in one request.
    for mechanism in "${SCRAM_MECHANISMS[@]}"; do
        if ! "$JAVA" "${opts[@]}" "$CONFIG_COMMAND_MAIN" --bootstrap-server "$HOST:$PORT" --alter \
                --entity-type users --entity-name "$SCRAM_USER" \
                --add-config "$mechanism=[password=$SCRAM_PASSWORD]" >"$STATE_DIR/scram.log" 2>&1; then
            # Its error message repeats the arguments, password included.
            sed -i "s/$SCRAM_PASSWORD/***/g" "$STATE_DIR/scram.log"
            cat "$STATE_DIR/scram.log" >&2
            die "could not add the SCRAM user '$SCRAM_USER' (output above, also in $STATE_DIR/scram.log)"
        fi
    done
    echo "$want" >"$SCRAM_STAMP"
}

# print_addresses: where clients connect (the first line is what callers have always parsed).
print_addresses() {
    echo "bootstrap servers: $HOST:$PORT"
    if [[ -n "$SSL_PORT" ]]; then
        echo "ssl bootstrap servers: $HOST:$SSL_PORT (security_protocol=SSL, ssl_cafile=$CA_FILE)"
    fi
    if [[ -n "$SASL_PORT" ]]; then
        echo "sasl_ssl bootstrap servers: $HOST:$SASL_PORT (security_protocol=SASL_SSL," \
            "sasl_mechanism=SCRAM-SHA-512 or SCRAM-SHA-256, user $SCRAM_USER, ssl_cafile=$CA_FILE)"
    fi
}

ensure_libs() {
    local want
    want="$(pom_hash)"
    if [[ -d "$LIBS_DIR" && -f "$POM_STAMP" && "$(cat "$POM_STAMP")" == "$want" ]] \
        && compgen -G "$LIBS_DIR/kafka_2.13-*.jar" >/dev/null; then
        return 0
    fi
    command -v mvn >/dev/null 2>&1 || die "Maven (mvn) is needed to fetch the Kafka jars; install it (e.g. apt-get install maven)"
    log "fetching Apache Kafka $KAFKA_VERSION jars with Maven (first time only)..."
    local tmp="$LIBS_DIR.tmp"
    rm -rf "$tmp"
    if ! mvn -q -B -Dstyle.color=never -f "$POM" dependency:copy-dependencies \
            -DoutputDirectory="$tmp" -DincludeScope=runtime >"$STATE_DIR/mvn.log" 2>&1; then
        tail -n 40 "$STATE_DIR/mvn.log" >&2 || true
        die "Maven could not fetch the Kafka jars (full output: $STATE_DIR/mvn.log)"
    fi
    compgen -G "$tmp/kafka_2.13-*.jar" >/dev/null || die "Maven ran but $tmp has no kafka_2.13 jar"
    echo "$want" >"$tmp/.pom.sha256"
    rm -rf "$LIBS_DIR"
    rm -f "$CDS_ARCHIVE" "$CDS_STAMP"
    mv "$tmp" "$LIBS_DIR"
    log "jars in $LIBS_DIR ($(find "$LIBS_DIR" -name '*.jar' | wc -l) files)"
}

# min_isr: min.insync.replicas for REPLICATION replicas (2 of 3 keeps writing with one node down).
min_isr() {
    if ((REPLICATION >= 3)); then echo 2; else echo 1; fi
}

write_config() {
    mkdir -p "$DATA_DIR"
    cat >"$PROPS.tmp" <<EOF
# Written by kafka/broker.sh on every 'up'; edit the script, not this file.
# Single-node KRaft: this process is both broker and controller.
process.roles=broker,controller
node.id=$NODE_ID
controller.quorum.voters=$QUORUM_VOTERS
listeners=$(listeners_value)
advertised.listeners=$(advertised_value)
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=$(protocol_map)
log.dirs=$DATA_DIR

# Replicas of internal and auto-created topics: 1 for the single broker, 3 in kafka/cluster.sh.
offsets.topic.replication.factor=$REPLICATION
transaction.state.log.replication.factor=$REPLICATION
transaction.state.log.min.isr=$(min_isr)
share.coordinator.state.topic.replication.factor=$REPLICATION
share.coordinator.state.topic.min.isr=$(min_isr)
default.replication.factor=$REPLICATION
min.insync.replicas=$(min_isr)
# Fewer internal partitions: faster first consumer-group / transaction use.
offsets.topic.num.partitions=$INTERNAL_PARTITIONS
transaction.state.log.num.partitions=$INTERNAL_PARTITIONS

# Development defaults.
auto.create.topics.enable=true
num.partitions=1
group.initial.rebalance.delay.ms=0
# Consumer-protocol groups (KIP-848): let a group ask for a session timeout as short as a classic
# group's (handlers set theirs, 10 s by default), and reconcile assignments within a second.
group.consumer.min.session.timeout.ms=6000
group.consumer.min.heartbeat.interval.ms=500
group.consumer.heartbeat.interval.ms=1000
EOF
    if [[ -n "$EXTRA_PROPERTIES" ]]; then
        printf '\n# KAFKA_EXTRA_PROPERTIES\n%s\n' "$EXTRA_PROPERTIES" >>"$PROPS.tmp"
    fi
    if secure; then
        cat >>"$PROPS.tmp" <<EOF

# Secure listeners (KAFKA_SSL_PORT / KAFKA_SASL_PORT): TLS without client certificates.
ssl.keystore.type=PEM
ssl.keystore.location=$SERVER_KEYSTORE
ssl.client.auth=none
EOF
    fi
    if [[ -n "$SASL_PORT" ]]; then
        local mechanism
        cat >>"$PROPS.tmp" <<EOF
# SASL_SSL: SCRAM users live in the cluster metadata (StorageTool --add-scram, kafka-configs).
sasl.enabled.mechanisms=$(IFS=,; echo "${SCRAM_MECHANISMS[*]}")
EOF
        for mechanism in "${SCRAM_MECHANISMS[@]}"; do
            echo "listener.name.sasl_ssl.${mechanism,,}.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;" >>"$PROPS.tmp"
        done
    fi
    mv "$PROPS.tmp" "$PROPS"

    cat >"$LOG4J_CONF" <<'EOF'
# Written by kafka/broker.sh. The broker's stdout/stderr go to broker.log.
status = warn
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.target = SYSTEM_OUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = ${sys:kafka.root.logger.level:-INFO}
rootLogger.appenderRef.stdout.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = WARN
EOF
}

format_storage() {
    if [[ -f "$DATA_DIR/meta.properties" ]]; then
        return 0
    fi
    log "formatting KRaft storage in $DATA_DIR"
    local cluster_id tool_opts=() scram=() mechanism
    mapfile -t tool_opts < <(tool_jvm_opts)
    # New storage has no SCRAM users but those added here.
    rm -f "$SCRAM_STAMP"
    if [[ -n "$SASL_PORT" ]]; then
        for mechanism in "${SCRAM_MECHANISMS[@]}"; do
            scram+=(--add-scram "$mechanism=[name=$SCRAM_USER,password=$SCRAM_PASSWORD]")
        done
    fi
    if [[ -n "${KAFKA_CLUSTER_ID:-}" ]]; then
        cluster_id="$KAFKA_CLUSTER_ID"
    elif [[ -s "$STATE_DIR/cluster.id" ]]; then
        cluster_id="$(cat "$STATE_DIR/cluster.id")"
    else
        cluster_id="$("$JAVA" "${tool_opts[@]}" "$STORAGE_TOOL_MAIN" random-uuid | tail -n1 | tr -d '[:space:]')"
        [[ -n "$cluster_id" ]] || die "$STORAGE_TOOL_MAIN random-uuid printed nothing"
        echo "$cluster_id" >"$STATE_DIR/cluster.id"
    fi
    # --cluster-id=ID: an id of the user's that starts with '-' is still a value, not an option.
    if ! "$JAVA" "${tool_opts[@]}" "$STORAGE_TOOL_MAIN" format --ignore-formatted \
            --cluster-id="$cluster_id" -c "$PROPS" ${scram[@]+"${scram[@]}"} >"$STATE_DIR/format.log" 2>&1; then
        if [[ -n "$SASL_PORT" ]]; then
            sed -i "s/$SCRAM_PASSWORD/***/g" "$STATE_DIR/format.log"
        fi
        cat "$STATE_DIR/format.log" >&2
        die "formatting KRaft storage failed"
    fi
    if [[ -n "$SASL_PORT" ]]; then
        scram_fingerprint >"$SCRAM_STAMP"
    fi
}

all_ports_open() {
    local p
    for p in "$PORT" "${SECURE_PORTS[@]}"; do
        port_open "$HOST" "$p" || return 1
    done
}

# wait_ready PID: wait until the ports accept connections and the log says the server started.
wait_ready() {
    local pid="$1" start now elapsed last_print=0
    start=$SECONDS
    while :; do
        elapsed=$((SECONDS - start))
        if ! kill -0 "$pid" 2>/dev/null; then
            err "the broker process (pid $pid) exited during startup"
            return 1
        fi
        if all_ports_open && grep -q "$STARTED_PATTERN" "$LOG_FILE" 2>/dev/null; then
            return 0
        fi
        if ((elapsed >= START_TIMEOUT)); then
            err "the broker did not start within ${START_TIMEOUT}s"
            return 1
        fi
        now=$elapsed
        if ((now - last_print >= 5)); then
            log "waiting for the broker to start... ${now}s"
            last_print=$now
        fi
        sleep 0.2
    done
}

stop_pid() {
    local pid="$1" i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < STOP_TIMEOUT * 4; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.25
    done
    err "broker (pid $pid) did not stop within ${STOP_TIMEOUT}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 20; i++)); do
        kill -0 "$pid" 2>/dev/null || return 2
        sleep 0.25
    done
    return 2
}

# cds_fingerprint: what the archive depends on (jars and JVM).
cds_fingerprint() {
    { pom_hash; command -v "$JAVA"; "$JAVA" -version 2>&1; } | sha256sum | cut -d' ' -f1
}

# cds_opts: print the JVM flags for the class-data-sharing archive (one per line).
cds_opts() {
    [[ "$USE_CDS" == "1" ]] || return 0
    local fp
    fp="$(cds_fingerprint)"
    rm -f "$CDS_ARCHIVE.tmp"
    if [[ -f "$CDS_ARCHIVE" && -f "$CDS_STAMP" && "$(cat "$CDS_STAMP")" == "$fp" ]]; then
        echo "-XX:SharedArchiveFile=$CDS_ARCHIVE"
    else
        rm -f "$CDS_ARCHIVE" "$CDS_STAMP"
        # Dumped by the JVM when it exits; cds_finish() keeps it only after a clean stop.
        echo "-XX:ArchiveClassesAtExit=$CDS_ARCHIVE.tmp"
        echo "$fp" >"$CDS_STAMP.tmp"
    fi
    # Silence the harmless "Pre JDK 6 class not supported by CDS" warnings at dump time.
    echo "-Xlog:cds=error"
}

# cds_finish CLEAN: after the broker exited, keep a freshly dumped archive if it stopped cleanly.
cds_finish() {
    if [[ "$1" == "1" && -s "$CDS_ARCHIVE.tmp" && -f "$CDS_STAMP.tmp" ]]; then
        mv -f "$CDS_ARCHIVE.tmp" "$CDS_ARCHIVE"
        mv -f "$CDS_STAMP.tmp" "$CDS_STAMP"
    else
        rm -f "$CDS_ARCHIVE.tmp" "$CDS_STAMP.tmp"
    fi
}

fail_start() {
    local pid="$1"
    err "broker failed to start; its first line, start-up steps, last warnings and last 30 lines ($LOG_FILE):"
    # The steps (Kafka logs "Waiting for X" / "Finished waiting for X") say where a slow start
    # stopped; the last lines alone are often replica fetcher chatter.
    {
        head -n 1 "$LOG_FILE"
        grep -E "Waiting for|Finished waiting|Kafka Server started" "$LOG_FILE" | tail -n 20
        grep -E "\] (WARN|ERROR|FATAL) " "$LOG_FILE" | tail -n 10
        echo "..."
        tail -n 30 "$LOG_FILE"
    } >&2 2>/dev/null || true
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        stop_pid "$pid" || true
    fi
    cds_finish 0
    rm -f "$PID_FILE"
    exit 1
}

cmd_up() {
    if [[ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]]; then
        external_check
        return 0
    fi
    check_secure_settings
    take_lock

    local pid
    if pid="$(broker_pid)" && ! grep -qxF "listeners=$(listeners_value)" "$PROPS"; then
        log "broker (pid $pid) is running with other listeners ($(sed -n 's/^listeners=//p' "$PROPS")); restarting it"
        stop_pid "$pid" || true
        cds_finish 0
        rm -f "$PID_FILE"
        pid=""
    fi
    if [[ -n "$pid" ]]; then
        if all_ports_open; then
            log "broker already running (pid $pid), reusing it at $HOST:$PORT"
            ensure_scram_user
            print_addresses
            return 0
        fi
        # Ours but not listening (yet): give it the usual time, else restart it.
        log "broker process $pid is running but $HOST:$PORT is not open yet; waiting"
        if wait_ready "$pid"; then
            log "broker running (pid $pid) at $HOST:$PORT"
            ensure_scram_user
            print_addresses
            return 0
        fi
        log "restarting broker process $pid"
        stop_pid "$pid" || true
        cds_finish 0
        rm -f "$PID_FILE"
    elif [[ -f "$PID_FILE" ]]; then
        log "removing stale pid file (pid $(cat "$PID_FILE" 2>/dev/null) is not a running broker)"
        rm -f "$PID_FILE"
    fi

    local p
    for p in "$PORT" "$CONTROLLER_PORT" "${SECURE_PORTS[@]}"; do
        if port_open "$HOST" "$p"; then
            die "port $HOST:$p is already in use by another process (not a broker started from $STATE_DIR); stop it, choose other ports with KAFKA_PORT / KAFKA_CONTROLLER_PORT$(secure && echo " / KAFKA_SSL_PORT / KAFKA_SASL_PORT"), or set KAFKA_BOOTSTRAP_SERVERS to use an existing Kafka"
        fi
    done

    check_java
    ensure_libs
    if secure; then
        ensure_tls
    fi
    write_config
    format_storage

    [[ -f "$LOG_FILE" ]] && mv -f "$LOG_FILE" "$LOG_FILE.1"
    local cds=()
    mapfile -t cds < <(cds_opts)
    local t0=${EPOCHREALTIME/,/.}
    log "starting Kafka $KAFKA_VERSION broker on $HOST:$PORT (controller $HOST:$CONTROLLER_PORT)${SSL_PORT:+, SSL on $HOST:$SSL_PORT}${SASL_PORT:+, SASL_SSL on $HOST:$SASL_PORT}"
    # setsid + nohup: own session, so the broker outlives the calling shell and its process
    # group. Its stdio goes to the log, and the lock fd 9 is closed, so callers that capture
    # our output (subprocess pipes) and other 'up' calls are not held up by it.
    # shellcheck disable=SC2086
    nohup setsid "$JAVA" $HEAP_OPTS $JVM_PERF_OPTS ${cds[@]+"${cds[@]}"} \
        -Djava.awt.headless=true -Dlog4j2.shutdownHookEnabled=false \
        "-Dlog4j2.configurationFile=$LOG4J_CONF" "-Dkafka.root.logger.level=$LOG_LEVEL" \
        ${KAFKA_OPTS:-} \
        -cp "$LIBS_DIR/*" "$BROKER_MAIN" "$PROPS" \
        </dev/null >"$LOG_FILE" 2>&1 9>&- &
    pid=$!
    echo "$pid" >"$PID_FILE"

    if ! wait_ready "$pid"; then
        fail_start "$pid"
    fi
    log "broker started in $(awk -v a="$t0" -v b="${EPOCHREALTIME/,/.}" 'BEGIN { printf "%.1f", b - a }')s (pid $pid)"
    log "log: $LOG_FILE"
    ensure_scram_user
    print_addresses
}

cmd_down() {
    if [[ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]]; then
        log "KAFKA_BOOTSTRAP_SERVERS is set (external Kafka); nothing to stop"
        return 0
    fi
    if [[ ! -d "$STATE_DIR" ]]; then
        log "broker not running"
        return 0
    fi
    take_lock
    local pid
    if pid="$(broker_pid)"; then
        log "stopping broker (pid $pid)..."
        local clean=1
        stop_pid "$pid" || clean=0
        cds_finish "$clean"
        rm -f "$PID_FILE"
        log "broker stopped"
    else
        rm -f "$PID_FILE"
        log "broker not running"
    fi
}

cmd_status() {
    if [[ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]]; then
        external_check
        return 0
    fi
    local pid
    if [[ -d "$STATE_DIR" ]] && pid="$(broker_pid)"; then
        if port_open "$HOST" "$PORT"; then
            echo "running (pid $pid) at $HOST:$PORT, state $STATE_DIR"
            return 0
        fi
        echo "not running: process $pid is alive but $HOST:$PORT is not accepting connections (starting?)"
        return 1
    fi
    echo "not running (state $STATE_DIR)"
    return 1
}

cmd_logs() {
    local follow=0 lines=100
    while (($#)); do
        case "$1" in
            -f | --follow) follow=1 ;;
            -n) shift; lines="${1:?-n needs a number}" ;;
            -n*) lines="${1#-n}" ;;
            *) die "logs: unknown option '$1' (use -f, -n N)" ;;
        esac
        shift
    done
    if [[ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]]; then
        log "KAFKA_BOOTSTRAP_SERVERS is set (external Kafka); no local log"
        return 0
    fi
    [[ -f "$LOG_FILE" ]] || die "no broker log at $LOG_FILE (never started?)"
    if ((follow)); then
        exec tail -n "$lines" -F "$LOG_FILE"
    fi
    tail -n "$lines" "$LOG_FILE"
}

main() {
    local cmd="${1:-}"
    (($#)) && shift
    case "$cmd" in
        up) cmd_up "$@" ;;
        libs) check_java; take_lock; ensure_libs ;;
        down) cmd_down "$@" ;;
        status) cmd_status "$@" ;;
        logs) cmd_logs "$@" ;;
        -h | --help | help) usage ;;
        "") usage >&2; exit 2 ;;
        *) err "unknown command '$cmd'"; usage >&2; exit 2 ;;
    esac
}

main "$@"
