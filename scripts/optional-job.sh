# Sourced by CI's optional jobs (scripts/test-newest.sh, scripts/test-gpu-torch.sh): installing a
# job's own versions is infrastructure, not a test result. A failed install (no registry, no disk)
# says so loudly and does not fail CI unless the job's REQUIRE variable is 1; a test that fails
# once the install worked fails CI.

# install_failed MESSAGE REQUIRE_VAR: print the banner, then exit 1 if $REQUIRE_VAR is 1, else 0.
install_failed() {
    echo "=================================================================="
    echo "$1"
    echo "=================================================================="
    [ "${!2:-0}" = 1 ] && exit 1
    exit 0
}
