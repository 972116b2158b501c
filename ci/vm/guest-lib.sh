# Shared helpers of the guest scripts (sourced by busybox sh).

# Per-test bound: a test that hangs is killed and fails, the rest still run.
TEST_TIMEOUT_SECS=${TEST_TIMEOUT_SECS:-60}
POOL_META=/mnt/disk/pool.meta
POOL_DATA=/mnt/disk/pool.data
DEV=/dev/ublkb0

say() { echo "$*" >/dev/console 2>/dev/null || echo "$*"; }

# Waits (bounded) until a path exists, or does not exist with "!".
wait_for() {
    local want=present path=$1 tries=0
    if [ "$1" = "!" ]; then want=absent; path=$2; fi
    while [ $tries -lt 200 ]; do
        if [ "$want" = present ] && [ -e "$path" ]; then return 0; fi
        if [ "$want" = absent ] && [ ! -e "$path" ]; then return 0; fi
        sleep 0.1
        tries=$((tries + 1))
    done
    echo "timed out waiting for $want $path"
    return 1
}

# Returns the device and the pool to a clean state between tests.
cleanup_all() {
    killall -9 fio dd 2>/dev/null
    for m in /mnt/fs; do umount "$m" 2>/dev/null; done
    scoutfs-ublk del -a >/dev/null 2>&1
    losetup -D 2>/dev/null
    sleep 0.2
}
