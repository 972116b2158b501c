. /ci/guest-lib.sh
say "GUEST-BENCH-DONE"
