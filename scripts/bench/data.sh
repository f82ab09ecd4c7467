#!/usr/bin/env bash
# Data-path benchmark: cairn against JuiceFS, s3fs and rclone mount on the same SeaweedFS, same
# machine, same run.
#
#   scripts/bench/data.sh                 (usually through scripts/bench/run)
#   BENCH_SIZE_MIB=256 BENCH_TIME=5 BENCH_FILES=200 scripts/bench/run data      (a quick run)
#
# Starts one `weed mini` with a bucket per filesystem; `cairn meta serve --sync` and
# `cairn mount start` (defaults, with its disk cache in $WORK/cairn-cache); JuiceFS on a private
# redis without persistence (`juicefs mount -d`, defaults, with its disk cache in
# $WORK/juicefs-cache); s3fs (defaults: no local cache); `rclone mount --vfs-cache-mode off`.
# Both disk caches are deleted at every remount, so that a cold read is served by the bucket.
# Each workload on each filesystem in turn (fio with ioengine=psync, buffered I/O, random data),
# then the store alone (`cairn-bench store`: SIZE in 4 MiB objects, PUT, drop caches, GET, 16 at
# once, no filesystem), the ceiling of the sequential rows, printed under the table with each
# sequential row as a share of it:
#
#  1. seq write: one file of SIZE (1 thread) or one file of SIZE/4 per thread (4 threads), 1 MiB
#     writes, end_fsync=1; MB/s = bytes / wall time of the whole fio run (create, write, fsync,
#     close), so that for every filesystem the data is in the bucket when the clock stops;
#  2. seq read of those files, cold (the filesystem remounted, which drops its own caches, local
#     disk caches deleted, then `sync`, `echo 3 > /proc/sys/vm/drop_caches` and BENCH_SETTLE
#     seconds of rest) and then warm
#     (the same read again right away, fio invalidate=0 so fio does not drop the page cache
#     itself); fio's MB/s;
#  3. seq overwrite of the 1-thread file, remounted and cold as for a cold read, in 1 MiB writes,
#     end_fsync=1; MB/s as for seq write. A filesystem that reads each old block before writing
#     its first part shows here;
#  4. random reads of 4 KiB and 128 KiB over the 1-thread file for TIME seconds, each run started
#     cold (remount, drop caches) with the same random offsets on every filesystem; IOPS and MB/s;
#  5. FILES files of 128 KiB, each created, written, fsync'd and closed, split over the threads
#     (one folder per thread); then, cold, each opened, read whole and closed; files/s.
#
# Why rclone runs with --vfs-cache-mode off: in that mode a write goes straight to the bucket (a
# multipart upload as the file is written) and close returns once the upload is done, like cairn,
# JuiceFS and s3fs, whose close or fsync returns once the data is in the bucket. With `writes` or
# `full`, rclone first copies the file to a local disk cache, close returns at once and the upload
# happens later (after --vfs-write-back, 5 s): fio would time a local disk, not the bucket. Reads
# are the same in `off` and `writes` (files opened read-only are read from the bucket).
#
# A peer that cannot be installed or mounted, or whose run fails or times out, shows "n/a" in the
# table with the reason below it; the script goes on. Every fio run has a `timeout`. Everything
# started is unmounted and stopped by PID on exit, also on failure (lib.sh's EXIT trap).
#
# Environment (defaults in brackets):
#   BENCH_SIZE_MIB     size of the sequential data set, all threads together [2048]
#   BENCH_TIME         seconds of each random-read run [20]
#   BENCH_FILES        small files per run, all threads together [1000]
#   BENCH_FILE_KIB     size of each small file [128]
#   BENCH_THREADS      thread counts of the sequential and small-file runs ["1 4"]
#   BENCH_RAND_THREADS thread counts of the random-read runs (all threads on the one file) ["1 4"]
#   BENCH_FS           filesystems to run ["cairn juicefs s3fs rclone"; cairn is always first]
#   BENCH_TIMEOUT      seconds before a sequential or small-file run is stopped [900]
#   BENCH_SETTLE       seconds between `drop_caches` and the cold run after it [10]: on this VM
#                      the guest hands the memory it frees back to the host, and a run started at
#                      once, after the gigabytes the writes left in the page cache were dropped,
#                      read 20-35% slower whichever filesystem it was
#   BENCH_IOPS_LOG     1: log each random-read run's IOPS second by second (all threads
#                      together), to see how soon each filesystem reaches its page cache's speed [0]
#   RESULTS            also write the raw results (TSV) to this file
#   KEEP_WORK          1 keeps the work folder (logs) after a successful run [0]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SIZE_MIB=${BENCH_SIZE_MIB:-2048}
TIME=${BENCH_TIME:-20}
FILES=${BENCH_FILES:-1000}
FILE_KIB=${BENCH_FILE_KIB:-128}
THREADS=${BENCH_THREADS:-"1 4"}
RAND_THREADS=${BENCH_RAND_THREADS:-"1 4"}
STEP_TIMEOUT=${BENCH_TIMEOUT:-900}
SETTLE=${BENCH_SETTLE:-10}
RCLONE_CACHE_MODE=off
read -r -a FSES <<<"cairn ${BENCH_FS:-cairn juicefs s3fs rclone}"
# cairn first, each once.
declare -A _seen=()
_fses=()
for fs in "${FSES[@]}"; do
    case $fs in cairn | juicefs | s3fs | rclone) ;; *) die "BENCH_FS: unknown filesystem $fs" ;; esac
    [[ -n ${_seen[$fs]:-} ]] || { _fses+=("$fs"); _seen[$fs]=1; }
done
FSES=("${_fses[@]}")
for t in $THREADS; do
    ((t > 0 && SIZE_MIB % t == 0 && FILES % t == 0)) || die "BENCH_SIZE_MIB and BENCH_FILES must divide by each of BENCH_THREADS"
done

bench_init
bench_install_base
command -v fio >/dev/null 2>&1 || _apt_install fio || die "fio is needed"
bench_build

declare -A NA=()    # filesystem -> why it is out of the run
declare -A MNT=()   # filesystem -> mount point
declare -A DPIDS=() # filesystem -> PIDs of its mount daemons now
declare -A PEAK=()  # filesystem -> largest VmHWM seen (KiB)
declare -A PEAK_AT=()
declare -A VERSION=()
for fs in "${FSES[@]}"; do
    MNT[$fs]=$WORK/mnt-$fs
    PEAK[$fs]=0
    [[ $fs == cairn ]] && continue
    install_peer "$fs" || { NA[$fs]="not installed: $PEER_WHY"; log "$fs: ${NA[$fs]}"; }
done

start_seaweed
for fs in "${FSES[@]}"; do
    create_bucket "$fs-data"
done
[[ -z ${NA[juicefs]:-} && -n ${MNT[juicefs]:-} ]] && start_redis
start_cairn_meta data

VERSION[cairn]="commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
VERSION[juicefs]=$(juicefs version 2>/dev/null | awk '{print $3}') || true
VERSION[s3fs]=$(s3fs --version 2>/dev/null | head -1 | grep -o 'V[0-9.]*') || true
VERSION[rclone]=$(rclone version 2>/dev/null | head -1 | awk '{print $2}') || true

# --- mounting -------------------------------------------------------------------------------------

fs_mount() { # fs_mount FS: 1 if it fails
    local fs=$1 ok=0
    case $fs in
        cairn)
            rm -rf "$WORK/cairn-cache"
            mount_cairn_only data cairn-data "${MNT[cairn]}" || ok=1
            ;;
        juicefs)
            rm -rf "$WORK/juicefs-cache"
            mount_juicefs_only "${MNT[juicefs]}" 1 || ok=1
            ;;
        s3fs) mount_s3fs s3fs-data "${MNT[s3fs]}" || ok=1 ;;
        rclone) mount_rclone rclone-data "${MNT[rclone]}" "$RCLONE_CACHE_MODE" || ok=1 ;;
    esac
    DPIDS[$fs]=$MOUNT_PIDS
    return $ok
}

STEP="mount"  # the run going on, for the peak RSS's "at"

sample_rss() { # sample_rss FS: remembers the daemons' largest VmHWM so far, and during which run
    local fs=$1 v
    # shellcheck disable=SC2086
    v=$(peak_rss_kib ${DPIDS[$fs]:-})
    if ((v > PEAK[$fs])); then
        PEAK[$fs]=$v
        PEAK_AT[$fs]=$STEP
    fi
}

fs_unmount() {
    local fs=$1
    sample_rss "$fs"
    # shellcheck disable=SC2086
    unmount_fs "$fs" "${MNT[$fs]}" ${DPIDS[$fs]:-}
    DPIDS[$fs]=""
    # Local disk caches go with the mount: what is read next comes from the bucket.
    case $fs in
        cairn) rm -rf "$WORK/cairn-cache" ;;
        juicefs) rm -rf "$WORK/juicefs-cache" ;;
        rclone) rm -rf "$WORK/rclone-cache" ;;
    esac
}

remount() { # remount FS WHERE: 1 (and the filesystem out of the run) if it fails
    local fs=$1
    fs_unmount "$fs" "$2"
    fs_mount "$fs" || { NA[$fs]="remount failed before $2"; return 1; }
}

drop_caches() {
    # Dirty pages first: the previous run's cache files, written back while the next filesystem
    # was timed, cost it up to a third of its cold read speed in one series.
    timeout 120 sync || log "sync timed out"
    timeout 120 sh -c 'echo 3 >/proc/sys/vm/drop_caches' || log "drop_caches failed or timed out"
    # The first cold read after the writes, whichever filesystem it was, ran 20-35% slower than
    # the same read later in the run (docs/benchmarks.md, data item 31): wait for the guest to
    # finish handing the dropped pages back to the host.
    sleep "$SETTLE"
}

# healthy FS: the mount answers a stat within 30 s.
healthy() {
    is_mounted "${MNT[$1]}" && timeout 30 stat "${MNT[$1]}/." >/dev/null 2>&1
}

# --- recording ------------------------------------------------------------------------------------

RAW=$WORK/data.raw
: >"$RAW"
# record ROW THREADS FS VALUE [EXTRA [NOTE]]: one TSV line. VALUE "n/a" comes with NOTE, the reason.
record() {
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${5:-}" "${6:-}" >>"$RAW"
    log "result: $1 threads=$2 $3: $4 ${5:-} ${6:-}"
}

# run_fio FS TIMEOUT JSON FIO-ARGS...: FIO_SECS is the wall time; 1 with FIO_WHY on failure.
run_fio() {
    local fs=$1 limit=$2 json=$3 rc=0 t0 t1
    shift 3
    FIO_WHY=""
    t0=$(date +%s.%N)
    timeout -k 10 "$limit" fio --output-format=json --output="$json" --ioengine=psync \
        --group_reporting "$@" >"$json.stderr" 2>&1 </dev/null || rc=$?
    t1=$(date +%s.%N)
    FIO_SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    sample_rss "$fs"
    if ((rc == 124 || rc == 137)); then
        FIO_WHY="timed out after ${limit}s"
    elif ((rc != 0)); then
        FIO_WHY="fio exit $rc: $(grep -v '^$' "$json.stderr" | tail -n 1 | cut -c1-120)"
    elif ! FIO_ERR=$(fio_field "$json" error) || [[ $FIO_ERR != 0 ]]; then
        FIO_WHY="fio job error ${FIO_ERR:-?}: $(grep -v '^$' "$json.stderr" | tail -n 1 | cut -c1-120)"
    fi
    [[ -z $FIO_WHY ]]
}

# fio_field JSON NAME: from the (group-reported) job: error, read_bw (bytes/s), read_iops,
# read_bytes, write_bw.
fio_field() {
    python3 - "$1" "$2" <<'PY'
import json, sys
text = open(sys.argv[1]).read()
d = json.loads(text[text.index("{"):])
j = d["jobs"][0]
v = {
    "error": max(x.get("error", 0) for x in d["jobs"]),
    "read_bw": j["read"]["bw_bytes"],
    "read_iops": j["read"]["iops"],
    "read_bytes": j["read"]["io_bytes"],
    "write_bw": j["write"]["bw_bytes"],
}[sys.argv[2]]
print(f"{v:.2f}" if isinstance(v, float) else v)
PY
}

# size_ok FS THREADS: the files of the sequential write with THREADS are there, each whole.
size_ok() {
    local fs=$1 t=$2 j s want=$((SIZE_MIB / $2 * 1048576))
    for ((j = 0; j < t; j++)); do
        s=$(timeout 30 stat -c %s "${MNT[$fs]}/seq$t.$j" 2>/dev/null) || return 1
        [[ $s == "$want" ]] || return 1
    done
}

# skip_if_out FS ROW THREADS: records n/a and returns 0 when FS is out of the run.
skip_if_out() {
    if [[ -n ${NA[$1]:-} ]]; then
        record "$2" "$3" "$1" n/a "" "${NA[$1]}"
        return 0
    fi
    return 1
}

# after_failure FS ROW: a failed run may leave the mount broken: remount it if so.
after_failure() {
    healthy "$1" && return 0
    log "$1 does not answer after a failed $2: remounting"
    remount "$1" "after $2" || true
}

# --- workloads ------------------------------------------------------------------------------------

seq_write() { # seq_write FS THREADS
    local fs=$1 t=$2 row=seqwrite
    STEP="seq write, $t threads"
    skip_if_out "$fs" $row "$t" && return 0
    local json=$WORK/fio-$fs-seqwrite-$t.json
    if run_fio "$fs" "$STEP_TIMEOUT" "$json" --name="seq$t" --directory="${MNT[$fs]}" \
        --filename_format='$jobname.$jobnum' --rw=write --bs=1M --size="$((SIZE_MIB / t))M" \
        --numjobs="$t" --end_fsync=1 --fallocate=none --create_on_open=1; then
        if size_ok "$fs" "$t"; then
            record $row "$t" "$fs" "$(awk -v b="$((SIZE_MIB * 1048576))" -v s="$FIO_SECS" 'BEGIN { printf "%.1f", b / s / 1e6 }')" \
                "fio says $(awk -v b="$(fio_field "$json" write_bw)" 'BEGIN { printf "%.1f", b / 1e6 }') MB/s, wall ${FIO_SECS}s"
        else
            record $row "$t" "$fs" n/a "" "the files written have the wrong size"
        fi
    else
        record $row "$t" "$fs" n/a "" "$FIO_WHY"
        after_failure "$fs" "seq write"
    fi
}

seq_read() { # seq_read FS THREADS cold|warm
    local fs=$1 t=$2 temp=$3 row=seqread-$3
    STEP="seq read $temp, $t threads"
    skip_if_out "$fs" "$row" "$t" && return 0
    if [[ $temp == cold ]]; then
        remount "$fs" "seq read cold, $t threads" || { record "$row" "$t" "$fs" n/a "" "${NA[$fs]}"; return 0; }
        drop_caches
    fi
    size_ok "$fs" "$t" || { record "$row" "$t" "$fs" n/a "" "no complete file from the write"; return 0; }
    local json=$WORK/fio-$fs-seqread-$temp-$t.json invalidate=1
    [[ $temp == warm ]] && invalidate=0
    if run_fio "$fs" "$STEP_TIMEOUT" "$json" --name="seq$t" --directory="${MNT[$fs]}" \
        --filename_format='$jobname.$jobnum' --rw=read --bs=1M --size="$((SIZE_MIB / t))M" \
        --numjobs="$t" --invalidate=$invalidate --allow_file_create=0; then
        record "$row" "$t" "$fs" "$(awk -v b="$(fio_field "$json" read_bw)" 'BEGIN { printf "%.1f", b / 1e6 }')" \
            "wall ${FIO_SECS}s"
    else
        record "$row" "$t" "$fs" n/a "" "$FIO_WHY"
        after_failure "$fs" "seq read $temp"
    fi
}

seq_overwrite() { # seq_overwrite FS: over the 1-thread file, after a remount
    local fs=$1 row=overwrite
    STEP="seq overwrite, 1 thread"
    skip_if_out "$fs" $row 1 && return 0
    remount "$fs" "seq overwrite" || { record $row 1 "$fs" n/a "" "${NA[$fs]}"; return 0; }
    drop_caches
    size_ok "$fs" 1 || { record $row 1 "$fs" n/a "" "no complete file from the write"; return 0; }
    local json=$WORK/fio-$fs-overwrite.json
    if run_fio "$fs" "$STEP_TIMEOUT" "$json" --name=seq1 --directory="${MNT[$fs]}" \
        --filename_format='$jobname.$jobnum' --rw=write --bs=1M --size="${SIZE_MIB}M" \
        --end_fsync=1 --overwrite=1 --allow_file_create=0; then
        if size_ok "$fs" 1; then
            record $row 1 "$fs" "$(awk -v b="$((SIZE_MIB * 1048576))" -v s="$FIO_SECS" 'BEGIN { printf "%.1f", b / s / 1e6 }')" \
                "wall ${FIO_SECS}s"
        else
            record $row 1 "$fs" n/a "" "the file overwritten has the wrong size"
        fi
    else
        record $row 1 "$fs" n/a "" "$FIO_WHY"
        after_failure "$fs" "seq overwrite"
    fi
}

rand_read() { # rand_read FS BS THREADS
    local fs=$1 bs=$2 t=$3 row=rand$2
    STEP="random read $bs, $t threads"
    skip_if_out "$fs" "$row" "$t" && return 0
    remount "$fs" "random read $bs, $t threads" || { record "$row" "$t" "$fs" n/a "" "${NA[$fs]}"; return 0; }
    drop_caches
    size_ok "$fs" 1 || { record "$row" "$t" "$fs" n/a "" "no complete file from the 1-thread write"; return 0; }
    local json=$WORK/fio-$fs-rand$bs-$t.json
    local iops_log=()
    [[ ${BENCH_IOPS_LOG:-0} == 1 ]] && iops_log=(--write_iops_log="$WORK/iops-$fs-$bs-$t" --log_avg_msec=1000)
    if run_fio "$fs" $((TIME * 3 + 120)) "$json" --name="rand$bs" --filename="${MNT[$fs]}/seq1.0" \
        --rw=randread --bs="$bs" --size="${SIZE_MIB}M" --numjobs="$t" --time_based --runtime="$TIME" \
        --norandommap --randrepeat=1 --allow_file_create=0 "${iops_log[@]}"; then
        if ((${#iops_log[@]})); then
            # One log per thread ("TIME_MS, IOPS, ..." a line a second): summed second by second.
            log "IOPS per second, random read $bs, $t threads, $fs: $(awk -F, '
                { s[int($1 / 1000)] += $2; if (int($1 / 1000) > n) n = int($1 / 1000) }
                END { for (i = 1; i <= n; i++) printf "%d ", s[i] }' "$WORK/iops-$fs-$bs-$t"_iops.*.log)"
            rm -f "$WORK/iops-$fs-$bs-$t"_iops.*.log
        fi
        record "$row" "$t" "$fs" "$(fio_field "$json" read_iops)" \
            "$(awk -v b="$(fio_field "$json" read_bw)" 'BEGIN { printf "%.2f", b / 1e6 }')"
    else
        record "$row" "$t" "$fs" n/a "" "$FIO_WHY"
        after_failure "$fs" "random read"
    fi
}

SMALL=$WORK/smallfiles.py
cat >"$SMALL" <<'PY'
# smallfiles.py write|read DIR FILES KIB THREADS: FILES files of KIB KiB in DIR/tN (FILES/THREADS
# per thread); write: create, write, fsync, close each; read: open, read whole, close each.
# Prints "secs=S files=N". Each file's content is random and distinct (no compression, no dedup).
import os, sys, threading, time
mode, root, files, kib, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
size = kib * 1024
per = files // threads
errors = []
if mode == "write":
    for t in range(threads):
        os.makedirs(os.path.join(root, f"t{t}"), exist_ok=True)

def work(t):
    try:
        d = os.path.join(root, f"t{t}")
        buf = bytearray(os.urandom(size))
        for i in range(per):
            p = os.path.join(d, f"f{i}")
            if mode == "write":
                buf[:8] = i.to_bytes(8, "little")
                fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    n = os.write(fd, buf)
                    if n != size:
                        raise OSError(f"short write {n} to {p}")
                    os.fsync(fd)
                finally:
                    os.close(fd)
            else:
                fd = os.open(p, os.O_RDONLY)
                try:
                    got = 0
                    while True:
                        b = os.read(fd, 1 << 20)
                        if not b:
                            break
                        got += len(b)
                finally:
                    os.close(fd)
                if got != size:
                    raise OSError(f"read {got} bytes of {p}, want {size}")
    except Exception as e:
        errors.append(f"{type(e).__name__}: {e}")

ths = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
t0 = time.monotonic()
for th in ths:
    th.start()
for th in ths:
    th.join()
secs = time.monotonic() - t0
if errors:
    print(errors[0], file=sys.stderr)
    sys.exit(1)
print(f"secs={secs:.3f} files={per * threads}")
PY

small_files() { # small_files FS write|read THREADS
    local fs=$1 mode=$2 t=$3 row=small$2 out rc=0
    STEP="small files $mode, $t threads"
    skip_if_out "$fs" "$row" "$t" && return 0
    if [[ $mode == read ]]; then
        remount "$fs" "small-file read, $t threads" || { record "$row" "$t" "$fs" n/a "" "${NA[$fs]}"; return 0; }
        drop_caches
    fi
    out=$(timeout -k 10 "$STEP_TIMEOUT" python3 "$SMALL" "$mode" "${MNT[$fs]}/small$t" "$FILES" "$FILE_KIB" "$t" 2>&1) || rc=$?
    sample_rss "$fs"
    if ((rc == 0)); then
        local secs=${out#secs=}
        secs=${secs%% *}
        record "$row" "$t" "$fs" "$(awk -v n="$FILES" -v s="$secs" 'BEGIN { printf "%.1f", n / s }')" "" "wall ${secs}s"
    else
        local why="exit $rc: $(echo "$out" | tail -n 1 | cut -c1-120)"
        ((rc == 124 || rc == 137)) && why="timed out after ${STEP_TIMEOUT}s"
        record "$row" "$t" "$fs" n/a "" "$why"
        after_failure "$fs" "small-file $mode"
    fi
}

# --- the run --------------------------------------------------------------------------------------

fs_mount cairn || die "cairn mount failed"
for fs in "${FSES[@]:1}"; do
    [[ -n ${NA[$fs]:-} ]] && continue
    if [[ $fs == juicefs ]]; then
        format_juicefs data juicefs-data 1 || { NA[$fs]="juicefs format failed"; continue; }
    fi
    fs_mount "$fs" || NA[$fs]="mount failed (see $fs's log lines above)"
done
log "filesystems: ${FSES[*]}; out of the run: $(for fs in "${!NA[@]}"; do printf '%s (%s) ' "$fs" "${NA[$fs]}"; done)"

started=$SECONDS
for t in $THREADS; do
    for fs in "${FSES[@]}"; do seq_write "$fs" "$t"; done
    for fs in "${FSES[@]}"; do
        seq_read "$fs" "$t" cold
        seq_read "$fs" "$t" warm
    done
    if ((t == 1)); then
        for fs in "${FSES[@]}"; do seq_overwrite "$fs"; done
    fi
done
# The multi-thread files are no longer needed: free the space before the random reads.
for t in $THREADS; do
    ((t == 1)) && continue
    for fs in "${FSES[@]}"; do
        [[ -z ${NA[$fs]:-} ]] && timeout 300 rm -f "${MNT[$fs]}"/seq"$t".* 2>/dev/null || true
    done
done
for bs in 4k 128k; do
    for t in $RAND_THREADS; do
        for fs in "${FSES[@]}"; do rand_read "$fs" "$bs" "$t"; done
    done
done
for t in $THREADS; do
    for fs in "${FSES[@]}"; do small_files "$fs" write "$t"; done
    for fs in "${FSES[@]}"; do small_files "$fs" read "$t"; done
done
for fs in "${FSES[@]}"; do sample_rss "$fs"; done
elapsed=$((SECONDS - started))

# The store alone, after every filesystem's runs (so that nothing it leaves, such as deleted
# objects SeaweedFS may compact, lands in a filesystem's run): what SeaweedFS takes and serves on this
# machine to the lightest client (no FUSE, no page cache, no local copy), the ceiling every
# filesystem's sequential rows share. Same bytes as the sequential runs, in 4 MiB objects (cairn's
# blocks), 16 at once (cairn's default for uploads and for downloads), the GETs after `sync` and
# `drop_caches` as for a cold read.
create_bucket store-alone
STORE_PUT=n/a STORE_GET=n/a
if out=$(timeout -k 10 "$STEP_TIMEOUT" env -u AWS_CA_BUNDLE AWS_ACCESS_KEY_ID="$S3_KEY" AWS_SECRET_ACCESS_KEY="$S3_SECRET" \
    "$CAIRN_BENCH" store --endpoint "$S3_ENDPOINT" --bucket store-alone --region "$S3_REGION" \
    --size-mib "$SIZE_MIB" --object-mib 4 --parallel 16 --drop-caches --settle-secs "$SETTLE" 2>&1); then
    mb_per_sec() { awk -v p="$1" '$1 == p { for (i = 2; i <= NF; i++) if ($i ~ /^mb_per_sec=/) print substr($i, 12) }' <<<"$out"; }
    STORE_PUT=$(mb_per_sec put)
    STORE_GET=$(mb_per_sec get)
    log "the store alone: PUT $STORE_PUT MB/s, GET $STORE_GET MB/s"
else
    log "cairn-bench store failed: $(tail -n 1 <<<"$out" | cut -c1-200)"
fi
[[ -n ${RESULTS:-} ]] && cp "$RAW" "$RESULTS"

# --- the table ------------------------------------------------------------------------------------

echo
echo "data: BENCH_SIZE_MIB=$SIZE_MIB BENCH_TIME=$TIME BENCH_FILES=$FILES BENCH_FILE_KIB=$FILE_KIB" \
    "BENCH_THREADS=\"$THREADS\" BENCH_RAND_THREADS=\"$RAND_THREADS\"; measured in ${elapsed}s"
echo "cairn meta serve --sync + cairn mount start (defaults; disk cache in the work folder); JuiceFS ${VERSION[juicefs]:-?} on redis without" \
    "persistence; s3fs ${VERSION[s3fs]:-?} (defaults, no use_cache); rclone ${VERSION[rclone]:-?} mount" \
    "--vfs-cache-mode $RCLONE_CACHE_MODE; SeaweedFS $(weed version 2>/dev/null | head -1 | awk '{print $3}'); fio $(fio --version)"
echo
python3 - "$RAW" "$STORE_PUT" "$STORE_GET" "${FSES[@]}" <<'PY'
import sys
raw, store_put, store_get, fses = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
peers = fses[1:]
rows, order, why = {}, [], {}
for line in open(raw):
    row, threads, fs, value, extra, note = line.rstrip("\n").split("\t")
    key = (row, int(threads))
    if key not in rows:
        rows[key] = {}
        order.append(key)
    rows[key][fs] = (value, extra, note)
    if value == "n/a":
        why.setdefault((fs, note), []).append(key)
label = {
    "seqwrite": ("seq write 1 MiB, end_fsync", "MB/s"),
    "seqread-cold": ("seq read 1 MiB, cold", "MB/s"),
    "seqread-warm": ("seq read 1 MiB, warm", "MB/s"),
    "overwrite": ("seq overwrite 1 MiB, cold, end_fsync", "MB/s"),
    "rand4k": ("random read 4 KiB", "IOPS (MB/s)"),
    "rand128k": ("random read 128 KiB", "IOPS (MB/s)"),
    "smallwrite": ("small files write+fsync", "files/s"),
    "smallread": ("small files read, cold", "files/s"),
}
def cell(v):
    if v is None:
        return "-"
    value, extra, _ = v
    if value == "n/a":
        return "n/a"
    f = float(value)
    s = f"{f:.0f}" if f >= 100 else f"{f:.1f}"
    return f"{s} ({extra})" if extra and label_unit.startswith("IOPS") else s
head = ["workload", "threads", "unit"] + fses + [f"cairn/{p}" for p in peers]
print("| " + " | ".join(head) + " |")
print("|" + "|".join(["---", "--:", "---"] + ["--:"] * (len(fses) + len(peers))) + "|")
for key in order:
    name, label_unit = label.get(key[0], (key[0], ""))
    r = rows[key]
    cells = [cell(r.get(fs)) for fs in fses]
    ratios = []
    c = r.get("cairn")
    for p in peers:
        v = r.get(p)
        if c and v and c[0] != "n/a" and v[0] != "n/a" and float(v[0]) > 0:
            ratios.append(f"{float(c[0]) / float(v[0]):.2f}x")
        else:
            ratios.append("n/a")
    print("| " + " | ".join([name, str(key[1]), label_unit] + cells + ratios) + " |")
# The store alone, and each sequential row as a share of it.
store = {"seqwrite": store_put, "overwrite": store_put, "seqread-cold": store_get}
print()
print(f"the store alone (cairn-bench store, 4 MiB objects, 16 at once, no filesystem): "
      f"PUT {store_put} MB/s, GET {store_get} MB/s")
for key in order:
    ceiling = store.get(key[0])
    if ceiling in (None, "", "n/a") or float(ceiling) <= 0:
        continue
    shares = []
    for fs in fses:
        v = rows[key].get(fs)
        if v and v[0] != "n/a":
            shares.append(f"{fs} {100 * float(v[0]) / float(ceiling):.0f}%")
    print(f"  {label[key[0]][0]}, {key[1]} thr: " + ", ".join(shares) + " of the store alone")
if why:
    print()
    for (fs, note), keys in why.items():
        where = ", ".join(f"{label.get(k[0], (k[0],))[0]} ({k[1]} thr)" for k in keys)
        print(f"n/a: {fs}: {note} [{where}]")
PY
echo
echo "MB/s = 10^6 bytes/s. seq write: bytes / wall time of fio (create, write, end_fsync, close: the data" \
    "is in the bucket when it ends); seq read: fio's bandwidth. cold = remounted (local caches deleted)" \
    "and drop_caches, then ${SETTLE}s of rest; warm = read again at once. Random reads start cold, run ${TIME}s each, psync," \
    "the threads share the one file. Small files: $FILES x $FILE_KIB KiB, split over the threads."
printf 'mount daemon peak RSS (VmHWM, largest of any of its mounts, sampled after every run):'
for fs in "${FSES[@]}"; do
    if ((PEAK[$fs] > 0)); then
        printf ' %s %d MiB (at %s);' "$fs" $((PEAK[$fs] / 1024)) "${PEAK_AT[$fs]:-?}"
    else
        printf ' %s n/a;' "$fs"
    fi
done
echo
logs=("$WORK"/cairn-mount.log "$WORK"/cairn-meta.log)
n=$(cat "${logs[@]}" 2>/dev/null | grep -cE 'WARN|ERROR' || true)
echo "cairn log lines at WARN or ERROR (mount and meta): ${n:-0}"
if ((${n:-0} > 0)); then
    cat "${logs[@]}" 2>/dev/null | grep -E 'WARN|ERROR' | sed -E 's/^[^ ]+ +//' | cut -c1-200 | sort | uniq -c | sort -rn | head -n 8 | sed 's/^/    /'
fi
