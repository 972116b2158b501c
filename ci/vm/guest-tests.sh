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

[ "${1:-}" = "--define" ] && return 0

run_test modules 10
say "GUEST-SUMMARY passed=$passed failed=$failed"
