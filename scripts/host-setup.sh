#!/usr/bin/env bash
# Root-only host preparation for squish. Idempotent: run it as often as you like.
#
#   1. installs the Debian packages squish needs, only those that are missing;
#   2. creates the unprivileged account that runs squish (SQUISH_USER, default "squish")
#      with a home only it may enter (0700: its squishfiles and their [env] values live
#      there), makes an existing home of it 0700 too, and makes sure it has one
#      subordinate uid/gid range;
#   3. lets unprivileged users create user namespaces, if the kernel forbids it;
#   4. makes /dev/net/tun usable by that account (slirp4netns needs it, mode 0666);
#   5. delegates a cgroup v2 folder to that account, as systemd's user@.service would
#      (`make` as root runs the account's commands inside it: `runuser` sessions get no
#      user@.service). Only the v2 hierarchy is touched, never a v1 one;
#   6. builds the native container init and log pump (runtime/native) into
#      /usr/local/libexec/squish, owned by root and not readable (see runtime/native);
#   7. for `make bench` (a "bench" argument): the anchors' packages, and a check that the
#      account can run podman.
#
#   scripts/host-setup.sh [MAKE GOAL...]      (scripts/as-user.sh passes make's goals)
set -euo pipefail

SQUISH_USER="${SQUISH_USER:-squish}"
# nftables: the nft client, NAT and isolation for bridge networks; git: the git source;
# openssh-client: ssh-keygen, which git runs to verify commit signatures (and the tests
# sign with); openssl: the https test's certificate; the last two: the VM test tier;
# gcc, libc6-dev: the native init and log pump (step 6; linked statically, so libc.a).
PACKAGES=(slirp4netns nftables uidmap busybox-static bubblewrap python3-venv make git procps tar
    libseccomp2 openssh-client openssl gcc libc6-dev
    qemu-system-x86 linux-image-amd64)
# `make bench` measures squish against podman with runc (crun refuses a hybrid cgroup host)
# and against bwrap (installed above, with uidmap, for every goal).
BENCH_PACKAGES=(podman runc)
for goal in "$@"; do
    [[ "$goal" != bench ]] || PACKAGES+=("${BENCH_PACKAGES[@]}")
done

say() { printf 'host-setup: %s\n' "$*"; }
die() { printf 'host-setup: ERROR: %s\n' "$*" >&2; exit 1; }

[[ "$(id -u)" == 0 ]] || die "must run as root (it installs packages and creates an account)"

# --- 1. Debian packages -------------------------------------------------------
is_installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]
}
missing=()
for pkg in "${PACKAGES[@]}"; do
    is_installed "$pkg" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    say "installing missing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
else
    say "Debian packages present: ${PACKAGES[*]}"
fi

# --- 2. the unprivileged account ------------------------------------------------
# The account's home holds its squishfiles and their [env] values: no other account may
# read it or pass through it. useradd would make it 0755 (login.defs leaves HOME_MODE
# unset on Debian); an existing one is closed as well.
create_account() { # NAME [useradd options]
    useradd --create-home --key HOME_MODE=0700 --shell /bin/bash "$@"
}
private_home() { # HOME
    local mode
    mode="$(stat -c %a "$1")"
    if ((8#$mode & 8#077)); then
        say "home $1 is mode $mode: other accounts could read its squishfiles and [env] values;" \
            "making it 0700"
        chmod go-rwx -- "$1"
    fi
}
[[ "$SQUISH_USER" =~ ^[a-z_][a-z0-9_-]*$ ]] || die "SQUISH_USER='$SQUISH_USER' is not a valid account name"
if id -u "$SQUISH_USER" >/dev/null 2>&1; then
    say "account '$SQUISH_USER' exists (uid $(id -u "$SQUISH_USER"))"
else
    say "creating account '$SQUISH_USER'"
    create_account "$SQUISH_USER"
fi
uid="$(id -u "$SQUISH_USER")"
gid="$(id -g "$SQUISH_USER")"
[[ "$uid" != 0 ]] || die "account '$SQUISH_USER' has uid 0; squish must run unprivileged"

home="$(getent passwd "$SQUISH_USER" | cut -d: -f6)"
[[ -n "$home" && "$home" == /* ]] || die "account '$SQUISH_USER' has no usable home directory in /etc/passwd"
if [[ ! -d "$home" ]]; then
    say "creating home directory $home"
    install -d -m 0700 -o "$uid" -g "$gid" "$home"
fi
[[ "$(stat -c %u "$home")" == "$uid" ]] || die "$home is not owned by '$SQUISH_USER'"
private_home "$home"

# One subordinate range per file. useradd normally writes it already; only add one when
# neither the name nor the uid has an entry (a duplicate entry breaks newuidmap).
has_subid() { grep -qE "^(${SQUISH_USER}|${uid}):[0-9]+:[0-9]+\$" "$1" 2>/dev/null; }
next_free_start() { # first start >= 100000 beyond every existing range in $1
    awk -F: 'BEGIN { m = 100000 } NF == 3 && $2 + $3 > m { m = $2 + $3 } END { print m }' "$1" 2>/dev/null \
        || echo 100000
}
if ! has_subid /etc/subuid; then
    start="$(next_free_start /etc/subuid)"
    say "adding subordinate uids $start-$((start + 65535)) for '$SQUISH_USER'"
    usermod --add-subuids "$start-$((start + 65535))" "$SQUISH_USER"
fi
if ! has_subid /etc/subgid; then
    start="$(next_free_start /etc/subgid)"
    say "adding subordinate gids $start-$((start + 65535)) for '$SQUISH_USER'"
    usermod --add-subgids "$start-$((start + 65535))" "$SQUISH_USER"
fi
say "subordinate ids: $(grep -E "^(${SQUISH_USER}|${uid}):" /etc/subuid | head -n1) (uid)," \
    "$(grep -E "^(${SQUISH_USER}|${uid}):" /etc/subgid | head -n1) (gid)"

as_user() { (cd / && runuser -u "$SQUISH_USER" -- "$@"); }

# --- 3. unprivileged user namespaces -------------------------------------------
if ! as_user unshare --user true 2>/dev/null; then
    say "'$SQUISH_USER' cannot create a user namespace; enabling unprivileged user namespaces"
    if [[ -e /proc/sys/kernel/unprivileged_userns_clone ]]; then
        sysctl -q -w kernel.unprivileged_userns_clone=1 || true
    fi
    if [[ "$(cat /proc/sys/user/max_user_namespaces 2>/dev/null || echo 1)" == 0 ]]; then
        sysctl -q -w user.max_user_namespaces=15000 || true
    fi
    as_user unshare --user true || die "unprivileged user namespaces are still unavailable on this host"
fi
say "unprivileged user namespaces work"

# --- 4. /dev/net/tun ----------------------------------------------------------------
if [[ ! -c /dev/net/tun ]]; then
    say "/dev/net/tun is missing; loading the tun module"
    modprobe tun 2>/dev/null || true
    if [[ ! -c /dev/net/tun ]]; then
        mkdir -p /dev/net
        mknod -m 0666 /dev/net/tun c 10 200
    fi
fi
if ! as_user sh -c ': <>/dev/net/tun' 2>/dev/null; then
    say "/dev/net/tun is mode $(stat -c %a /dev/net/tun) and '$SQUISH_USER' cannot open it;" \
        "setting it to 0666 (what distributions ship; slirp4netns needs it)"
    chmod 0666 /dev/net/tun
    as_user sh -c ': <>/dev/net/tun' || die "'$SQUISH_USER' still cannot open /dev/net/tun"
fi
say "/dev/net/tun is usable by '$SQUISH_USER'"

# --- 5. a delegated cgroup v2 folder -------------------------------------------------
# <v2 mount>/squish-<account>, owned by the account (the folder and its cgroup.procs,
# cgroup.subtree_control and cgroup.threads, as systemd's Delegate=yes does), with a
# "session" child where the account's commands run: a folder with controllers enabled
# below it may hold no processes itself.
# The filesystem type follows the " - " separator (optional fields come before it).
v2="$(awk '{ for (i = 7; i <= NF; i++) if ($i == "-") { if ($(i + 1) == "cgroup2" && $4 == "/") { print $5; exit } break } }' /proc/self/mountinfo)"
if [[ -z "$v2" ]]; then
    say "no cgroup v2 hierarchy here: containers run without cgroups (limits are refused)"
else
    delegated="$v2/squish-$SQUISH_USER"
    if [[ ! -d "$delegated/session" ]]; then
        mkdir -p "$delegated/session"
    fi
    chown "$uid:$gid" "$delegated" "$delegated/session"
    for f in cgroup.procs cgroup.subtree_control cgroup.threads; do
        chown "$uid:$gid" "$delegated/$f" "$delegated/session/$f"
    done
    # Controllers are left as the host set them (a hybrid host offers none on v2).
    say "cgroup v2 folder $delegated delegated to '$SQUISH_USER'" \
        "(controllers it offers: $(cat "$delegated/cgroup.controllers" | tr -s ' ' || true))"
fi
# --- 6. the native init and log pump ------------------------------------------------
# Named by a hash of the source (runtime.native.binary_name computes the same): a holder
# uses the binary only if it was built from the source it runs; older ones stay for the
# checkouts that still name them. Mode 0711: the account may execute it, not read it.
native_src="$(dirname "$0")/../runtime/native/squish-native.c"
native_dir=/usr/local/libexec/squish
native_bin="$native_dir/squish-native-$(sha256sum "$native_src" | cut -c1-16)"
# A failed build is not fatal: containers then keep the Python init and log pump.
if [[ ! -x "$native_bin" ]]; then
    install -d -m 0755 "$native_dir"
    if gcc -static -Os -Wall -Wextra -o "$native_bin.tmp" "$native_src"; then
        chmod 0711 "$native_bin.tmp"
        mv "$native_bin.tmp" "$native_bin"
    else
        rm -f "$native_bin.tmp"
        say "building $native_src failed: containers keep the Python init and log pump"
    fi
fi
[[ -x "$native_bin" ]] && say "native init and log pump: $native_bin"
# --- 7. podman for the benchmarks ---------------------------------------------------
# Rootless podman needs what the steps above give the account: a subordinate id range,
# newuidmap/newgidmap, a home it owns (its storage goes to ~/.local/share/containers).
# Without a login session (runuser) XDG_RUNTIME_DIR is unset and podman keeps its
# runtime files in /tmp/podman-run-UID, which works: nothing to add. A failure here is
# only reported: the bench then leaves the podman anchor out and says why.
if [[ " $* " == *" bench "* ]]; then
    if err="$(as_user podman --runtime=runc --cgroup-manager=cgroupfs info 2>&1 >/dev/null)"; then
        say "podman runs as '$SQUISH_USER' (runc, cgroupfs)"
    else
        say "warning: podman does not run as '$SQUISH_USER': $(tail -n 1 <<<"$err")"
    fi
fi
say "done"
