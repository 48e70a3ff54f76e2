#!/bin/sh
# Inside the test VM, as its root: delegate a cgroup v2 folder with cpu, memory and pids to
# ACCOUNT (as systemd's Delegate=yes would), then run the VM tests there as ACCOUNT.
#
#   scripts/vm-guest.sh ACCOUNT PROJECT_DIR
set -eu
account="$1"
project="$2"
cg=/sys/fs/cgroup
mine="$cg/squish-$account"
echo "+cpu +memory +pids" >"$cg/cgroup.subtree_control"
mkdir -p "$mine/session"
echo $$ >"$mine/session/cgroup.procs"  # a folder with controllers below it holds no process
echo "+cpu +memory +pids" >"$mine/cgroup.subtree_control"
for folder in "$mine" "$mine/session"; do
    chown "$account" "$folder" "$folder/cgroup.procs" "$folder/cgroup.subtree_control" \
        "$folder/cgroup.threads"
done
echo "vm-guest: $(uname -r), cgroup v2 controllers: $(cat "$mine/cgroup.controllers")"
home="$(getent passwd "$account" | cut -d: -f6)"
cd "$project"
exec runuser -u "$account" -- env -i HOME="$home" PATH=/usr/bin:/bin LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 SQUISH_VM_TIER=1 .venv/bin/python -m pytest -q -p no:cacheprovider -rs \
    tests/test_cgroups_vm.py
