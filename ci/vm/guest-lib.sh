# Shared helpers of the guest scripts (sourced by busybox sh).

POOL_META=/mnt/disk/pool.meta
POOL_DATA=/mnt/disk/pool.data
POOL_SIZE=1G
DEV=/dev/ublkb0

# busybox sh prefers its own applets over $PATH; these need util-linux's
# (losetup --direct-io, blkdiscard -z, fallocate -p on a block device).
losetup() { /usr/sbin/losetup "$@"; }
blkdiscard() { /usr/sbin/blkdiscard "$@"; }
fallocate() { /usr/sbin/fallocate "$@"; }

say() { echo "$*" >/dev/console 2>/dev/null || echo "$*"; }

# Waits (bounded, 20 s) until a path exists, or with "!" until it does not.
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

# Whether process $1 exists and is not a zombie.
alive() {
    [ -r /proc/$1/stat ] || return 1
    ! sed 's/.*) //' /proc/$1/stat | grep -q '^[ZX]'
}

# Waits (bounded, 20 s) until process $1 is gone.
wait_gone() {
    local tries=0
    while alive "$1"; do
        [ $tries -lt 200 ] || { echo "process $1 still alive"; return 1; }
        sleep 0.1
        tries=$((tries + 1))
    done
}

# Waits at most $2 seconds for our background child $1; returns its exit
# status, or 124 after killing it when the time is up.
wait_pid() {
    local pid=$1 limit=$2 tenths=0
    while alive "$pid"; do
        if [ $tenths -ge $((limit * 10)) ]; then
            echo "process $pid still running after ${limit}s: killing it"
            kill -9 "$pid"
            wait "$pid"
            return 124
        fi
        sleep 0.1
        tenths=$((tenths + 1))
    done
    wait "$pid"
}

new_pool() {
    rm -f $POOL_META $POOL_DATA
    scoutfs-ublk mkfs --meta $POOL_META --data $POOL_DATA --size $POOL_SIZE
}

# add_dev [-q N] [-d N]: serves the pool as /dev/ublkb0.
add_dev() {
    scoutfs-ublk add -n 0 "$@" --meta $POOL_META --data $POOL_DATA
    wait_for $DEV
}

del_dev() {
    scoutfs-ublk del -n 0
    wait_for ! $DEV
}

check_pool() {
    scoutfs-ublk check --meta $POOL_META --data $POOL_DATA
}

# Bytes of the data device in use, from `check`'s space accounting
# ("... data blocks N used J journal M free", 4 KiB blocks).
used_bytes() {
    local blocks
    blocks=$(scoutfs-ublk check --meta $POOL_META --data $POOL_DATA | sed -n 's/.*data blocks \([0-9]*\) used.*/\1/p')
    [ -n "$blocks" ] || { echo "no data usage in check output" >&2; return 1; }
    echo $((blocks * 4096))
}

# must_fail CMD...: CMD has to fail; its stderr is kept in /tmp/failed.err
# (and shown in the test's log) for the checks of its message that follow.
must_fail() {
    if "$@" 2>/tmp/failed.err; then
        echo "succeeded, but must fail: $*"
        return 1
    fi
    cat /tmp/failed.err
}

daemon_pid() {
    scoutfs-ublk list -n "$1" | sed -n 's/.*daemon pid \([0-9]*\).*/\1/p'
}

# Compares the first $3 MiB of device $2 (read with O_DIRECT) with file $1.
same_bytes() {
    dd if="$2" bs=1M count="$3" iflag=direct 2>/dev/null | cmp - "$1"
}

# write_files DIR N: N files of random data of different sizes.
write_files() {
    local i=1
    while [ $i -le $2 ]; do
        dd if=/dev/urandom of="$1/f$i" bs=64k count=$((i * 3 + 1)) 2>/dev/null
        i=$((i + 1))
    done
}

# Returns the device and the pool to a clean state between tests.
cleanup_all() {
    killall -9 fio dd 2>/dev/null
    umount /mnt/fs 2>/dev/null
    scoutfs-ublk del -a >/dev/null 2>&1
    killall -9 scoutfs-ublk 2>/dev/null
    scoutfs-ublk del -a >/dev/null 2>&1
    umount /mnt/small 2>/dev/null
    losetup -D 2>/dev/null
    rm -f /tmp/src /tmp/fio-*.log
}
