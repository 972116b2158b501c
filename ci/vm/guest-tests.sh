# The guest tests of issue 5, each reported as one line on the console:
#   GUEST-TEST <name> PASS|FAIL (<seconds>s)
# then a GUEST-SUMMARY line. ci/vm/run counts the `run_test` lines below to
# know how many PASS lines to expect.
. /ci/guest-lib.sh

passed=0
failed=0

run_test() {
    local name=$1 limit=$2 start end status
    start=$(date +%s)
    timeout -s KILL "$limit" sh -c ". /ci/guest-lib.sh; . /ci/guest-tests.sh --define; set -e; test_$name" \
        >/tmp/test-$name.log 2>&1
    status=$?
    end=$(date +%s)
    if [ "$VERBOSE" = 1 ]; then
        sed "s/^/  $name| /" /tmp/test-$name.log >/dev/console
    fi
    if [ $status = 0 ]; then
        say "GUEST-TEST $name PASS ($((end - start))s)"
        passed=$((passed + 1))
    else
        say "GUEST-TEST $name FAIL ($((end - start))s, status $status)"
        tail -n 30 /tmp/test-$name.log | sed "s/^/  $name| /" >/dev/console
        failed=$((failed + 1))
    fi
    cleanup_all
}

test_modules() {
    test -c /dev/ublk-control
}

test_smoke() {
    export SCOUTFS_UBLK_DEV_MEM_MIB=256
    scoutfs-ublk add -q 2 -d 32 --meta /x --data /y
    wait_for /dev/ublkb0
    scoutfs-ublk list
    scoutfs-ublk list --json
    cat /sys/block/ublkb0/queue/write_cache /sys/block/ublkb0/queue/fua /sys/block/ublkb0/queue/discard_max_bytes /sys/block/ublkb0/queue/write_zeroes_max_bytes /sys/block/ublkb0/queue/max_sectors_kb /sys/block/ublkb0/queue/physical_block_size
    dd if=/dev/urandom of=/tmp/src bs=1M count=16
    dd if=/tmp/src of=$DEV bs=1M oflag=direct
    dd if=$DEV of=/tmp/back bs=1M count=16 iflag=direct
    cmp /tmp/src /tmp/back
    blkdiscard -o 0 -l 1048576 $DEV
    fio --name=v --filename=$DEV --rw=randwrite --bs=4k --iodepth=16 --ioengine=io_uring --direct=1 --size=32M --verify=crc32c --numjobs=1
    scoutfs-ublk del -n 0
    wait_for ! /dev/ublkb0
    cat /run/scoutfs-ublk/daemon.log
}

[ "${1:-}" = "--define" ] && return 0

run_test modules 10
run_test smoke 100
say "GUEST-SUMMARY passed=$passed failed=$failed"
