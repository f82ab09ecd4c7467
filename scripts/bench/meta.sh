#!/usr/bin/env bash
# Metadata benchmark: cairn against JuiceFS on the same SeaweedFS, same machine, same run.
#
#   scripts/bench/meta.sh                 (usually through scripts/bench/run)
#
# Starts one `weed mini` (a bucket per filesystem), a private redis without persistence for
# JuiceFS's metadata (and, with DURABLE, a second one that fsyncs every write, for a second
# JuiceFS), and `cairn meta serve --sync`; mounts them; runs `cairn-bench meta` with each thread
# count on each mount, alternating the filesystems run by run; prints every raw line,
# then a table of medians. Everything it starts is stopped and unmounted on exit (see lib.sh).
#
# Environment (defaults in brackets):
#   FILES       files per run, all threads together [2000]
#   THREADS     thread counts to run ["1 4"]
#   RUNS        runs per filesystem and thread count; the table shows the median [3]
#   CACHES      "dropped": the kernel's dentry and inode caches are dropped before stat and
#               before unlink (cairn-bench --drop-caches), so each stat and unlink reaches the
#               filesystem; "kept": they are not, and stat is mostly answered by the kernel from
#               what create left, for the 1 s TTL both filesystems give; which entries are still
#               fresh then depends on how long create took, so a slower create makes a colder
#               stat and the comparison says little; "aged": dropped, and then 1.1 s
#               (untimed) before stat and before unlink, so that nothing either filesystem
#               remembers of create is within the 1 s TTL. ["dropped"; "dropped aged" runs both]
#   TRACE       1: after the timed runs, one untimed run per filesystem (1 thread, 200 files) under
#               the kernel's fuse:fuse_request_send/_end tracepoints, to count the FUSE requests
#               each operation sends and their median time to reply [1; skipped where the
#               tracepoints do not exist]
#   CAIRN_SYNC  0 runs the cairn metadata server without --sync, to see what fsync costs; the
#               targets are for --sync [1]
#   DURABLE     1 also runs a second JuiceFS whose redis fsyncs every write (appendonly,
#               appendfsync always): the promise `cairn meta serve --sync` makes, which the
#               default JuiceFS (redis without persistence) does not; shown beside the targets,
#               which stay against the default JuiceFS [1]
#   META_CPUS   CPU list (taskset -c) for the metadata engines, cairn's server and each redis
#               alike: a core of their own, as on a metadata host of their own [unset: any CPU]
#   MOUNT_CPUS  CPU list for the mount daemons, cairn's and JuiceFS's alike [unset: any CPU]
#   RESULTS     also write the raw lines to this file
#   KEEP_WORK   1 keeps the work folder (logs) after a successful run [0]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

FILES=${FILES:-2000}
THREADS=${THREADS:-"1 4"}
RUNS=${RUNS:-3}
CACHES=${CACHES:-dropped}
TRACE=${TRACE:-1}
TRACE_FILES=200

bench_init
bench_install
bench_build

start_seaweed
create_bucket cairn-bench
create_bucket juicefs-bench
start_redis
start_cairn_meta bench
mount_cairn bench cairn-bench "$WORK/mnt-cairn"
mount_juicefs bench juicefs-bench "$WORK/mnt-juicefs" 1
filesystems=(cairn juicefs)
if [[ ${DURABLE:-1} == 1 ]]; then
    create_bucket juicefs-durable-bench
    start_redis durable
    mount_juicefs durable juicefs-durable-bench "$WORK/mnt-juicefs-durable" 1
    filesystems+=(juicefs-durable)
fi

# cairn-bench's arguments for a CACHES mode.
cache_args() {
    case $1 in
    dropped) echo --drop-caches ;;
    aged) echo --drop-caches --age-ms 1100 ;;
    kept) echo ;;
    esac
}

raw=$WORK/meta.raw
: >"$raw"
read -r -a modes <<<"$CACHES"
for mode in "${modes[@]}"; do
    [[ $mode == dropped || $mode == kept || $mode == aged ]] ||
        die "CACHES: unknown mode $mode (use dropped, aged, kept)"
done
for mode in "${modes[@]}"; do
    read -r -a extra <<<"$(cache_args "$mode")"
    for threads in $THREADS; do
        for run in $(seq 1 "$RUNS"); do
            for fs in "${filesystems[@]}"; do
                out=$(timeout 600 "$CAIRN_BENCH" meta --dir "$WORK/mnt-$fs" --threads "$threads" \
                    --files "$FILES" "${extra[@]}") || die "cairn-bench meta on $fs failed (threads $threads, $mode)"
                while read -r line; do
                    echo "fs=$fs mode=$mode run=$run $line" | tee -a "$raw" >&2
                done <<<"$out"
            done
        done
    done
done
[[ -n ${RESULTS:-} ]] && cp "$raw" "$RESULTS"

requests=$WORK/fuse-requests.txt
: >"$requests"
if [[ $TRACE == 1 ]]; then
    if trace_available; then
        for mode in "${modes[@]}"; do
            read -r -a extra <<<"$(cache_args "$mode")"
            for fs in cairn juicefs; do
                trace_fuse_requests "$WORK/mnt-$fs" "$WORK/trace-$fs-$mode.txt" \
                    timeout 600 "$CAIRN_BENCH" meta --dir "$WORK/mnt-$fs" --threads 1 --files "$TRACE_FILES" \
                    --trace-marker "${extra[@]}" || die "traced cairn-bench meta on $fs failed"
                fuse_requests_per_op "$WORK/trace-$fs-$mode.txt" "$TRACE_FILES" | sed "s/^/$fs $mode /" >>"$requests"
            done
        done
    else
        log "the fuse:fuse_request_* tracepoints are not available: FUSE requests not counted"
    fi
fi

echo
echo "meta: FILES=$FILES per run, median of $RUNS runs; kernel caches $CACHES before stat and unlink;"
sync_note="--sync"
[[ ${CAIRN_SYNC:-1} == 1 ]] || sync_note="WITHOUT --sync"
echo "cairn meta serve $sync_note; JuiceFS on redis without persistence; 'durable': JuiceFS on redis"
echo "with appendfsync always (every change on disk before it is acknowledged, as with --sync)"
if [[ -n ${META_CPUS:-}${MOUNT_CPUS:-} ]]; then
    echo "pinned: metadata engines to CPUs ${META_CPUS:-any}, mount daemons to CPUs ${MOUNT_CPUS:-any}"
fi
python3 - "$raw" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    f = line.split()
    kv = dict(x.split("=", 1) for x in f if "=" in x)
    phase = next(x for x in f if "=" not in x)
    key = (kv["mode"], phase, int(kv["threads"]))
    rows.setdefault(key, {}).setdefault(kv["fs"], []).append(float(kv["ops_per_sec"]))
target = {"create": 2.0, "stat": 1.0, "unlink": 2.0}
order = {"create": 0, "stat": 1, "unlink": 2}
durable = any("juicefs-durable" in r for r in rows.values())
extra_head = f" {'durable ops/s':>13} | {'cairn/durable':>13} |" if durable else ""
extra_rule = f"{'-'*14}:|{'-'*14}:|" if durable else ""
print(f"| {'workload':<14} | {'threads':>7} | {'cairn ops/s':>11} | {'juicefs ops/s':>13} | {'cairn/juicefs':>13} | {'target':>6} | {'met':>3} |{extra_head}")
print(f"|{'-'*16}|{'-'*8}:|{'-'*12}:|{'-'*14}:|{'-'*14}:|{'-'*7}:|{'-'*5}|{extra_rule}")
modes = {k[0] for k in rows}
mode_order = {"dropped": 0, "aged": 1, "kept": 2}
for (mode, phase, threads) in sorted(rows, key=lambda k: (mode_order.get(k[0], 9), order.get(k[1], 9), k[2])):
    if mode != "dropped" and phase == "create" and "dropped" in modes:
        continue  # the same workload as with caches dropped: dropping comes after create
    r = rows[(mode, phase, threads)]
    c, j = statistics.median(r["cairn"]), statistics.median(r["juicefs"])
    ratio = c / j if j else float("inf")
    name = phase if len(modes) == 1 or mode == "dropped" else f"{phase} ({mode})"
    t = target.get(phase)
    met = "-" if t is None else ("yes" if ratio >= t else "NO")
    ts = "-" if t is None else f">= {t:g}x"
    extra = ""
    if durable:
        d = statistics.median(r["juicefs-durable"])
        extra = f" {d:>13.0f} | {(c / d if d else float('inf')):>12.2f}x |"
    print(f"| {name:<14} | {threads:>7} | {c:>11.0f} | {j:>13.0f} | {ratio:>12.2f}x | {ts:>6} | {met:>3} |{extra}")
PY
if [[ -s $requests ]]; then
    echo
    echo "FUSE requests per operation (1 thread, $TRACE_FILES files, untimed run under tracing):"
    cat "$requests"
fi
