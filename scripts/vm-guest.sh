#!/bin/sh
# Inside the test VM, as its root: delegate a cgroup v2 folder with cpu, memory and pids to
# ACCOUNT (as systemd's Delegate=yes would) and run the VM tests there as ACCOUNT with the
# cgroupfs driver; then start a user instance of systemd and run them with the systemd one.
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
# FUSE for the containers' /proc view, as distributions ship it (a 0666 /dev/fuse).
modprobe fuse 2>/dev/null || true
[ -e /dev/fuse ] || mknod -m 0666 /dev/fuse c 10 229
chmod 0666 /dev/fuse
echo "vm-guest: $(uname -r), cgroup v2 controllers: $(cat "$mine/cgroup.controllers")"
home="$(getent passwd "$account" | cut -d: -f6)"
uid="$(id -u "$account")"
cd "$project"
tests() {  # tests() DRIVER FILE [ENV...]: VM tests as the account, with that cgroup driver
    driver="$1"
    file="$2"
    shift 2
    echo "vm-guest: the $driver driver"
    runuser -u "$account" -- env -i HOME="$home" PATH=/usr/bin:/bin LANG=C.UTF-8 \
        PYTHONDONTWRITEBYTECODE=1 SQUISH_VM_TIER=1 SQUISH_CGROUP_DRIVER="$driver" "$@" \
        .venv/bin/python -m pytest -q -p no:cacheprovider -rs "$file"
}
tests cgroupfs tests/test_cgroups_vm.py

# The systemd driver: a user instance of systemd, as a login would start it (this VM's
# init is not systemd: /run/systemd/system makes systemd --user agree to run).
mkdir -p /run/systemd/system "/run/user/$uid"
chown "$account" "/run/user/$uid"
chmod 0700 "/run/user/$uid"
user_slice="$cg/user.slice/user-$uid.slice"
manager="$user_slice/user@$uid.service"
mkdir -p "$manager"
echo "+cpu +memory +pids" >"$cg/user.slice/cgroup.subtree_control"
echo "+cpu +memory +pids" >"$user_slice/cgroup.subtree_control"
chown -R "$account" "$manager"
# Started inside user@UID.service, as a login starts it (it then moves to its init.scope);
# sh -c so that $$ is the process being moved.
sh -c 'echo $$ >"$1/cgroup.procs"; shift; exec "$@"' sh "$manager" \
    runuser -u "$account" -- env -i HOME="$home" XDG_RUNTIME_DIR="/run/user/$uid" \
    PATH=/usr/bin:/bin /lib/systemd/systemd --user >/tmp/systemd-user.log 2>&1 &
for _ in $(seq 100); do
    if runuser -u "$account" -- env XDG_RUNTIME_DIR="/run/user/$uid" \
        systemctl --user is-system-running 2>/dev/null | grep -qE 'running|degraded'; then
        break
    fi
    sleep 0.1
done
# The tests (and the holder they start) live in user@UID.service too, as a terminal's do.
mkdir -p "$manager/squish-tests"
chown "$account" "$manager/squish-tests" "$manager/squish-tests/cgroup.procs"
echo $$ >"$manager/squish-tests/cgroup.procs"
tests systemd tests/test_cgroups_vm.py XDG_RUNTIME_DIR="/run/user/$uid"
# reconciler service: a unit of that systemd runs the loop; its stop leaves the containers.
# Its first use checks the host as `make check` does: give it the tun device a host has.
modprobe tun && chmod 0666 /dev/net/tun
tests systemd tests/test_service_vm.py XDG_RUNTIME_DIR="/run/user/$uid"
