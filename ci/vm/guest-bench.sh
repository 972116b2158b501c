# The ublk-vs-loop benchmark, run in the guest by `ci/vm/run --bench`.
#
# The same fio jobs against /dev/ublkb0 (a pool whose files live on the
# guest's virtio disk) and against the kernel loop device with direct I/O
# over a file on the same disk. Under emulation absolute numbers mean
# little; the ratio ublk/loop is the figure. Each job prints one line:
#   BENCH <job> <ublk-iops> <ublk-MiB/s> <loop-iops> <loop-MiB/s>
. /ci/guest-lib.sh

# Region each job covers, and how long each timed job runs.
BENCH_REGION=512M
BENCH_RUNTIME_SECS=${BENCH_RUNTIME_SECS:-10}
LOOP_FILE=/mnt/disk/loop.img

# fio_job DEVICE NAME RW BS DEPTH: prints "<iops> <MiB/s>" of the job's
# main direction (terse format v3: read iops field 8, write iops field 49,
# bandwidths in KiB/s at 7 and 48).
fio_job() {
    local dev=$1 name=$2 rw=$3 bs=$4 depth=$5
    fio --name="$name" --filename="$dev" --ioengine=io_uring --direct=1 \
        --rw="$rw" --bs="$bs" --iodepth="$depth" --size=$BENCH_REGION \
        --time_based --runtime=$BENCH_RUNTIME_SECS --ramp_time=1 \
        --output-format=terse --terse-version=3 --group_reporting |
        awk -F';' -v rw="$rw" '{
            if (rw ~ /read/) { iops = $8; bw = $7 } else { iops = $49; bw = $48 }
            printf "%d %.1f\n", iops, bw / 1024
        }'
}

# Fills the region once so reads hit written blocks on both devices.
precondition() {
    fio --name=fill --filename="$1" --ioengine=io_uring --direct=1 --rw=write \
        --bs=1m --iodepth=8 --size=$BENCH_REGION --output-format=terse >/dev/null
}

run_jobs() {
    local dev=$1 out=$2
    precondition "$dev"
    : >"$out"
    for job in "randread 4k 32" "randwrite 4k 32" "read 1m 32" "write 1m 32"; do
        set -- $job
        echo "$1-$2 $(fio_job "$dev" "$1-$2" "$1" "$2" "$3")" >>"$out"
    done
}

set -e
new_pool
add_dev -q 1 -d 64
run_jobs $DEV /tmp/bench-ublk
del_dev

fallocate -l $BENCH_REGION $LOOP_FILE
loop=$(losetup --direct-io=on -f --show $LOOP_FILE)
run_jobs "$loop" /tmp/bench-loop
losetup -d "$loop"

# Join the two result files line by line.
while read -r name ublk_iops ublk_bw && read -r _ loop_iops loop_bw <&3; do
    say "BENCH $name $ublk_iops $ublk_bw $loop_iops $loop_bw"
done </tmp/bench-ublk 3</tmp/bench-loop
say "GUEST-BENCH-DONE"
