#!/usr/bin/env bash
# POSIX conformance of a real cairn mount (STYLE 4.6).
#
# Starts SeaweedFS (weed mini) + `cairn meta serve` + `cairn mount start --foreground`, then
#   1. pjdfstest on a plain ext4 folder (control) and on the mount, compared against
#      tests/pjdfstest-exclude.txt (known failures, one reason each; the list may only get shorter);
#   2. fsx -N $FSX_OPS on a file on the mount, and at the same time on a second mount of the volume
#      with the disk cache in writeback mode (blocks of 256 KiB, files up to 1 MiB).
# Everything it starts is stopped by PID and unmounted on exit, whatever happens.
#
# Exit status: non-zero if the mount crashes or hangs (pjdfstest or fsx hit their time limit, the
# daemon dies, the mount stops answering, a cairn log shows a panic), if fsx fails, or if anything
# could not be set up. pjdfstest failures are reported but only fail the run with POSIX_STRICT=1
# (then: any failure not in the exclude list, or an excluded test that now passes).
#
# Environment: CAIRN_BIN (default target/debug/cairn), PJD_TIMEOUT (900 s), PJD_SKIP=1 (fsx only),
# FSX_OPS (100000; run 1000000 by hand), FSX_TIMEOUT (2400 s), FSX_VERBOSE=1 (fsx logs every
# operation, numbered, to fsx-NAME.txt in the work folder: the progress of a long run),
# FSX_ONLY (both; plain or writeback runs fsx on that mount alone: a 1,000,000-operation run
# uses ~37 GB of bucket, so run the two one at a time on a small disk),
# POSIX_STRICT (0), POSIX_KEEP=1 keeps the work folder,
# POSIX_RESULTS (default target/posix): where the outputs are copied.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CAIRN_BIN=${CAIRN_BIN:-$ROOT/target/debug/cairn}
PJD_TIMEOUT=${PJD_TIMEOUT:-900}
FSX_OPS=${FSX_OPS:-100000}
FSX_TIMEOUT=${FSX_TIMEOUT:-2400}
PJD_SKIP=${PJD_SKIP:-0}
FSX_ONLY=${FSX_ONLY:-both}
case $FSX_ONLY in
both | plain | writeback) ;;
*)
    echo "posix.sh: FSX_ONLY must be both, plain or writeback (got '$FSX_ONLY')" >&2
    exit 2
    ;;
esac
STRICT=${POSIX_STRICT:-0}
EXCLUDE=$ROOT/tests/pjdfstest-exclude.txt
RESULTS=${POSIX_RESULTS:-$ROOT/target/posix}
VOLUME=posix
BUCKET=cairn-posix
S3_KEY=cairn-posix-key
S3_SECRET=cairn-posix-secret

log() { echo "posix: $*"; }

for tool in weed pjdfstest fsx python3 timeout mountpoint curl; do
    command -v "$tool" >/dev/null 2>&1 || { log "missing '$tool': run scripts/setup"; exit 1; }
done
[[ -x $CAIRN_BIN ]] || { log "no cairn binary at $CAIRN_BIN: run 'cargo build' or set CAIRN_BIN"; exit 1; }
[[ $(id -u) -eq 0 ]] || { log "must run as root (FUSE, pjdfstest)"; exit 1; }

WORK=$(mktemp -d /tmp/cairn-posix.XXXXXX)
chmod 0755 "$WORK"
MNT=$WORK/mnt
mkdir -p "$MNT" "$WORK/meta" "$WORK/weed/data" "$WORK/weed/glog" "$WORK/control" "$RESULTS"
chmod 0755 "$MNT" "$WORK/control"
PIDS=()
PORTS=()
MOUNT_PID=
problems=()

# Free TCP ports in 15000..30000 (below the ephemeral range); "pair" ports p with p+10000 free too.
free_ports() { # free_ports N [PAIR_OFFSET]
    python3 - "$@" <<'EOF'
import random, socket, sys
n = int(sys.argv[1]); off = int(sys.argv[2]) if len(sys.argv) > 2 else 0
def ok(p):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); return True
    except OSError:
        return False
    finally:
        s.close()
out = set()
while len(out) < n:
    p = random.randrange(15000, 30000 - off)
    if p in out or (off and p + off in out): continue
    if ok(p) and (off == 0 or ok(p + off)): out.add(p)
print(" ".join(map(str, out)))
EOF
}

stop_pid() { # stop_pid PID: SIGTERM, 15 s, SIGKILL
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < 150; i++)); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
}

cleanup() {
    set +e
    local m i
    for m in "$MNT" "${MNT_WB:-}"; do
        [[ -n $m ]] && mountpoint -q "$m" && timeout 60 "$CAIRN_BIN" mount stop "$m" >>"$WORK/mount-stop.log" 2>&1
    done
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        stop_pid "${PIDS[i]}"
    done
    for m in "$MNT" "${MNT_WB:-}"; do
        [[ -n $m ]] && mountpoint -q "$m" && umount -l "$m"
    done
    for p in "${PORTS[@]}"; do rm -f /tmp/seaweedfs-*-"$p".sock; done
    [[ -n ${RESTORE_MAP_COUNT:-} ]] && sysctl -qw vm.max_map_count="$RESTORE_MAP_COUNT"
    cp -f "$WORK"/*.log "$WORK"/*.txt "$RESULTS"/ 2>/dev/null
    if [[ ${POSIX_KEEP:-0} == 1 ]]; then
        log "kept $WORK"
    elif grep -qF "$WORK" /proc/self/mountinfo; then
        log "not removing $WORK: something is still mounted under it"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail_setup() {
    log "FAIL: $*"
    for f in weed.log meta.log mount.log; do
        [[ -f $WORK/$f ]] && { echo "----- last 30 lines of $f -----"; tail -n 30 "$WORK/$f"; }
    done
    exit 1
}

wait_port() { # wait_port PORT PID SECONDS
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        kill -0 "$2" 2>/dev/null || return 1
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# --- SeaweedFS --------------------------------------------------------------------------------
read -r -a P <<<"$(free_ports 8)"
ADMIN=$(free_ports 1 10000)
S3_PORT=${P[6]}
PORTS=("${P[@]}" "$ADMIN" $((ADMIN + 10000)))
env -u AWS_CA_BUNDLE AWS_ACCESS_KEY_ID=$S3_KEY AWS_SECRET_ACCESS_KEY=$S3_SECRET \
    weed -logdir="$WORK/weed/glog" mini -dir="$WORK/weed/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -admin.ui=false -master.telemetry=false -webdav=false -s3.port.iceberg=0 -s3.port.lance=0 \
    -s3.autoCreateBucket=false -bucket=$BUCKET \
    -master.port="${P[0]}" -master.port.grpc="${P[1]}" -volume.port="${P[2]}" -volume.port.grpc="${P[3]}" \
    -filer.port="${P[4]}" -filer.port.grpc="${P[5]}" -s3.port="$S3_PORT" -s3.port.grpc="${P[7]}" \
    -admin.port="$ADMIN" -admin.port.grpc=$((ADMIN + 10000)) \
    >"$WORK/weed.log" 2>&1 </dev/null &
WEED_PID=$!
PIDS+=("$WEED_PID")
wait_port "$S3_PORT" "$WEED_PID" 60 || fail_setup "SeaweedFS did not open its S3 port $S3_PORT"
# -bucket creates the bucket a moment after the S3 port opens; wait until the filer lists it.
for ((i = 0; i < 300; i++)); do
    curl -s -H 'Accept: application/json' "http://127.0.0.1:${P[4]}/buckets/" 2>/dev/null |
        grep -qF "\"/buckets/$BUCKET\"" && break
    kill -0 "$WEED_PID" 2>/dev/null || fail_setup "SeaweedFS exited during start"
    sleep 0.1
done
((i < 300)) || fail_setup "SeaweedFS did not create bucket $BUCKET within 30 s"
log "SeaweedFS up (S3 on 127.0.0.1:$S3_PORT, bucket $BUCKET)"

# --- metadata server ----------------------------------------------------------------------------
META_PORT=$(free_ports 1)
PORTS+=("$META_PORT")
# Small blocks (256 KiB, the smallest a volume allows) so that fsx's files (up to 1 MiB) cross
# block boundaries all the time.
"$CAIRN_BIN" meta serve --bind-addr "127.0.0.1:$META_PORT" --data-dir "$WORK/meta" --volume "$VOLUME" \
    --block-size 262144 \
    >"$WORK/meta.log" 2>&1 </dev/null &
META_PID=$!
PIDS+=("$META_PID")
wait_port "$META_PORT" "$META_PID" 30 || fail_setup "cairn meta serve did not listen on $META_PORT"
log "metadata server up on 127.0.0.1:$META_PORT"

# --- mount ---------------------------------------------------------------------------------------
# Defaults, so its disk cache is the default one, in the work folder (CAIRN_CACHE_ROOT).
env -u AWS_CA_BUNDLE AWS_ACCESS_KEY_ID=$S3_KEY AWS_SECRET_ACCESS_KEY=$S3_SECRET \
    CAIRN_CACHE_ROOT="$WORK/cache-root" \
    "$CAIRN_BIN" mount start "$VOLUME" "$MNT" --meta "127.0.0.1:$META_PORT" --store "s3://$BUCKET" \
    --s3-endpoint "http://127.0.0.1:$S3_PORT" --s3-region us-east-1 --foreground \
    >"$WORK/mount.log" 2>&1 </dev/null &
MOUNT_PID=$!
PIDS+=("$MOUNT_PID")
for ((i = 0; i < 300; i++)); do
    mountpoint -q "$MNT" && break
    kill -0 "$MOUNT_PID" 2>/dev/null || fail_setup "the mount daemon exited before mounting"
    sleep 0.1
done
mountpoint -q "$MNT" || fail_setup "no mount at $MNT after 30 s"
timeout 30 stat "$MNT" >/dev/null || fail_setup "the mount does not answer"
log "mounted at $MNT"

# A second mount of the volume with the disk cache in writeback mode, for a second fsx run.
MNT_WB=$WORK/mnt-wb
mkdir -p "$MNT_WB"
env -u AWS_CA_BUNDLE AWS_ACCESS_KEY_ID=$S3_KEY AWS_SECRET_ACCESS_KEY=$S3_SECRET \
    "$CAIRN_BIN" mount start "$VOLUME" "$MNT_WB" --meta "127.0.0.1:$META_PORT" --store "s3://$BUCKET" \
    --s3-endpoint "http://127.0.0.1:$S3_PORT" --s3-region us-east-1 --foreground \
    --cache-dir "$WORK/cache-wb" --writeback \
    >"$WORK/mount-wb.log" 2>&1 </dev/null &
MOUNT_WB_PID=$!
PIDS+=("$MOUNT_WB_PID")
for ((i = 0; i < 300; i++)); do
    mountpoint -q "$MNT_WB" && break
    kill -0 "$MOUNT_WB_PID" 2>/dev/null || fail_setup "the writeback mount daemon exited before mounting"
    sleep 0.1
done
mountpoint -q "$MNT_WB" || fail_setup "no mount at $MNT_WB after 30 s"
log "mounted with --writeback at $MNT_WB"

mount_alive() { # mount_alive WHEN: records a problem if the daemon died or the mount hangs
    if ! kill -0 "$MOUNT_PID" 2>/dev/null; then
        problems+=("the mount daemon died during $1")
        return 1
    fi
    if ! timeout 20 stat "$MNT" >/dev/null 2>&1; then
        problems+=("the mount stopped answering during $1")
        return 1
    fi
}

# --- pjdfstest -----------------------------------------------------------------------------------
CONF=$WORK/pjdfstest.toml
cat >"$CONF" <<'EOF'
[features]
utimensat = {}
utime_now = {}
posix_fallocate = {}
rename_ctime = {}

[settings]
naptime = 0.02

[dummy_auth]
entries = [["nobody", "nogroup"], ["tests", "tests"]]
EOF

run_pjdfstest() { # run_pjdfstest DIR OUT: returns pjdfstest's exit code (124/137 on time-out)
    NO_COLOR=1 timeout --kill-after=30 "$PJD_TIMEOUT" pjdfstest -c "$CONF" -p "$1" >"$2" 2>&1 </dev/null
}
summary_of() { grep -E '^Summary:' "$1" | tail -n 1; }
names_with() { # names_with FILE STATUS: test names whose line ends in STATUS
    awk -v s="$2" '/^[^ \t]/ { line = $0; sub(/[ \t]+$/, "", line); if (line ~ (" " s "$")) print $1 }' "$1" | sort -u
}

NEW=0
STALE=0
PJD_SECONDS=0
CONTROL_SUMMARY="skipped (PJD_SKIP=1)"
CAIRN_SUMMARY="skipped (PJD_SKIP=1)"
if [[ $PJD_SKIP != 1 ]]; then
    log "pjdfstest on ext4 (control)..."
    run_pjdfstest "$WORK/control" "$WORK/pjdfstest-ext4.txt"
    CONTROL_SUMMARY=$(summary_of "$WORK/pjdfstest-ext4.txt")

    log "pjdfstest on cairn (time limit ${PJD_TIMEOUT} s)..."
    mkdir -p "$MNT/pjd" && chmod 0755 "$MNT/pjd"
    start=$SECONDS
    run_pjdfstest "$MNT/pjd" "$WORK/pjdfstest-cairn.txt"
    rc=$?
    PJD_SECONDS=$((SECONDS - start))
    CAIRN_SUMMARY=$(summary_of "$WORK/pjdfstest-cairn.txt")
    if [[ $rc -eq 124 || $rc -eq 137 ]]; then
        problems+=("pjdfstest hung: killed after ${PJD_TIMEOUT} s (last line: $(tail -n 1 "$WORK/pjdfstest-cairn.txt"))")
    elif [[ -z $CAIRN_SUMMARY ]]; then
        problems+=("pjdfstest ended (exit $rc) without a summary: $(tail -n 1 "$WORK/pjdfstest-cairn.txt")")
    fi
    mount_alive pjdfstest

    grep -vE '^[[:space:]]*(#|$)' "$EXCLUDE" 2>/dev/null | awk '{ print $1 }' | sort -u >"$WORK/excluded.txt"
    names_with "$WORK/pjdfstest-cairn.txt" FAILED >"$WORK/failed.txt"
    names_with "$WORK/pjdfstest-cairn.txt" ok >"$WORK/passed.txt"
    comm -23 "$WORK/failed.txt" "$WORK/excluded.txt" >"$WORK/new-failures.txt"
    comm -12 "$WORK/passed.txt" "$WORK/excluded.txt" >"$WORK/stale-exclusions.txt"
    NEW=$(wc -l <"$WORK/new-failures.txt")
    STALE=$(wc -l <"$WORK/stale-exclusions.txt")
    if ((NEW > 0)); then
        log "pjdfstest failures not in tests/pjdfstest-exclude.txt ($NEW):"
        sed 's/^/    /' "$WORK/new-failures.txt"
    fi
    if ((STALE > 0)); then
        log "excluded tests that now pass (remove them from tests/pjdfstest-exclude.txt) ($STALE):"
        sed 's/^/    /' "$WORK/stale-exclusions.txt"
    fi
    if [[ $STRICT == 1 ]] && ((NEW + STALE > 0)); then
        problems+=("pjdfstest: $NEW new failures, $STALE stale exclusions (POSIX_STRICT=1)")
    fi
fi

# --- fsx -----------------------------------------------------------------------------------------
# Two runs at once, on the plain mount and on the writeback mount, each on its own file of up to
# 1 MiB (4 blocks).
run_fsx() { # run_fsx NAME DIR SEED: sets FSX_RESULT_<NAME>
    local name=$1 dir=$2 seed=$3 start rc secs
    mkdir -p "$dir/fsx-$name" "$WORK/fsx-$name-artifacts"
    start=$SECONDS
    local verbose=()
    [[ ${FSX_VERBOSE:-0} == 1 ]] && verbose=(-v)
    timeout --kill-after=30 "$FSX_TIMEOUT" fsx "${verbose[@]}" -N "$FSX_OPS" -S "$seed" -f "$WORK/fsx.toml" \
        -P "$WORK/fsx-$name-artifacts" "$dir/fsx-$name/file" >"$WORK/fsx-$name.txt" 2>&1 </dev/null
    rc=$?
    secs=$((SECONDS - start))
    echo "$rc $secs" >"$WORK/fsx-$name.rc"
}
fsx_result() { # fsx_result NAME: the summary line (run in a subshell: the caller records problems)
    local name=$1 rc secs
    read -r rc secs <"$WORK/fsx-$name.rc" || { rc=255; secs=0; }
    case $rc in
    0) echo "passed ($FSX_OPS operations in ${secs} s)" ;;
    124 | 137)
        echo "hung (killed after ${FSX_TIMEOUT} s)"
        ;;
    *)
        echo "FAILED (exit $rc)"
        tail -n 30 "$WORK/fsx-$name.txt" >&2
        cp -f "$WORK"/fsx-"$name"-artifacts/* "$RESULTS"/ 2>/dev/null
        ;;
    esac
}
# Files up to 1 MiB (4 blocks), operations up to 128 KiB, and besides fsx's default reads, writes,
# mapped reads and writes and truncates: closes and reopens (close-to-open, flush at close),
# fsync and fdatasync.
cat >"$WORK/fsx.toml" <<'EOF'
flen = 1048576
[opsize]
max = 131072
[weights]
close_open = 2
fsync = 1
fdatasync = 1
EOF
FSX_RESULT="not run"
FSX_WB_RESULT="not run"
# fsx 0.3.2 never unmaps the mapping of a mapped read (its domapread has no munmap): a run keeps
# one mapping per mapped read (about a fifth of its operations), and its mmap fails with ENOMEM
# (fsx panics) once it holds vm.max_map_count of them, 65530 by default: around operation
# 350,000. scripts/setup builds fsx with the munmap added; in case the released build is the one
# here, long runs also get a higher limit, put back at exit.
MAP_COUNT_NEEDED=$((FSX_OPS / 4 + 16384))
old_map_count=$(cat /proc/sys/vm/max_map_count 2>/dev/null || echo 0)
if ((old_map_count < MAP_COUNT_NEEDED)); then
    if sysctl -qw vm.max_map_count="$MAP_COUNT_NEEDED"; then
        RESTORE_MAP_COUNT=$old_map_count
        log "vm.max_map_count raised from $old_map_count to $MAP_COUNT_NEEDED for fsx (restored at exit)"
    else
        log "cannot raise vm.max_map_count to $MAP_COUNT_NEEDED: fsx may stop with ENOMEM after ~$((old_map_count * 5)) operations"
    fi
fi
if mount_alive "the pjdfstest run"; then
    log "fsx -N $FSX_OPS on: $FSX_ONLY (time limit ${FSX_TIMEOUT} s)..."
    pids=()
    if [[ $FSX_ONLY != writeback ]]; then
        run_fsx plain "$MNT" 1 &
        pids+=($!)
    fi
    if [[ $FSX_ONLY != plain ]]; then
        run_fsx writeback "$MNT_WB" 2 &
        pids+=($!)
    fi
    wait "${pids[@]}"
    # fsx_result ran in a subshell: record its problems here.
    if [[ $FSX_ONLY != writeback ]]; then
        FSX_RESULT=$(fsx_result plain)
        [[ $FSX_RESULT == passed* ]] || problems+=("fsx on the mount: $FSX_RESULT (see fsx-plain.txt)")
    fi
    if [[ $FSX_ONLY != plain ]]; then
        FSX_WB_RESULT=$(fsx_result writeback)
        [[ $FSX_WB_RESULT == passed* ]] || problems+=("fsx on the writeback mount: $FSX_WB_RESULT (see fsx-writeback.txt)")
    fi
    mount_alive fsx
    kill -0 "$MOUNT_WB_PID" 2>/dev/null || problems+=("the writeback mount daemon died during fsx")
fi

# --- clean stop, then the logs -------------------------------------------------------------------
for m in "$MNT" "$MNT_WB"; do
    if mountpoint -q "$m"; then
        if ! timeout 60 "$CAIRN_BIN" mount stop "$m" >"$WORK/mount-stop.log" 2>&1; then
            problems+=("cairn mount stop $m failed: $(tail -n 1 "$WORK/mount-stop.log")")
        fi
    fi
done
for ((i = 0; i < 300; i++)); do
    kill -0 "$MOUNT_PID" 2>/dev/null || break
    sleep 0.1
done
if grep -l panicked "$WORK/meta.log" "$WORK/mount.log" "$WORK/mount-wb.log" >/dev/null 2>&1; then
    problems+=("a cairn process panicked: $(grep -h -m 3 panicked "$WORK/meta.log" "$WORK/mount.log" "$WORK/mount-wb.log")")
fi

echo
echo "==================== POSIX summary ===================="
echo "pjdfstest on ext4 (control): ${CONTROL_SUMMARY:-no summary}"
echo "pjdfstest on cairn:          ${CAIRN_SUMMARY:-no summary} (${PJD_SECONDS} s)"
echo "  failures not excluded:     $NEW   stale exclusions: $STALE"
echo "fsx:                         $FSX_RESULT"
echo "fsx with --writeback:        $FSX_WB_RESULT"
echo "outputs:                     $RESULTS"
if ((${#problems[@]})); then
    echo "PROBLEMS:"
    printf '  - %s\n' "${problems[@]}"
    for f in meta.log mount.log mount-wb.log; do
        echo "----- last 30 lines of $f -----"
        tail -n 30 "$WORK/$f"
    done
    exit 1
fi
echo "posix: OK"
