# The guest tests of issue 5, each reported as one line on the console:
#   GUEST-TEST <name> PASS|FAIL (<seconds>s)
# then a GUEST-SUMMARY line. ci/vm/run counts the `run_test` lines at the
# end of this file to know how many PASS lines to expect. Every test runs
# against a real pool (metadata and data files on the guest's virtio disk),
# in a subshell with `set -e`, under its own time limit.
. /ci/guest-lib.sh

passed=0
failed=0

run_test() {
    local name=$1 limit=$2 start end status
    [ "${ONLY:-all}" = all ] || [ "$ONLY" = "$name" ] || return 0
    start=$(date +%s)
    timeout -s KILL "$limit" sh -c ". /ci/guest-lib.sh; . /ci/guest-tests.sh --define; set -ex; test_$name" \
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
        if [ "$VERBOSE" != 1 ]; then
            tail -n 40 /tmp/test-$name.log | sed "s/^/  $name| /" >/dev/console
            tail -n 10 /run/scoutfs-ublk/daemon.log 2>/dev/null | sed "s/^/  $name| daemon: /" >/dev/console
        fi
        failed=$((failed + 1))
    fi
    cleanup_all
}

# 1. 64 MiB through O_DIRECT, read back; del; add on the same pool; the
#    data is still there. Also what the kernel and `list` say of the
#    device, and `check` refusing the pool while it is served.
test_persist() {
    new_pool
    add_dev
    q=/sys/block/ublkb0/queue
    [ "$(cat $q/logical_block_size)" = 512 ]
    [ "$(cat $q/physical_block_size)" = 4096 ]
    [ "$(cat $q/write_cache)" = "write back" ]
    [ "$(cat $q/fua)" = 1 ]
    [ "$(cat $q/discard_max_bytes)" -gt 0 ]
    [ "$(cat $q/write_zeroes_max_bytes)" -gt 0 ]
    [ "$(cat $q/max_hw_sectors_kb)" = 1024 ]
    scoutfs-ublk list -n 0 | grep -q '^dev id 0: nr_hw_queues 1 queue_depth 64 block size 512 dev_capacity 2097152$'
    scoutfs-ublk list | grep -q 'daemon pid [0-9]* flags 0x[0-9a-f]* state LIVE$'
    scoutfs-ublk list --json | grep -q '"size_bytes": 1073741824'
    # The daemon runs in a mount namespace of its own.
    daemon=$(daemon_pid 0)
    [ "$(readlink /proc/$daemon/ns/mnt)" != "$(readlink /proc/self/ns/mnt)" ]
    # The pool is in use: check refuses and names the device serving it.
    must_fail check_pool
    grep -q "served by /dev/ublkb0 (daemon pid $daemon; .scoutfs-ublk del -n 0. stops it)" /tmp/failed.err
    dd if=/dev/urandom of=/tmp/src bs=1M count=64 2>/dev/null
    dd if=/tmp/src of=$DEV bs=1M oflag=direct
    same_bytes /tmp/src $DEV 64
    del_dev
    add_dev
    same_bytes /tmp/src $DEV 64
    del_dev
    check_pool
}

# 2. fio random writes over 2 queues at depth 32 with crc32c verification,
#    then a mixed read/write job with an fsync every 16 writes.
test_fio() {
    new_pool
    add_dev -q 2 -d 32
    fio --name=randwrite-verify --filename=$DEV --ioengine=io_uring --direct=1 \
        --rw=randwrite --bs=4k --iodepth=32 --size=32M --verify=crc32c \
        --verify_fatal=1 --numjobs=1
    fio --name=mixed-fsync --filename=$DEV --ioengine=io_uring --direct=1 \
        --rw=randrw --rwmixread=50 --bs=16k --iodepth=16 --size=16M --fsync=16 \
        --numjobs=2 --offset_increment=64M
    del_dev
    check_pool
}

# 3. ext4 and xfs: make, mount, write files, sync, umount, del and add
#    again, remount, checksums match, fsck clean.
test_filesystems() {
    new_pool
    add_dev
    for fs in ext4 xfs; do
        case $fs in
            ext4) mkfs.ext4 -q -F $DEV ;;
            xfs) mkfs.xfs -q -f $DEV ;;
        esac
        mkdir -p /mnt/fs
        mount -t $fs $DEV /mnt/fs
        write_files /mnt/fs 12
        sync
        (cd /mnt/fs && sha256sum f*) >/tmp/sums-$fs
        umount /mnt/fs
        del_dev
        add_dev
        mount -t $fs $DEV /mnt/fs
        (cd /mnt/fs && sha256sum -c /tmp/sums-$fs)
        umount /mnt/fs
        case $fs in
            ext4) fsck.ext4 -fn $DEV ;;
            xfs) xfs_repair -n $DEV ;;
        esac
    done
    del_dev
    check_pool
}

# 4. blkdiscard a range: it reads as zeros, and after del the pool's check
#    shows the space free again. WRITE_ZEROES with NOUNMAP (blkdiscard -z)
#    zeroes and keeps the space; without it (fallocate -p) the space is freed.
test_discard() {
    new_pool
    add_dev
    dd if=/dev/urandom of=$DEV bs=1M count=32 oflag=direct 2>/dev/null
    del_dev
    before=$(used_bytes)
    add_dev
    blkdiscard -o 8388608 -l 16777216 $DEV
    dd if=$DEV bs=1M skip=8 count=16 iflag=direct 2>/dev/null | cmp -n 16777216 - /dev/zero
    del_dev
    after=$(used_bytes)
    echo "used before discard: $before, after: $after"
    [ $((before - after)) -ge 16777216 ]
    check_pool
    add_dev
    blkdiscard -z -o 0 -l 4194304 $DEV
    fallocate -p -o 25165824 -l 4194304 $DEV
    dd if=$DEV bs=1M count=4 iflag=direct 2>/dev/null | cmp -n 4194304 - /dev/zero
    dd if=$DEV bs=1M skip=24 count=4 iflag=direct 2>/dev/null | cmp -n 4194304 - /dev/zero
    dd if=$DEV bs=1M skip=4 count=4 iflag=direct 2>/dev/null | cmp -s -n 4194304 - /dev/zero && false
    del_dev
    zeroed=$(used_bytes)
    echo "used after write-zeroes: $zeroed"
    [ "$zeroed" = $((after - 4194304)) ]
    check_pool
}

# 5. kill -9 the daemon while fio writes and verifies (each write durable
#    on completion: O_DSYNC, i.e. FUA); recover; fio finishes and verifies.
test_recover() {
    new_pool
    add_dev -q 2 -d 16
    fio --name=verify-across-recovery --filename=$DEV --ioengine=io_uring --direct=1 \
        --sync=1 --rw=randwrite --bs=64k --iodepth=16 --size=48M --verify=crc32c \
        --verify_fatal=1 >/tmp/fio-recover.log 2>&1 &
    fio_pid=$!
    # A daemon that dies holding every tag of a queue is noticed only when
    # a request times out: the daemon sets 5 s instead of the kernel's 30.
    [ "$(cat /sys/block/ublkb0/queue/io_timeout)" = 5000 ]
    sleep 1
    alive $fio_pid
    daemon=$(daemon_pid 0)
    kill -9 "$daemon"
    wait_gone "$daemon"
    scoutfs-ublk list -n 0
    scoutfs-ublk recover -n 0
    scoutfs-ublk list -n 0 | grep -q 'state LIVE'
    alive $fio_pid   # the job spans the crash and the recovery
    wait_pid $fio_pid 90 || { cat /tmp/fio-recover.log; false; }
    cat /tmp/fio-recover.log
    grep -q 'err= 0' /tmp/fio-recover.log
    del_dev
    check_pool
}

# 6. del while fio runs: the device goes away, fio gets errors, nothing
#    hangs, the pool checks clean.
test_del_busy() {
    new_pool
    add_dev -q 2 -d 32
    fio --name=busy --filename=$DEV --ioengine=io_uring --direct=1 --rw=randrw \
        --bs=4k --iodepth=32 --size=256M --time_based --runtime=60 \
        >/tmp/fio-busy.log 2>&1 &
    fio_pid=$!
    sleep 2
    kill -0 $fio_pid
    timeout 30 scoutfs-ublk del -n 0
    wait_for ! $DEV
    status=0
    wait_pid $fio_pid 30 || status=$?
    cat /tmp/fio-busy.log
    [ "$status" != 0 ]
    [ "$status" != 124 ]
    ! pidof scoutfs-ublk
    check_pool
}

# 6b. SIGTERM to the daemon stops and deletes its device (the stop goes
#     through a control handle made on the signal thread); the pool is
#     committed and checks clean.
test_sigterm() {
    new_pool
    add_dev -q 2
    dd if=/dev/urandom of=/tmp/src bs=1M count=8 2>/dev/null
    dd if=/tmp/src of=$DEV bs=1M oflag=direct
    daemon=$(daemon_pid 0)
    kill -TERM "$daemon"
    wait_for ! $DEV
    wait_gone "$daemon"
    ! scoutfs-ublk list -n 0
    check_pool
    add_dev
    same_bytes /tmp/src $DEV 8
    del_dev
}

# 7. Crash consistency through the kernel: files written and synced, more
#    written without sync, kill -9 with no recover, del, add again: every
#    synced file matches its checksum and the filesystem checks clean.
test_crash() {
    new_pool
    add_dev
    mkfs.ext4 -q -F $DEV
    mkdir -p /mnt/fs
    mount -t ext4 $DEV /mnt/fs
    write_files /mnt/fs 10
    sync
    (cd /mnt/fs && sha256sum f*) >/tmp/sums-synced
    mkdir /mnt/fs/unsynced
    write_files /mnt/fs/unsynced 6
    daemon=$(daemon_pid 0)
    kill -9 "$daemon"
    wait_gone "$daemon"
    # del fails the I/O the kernel held for the dead daemon, then waits for
    # the last opener of the disk: the mounted filesystem, unmounted next.
    scoutfs-ublk del -n 0 &
    del_pid=$!
    wait_for ! $DEV
    umount /mnt/fs || umount -l /mnt/fs
    wait_pid $del_pid 30
    add_dev
    mount -t ext4 $DEV /mnt/fs
    (cd /mnt/fs && sha256sum -c /tmp/sums-synced)
    umount /mnt/fs
    fsck.ext4 -fn $DEV
    del_dev
    check_pool
}

# 8. A full metadata device: the metadata file on a 1 MiB tmpfs. Random
#    writes with an fsync every 32 run until the pool cannot commit; the
#    failing flush reaches fio as an error, list shows the pool failed,
#    reads go on and writes fail,
#    `del` fails naming the final commit, and once the tmpfs is grown the pool checks clean and what was
#    synced before still reads back.
test_meta_full() {
    mkdir -p /mnt/small
    mount -t tmpfs -o size=1m tmpfs /mnt/small
    rm -f $POOL_DATA
    scoutfs-ublk mkfs --meta /mnt/small/meta --data $POOL_DATA --size $POOL_SIZE
    scoutfs-ublk add -n 0 --meta /mnt/small/meta --data $POOL_DATA
    wait_for $DEV
    dd if=/dev/urandom of=/tmp/src bs=1M count=4 2>/dev/null
    dd if=/tmp/src of=$DEV bs=1M oflag=direct conv=fsync
    if fio --name=fill --filename=$DEV --ioengine=io_uring --direct=1 \
        --rw=randwrite --bs=4k --iodepth=32 --offset=4M --size=1020M \
        --fsync=32 >/tmp/fio-fill.log 2>&1; then
        echo "fio wrote 1 GiB without an error: the metadata never filled"
        return 1
    fi
    grep -i "error" /tmp/fio-fill.log | head -3
    # list shows the failed pool and its cause (the daemon looks each second).
    tries=0
    until scoutfs-ublk list -n 0 | grep -q "failed: the pool stopped writing.*No space left"; do
        if [ $tries -ge 50 ]; then
            scoutfs-ublk list -n 0
            echo "list never showed the failed pool"
            return 1
        fi
        sleep 0.1
        tries=$((tries + 1))
    done
    scoutfs-ublk list --json | grep -q '"failure"'
    # Reads go on; a write is refused.
    same_bytes /tmp/src $DEV 4
    if dd if=/dev/zero of=$DEV bs=4k count=1 oflag=direct conv=fsync 2>/dev/null; then
        echo "a write was acknowledged by a pool that cannot commit"
        return 1
    fi
    must_fail scoutfs-ublk del -n 0
    grep -q "final commit failed" /tmp/failed.err
    wait_for ! $DEV
    mount -o remount,size=64m /mnt/small
    scoutfs-ublk check --meta /mnt/small/meta --data $POOL_DATA
    scoutfs-ublk add -n 0 --meta /mnt/small/meta --data $POOL_DATA
    wait_for $DEV
    same_bytes /tmp/src $DEV 4
    del_dev
    scoutfs-ublk check --meta /mnt/small/meta --data $POOL_DATA
    umount /mnt/small
}

# 9. A daemon that panics (injected, on a thread of its own) dies at once
#    with its reason recorded: list shows the device's daemon died and
#    why, del fails with the panic, and the pool, added again, checks
#    clean and holds what was synced.
test_panic() {
    new_pool
    SCOUTFS_UBLK_INJECT_PANIC_MS=8000 scoutfs-ublk add -n 0 --meta $POOL_META --data $POOL_DATA
    wait_for $DEV
    daemon=$(daemon_pid 0)
    dd if=/dev/urandom of=/tmp/src bs=1M count=4 2>/dev/null
    dd if=/tmp/src of=$DEV bs=1M oflag=direct conv=fsync
    wait_gone "$daemon"
    scoutfs-ublk list -n 0 | tee /tmp/list.txt
    grep -q "died: the daemon panicked.*SCOUTFS_UBLK_INJECT_PANIC_MS" /tmp/list.txt
    must_fail scoutfs-ublk del -n 0
    grep -q "the daemon panicked" /tmp/failed.err
    wait_for ! $DEV
    check_pool
    add_dev
    same_bytes /tmp/src $DEV 4
    del_dev
    check_pool
}

[ "${1:-}" = "--define" ] && return 0

run_test persist 60
run_test fio 90
run_test filesystems 90
run_test discard 45
run_test recover 120
run_test del_busy 60
run_test sigterm 45
run_test crash 60
run_test meta_full 90
run_test panic 60
say "GUEST-SUMMARY passed=$passed failed=$failed"
