#!/usr/bin/env bash
# The VM test tier: boot the Debian kernel under qemu (virtme-ng shares this filesystem with
# it), where cgroup v2 has every controller, and run tests/test_cgroups_vm.py there.
#
#   scripts/vm-test.sh        (as the unprivileged account, from the project folder)
#
# Skipped, with the reason printed, only where qemu cannot run: no qemu-system-x86_64,
# no kernel image in /boot, or not x86_64. KVM is not used (it hangs on this kind of
# machine); TCG boots in about 10 s and the tier takes about 1–2 minutes.
set -euo pipefail

say() { printf 'test-vm: %s\n' "$*"; }
skip() { say "SKIPPED: $*"; exit 0; }

[[ "$(uname -m)" == x86_64 ]] || skip "the VM tier is set up for x86_64 hosts only"
command -v qemu-system-x86_64 >/dev/null || skip "qemu-system-x86_64 is missing (sudo apt-get install qemu-system-x86; make as root installs it)"
kernel="$(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n1 || true)"
[[ -n "$kernel" && -r "$kernel" ]] || skip "no readable kernel image in /boot (sudo apt-get install linux-image-amd64; make as root installs it)"
vng=".venv/bin/vng"
[[ -x "$vng" ]] || skip "virtme-ng is not installed in .venv (make venv)"

say "booting $kernel under qemu (TCG) with 2 CPUs and 1 GiB"
export PATH="$PWD/.venv/bin:$PATH"
# vng reopens its stdio through /proc/self/fd; a pipe made by another account (CI's tee,
# as root) cannot be reopened and vng then hangs: give it a file of ours and print that.
log="$(mktemp "${TMPDIR:-/tmp}/squish-vm.XXXXXX")"
trap 'rm -f -- "$log"' EXIT
set +e
timeout 900 "$vng" --run "$kernel" --disable-kvm --cpus 2 --memory 1G \
    --exec "sh scripts/vm-guest.sh $(printf '%q ' "$(id -un)" "$PWD")" </dev/null >"$log" 2>&1
rc=$?
set -e
cat -- "$log"
if ((rc != 0)); then
    say "FAILED (exit $rc)"
    exit "$rc"
fi
say "OK"
