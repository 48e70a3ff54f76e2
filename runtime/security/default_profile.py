"""squish's default seccomp profile: an allow list in the form of Docker's default profile.

A syscall not named here fails with EPERM, so a syscall added by a kernel newer than this
list is refused until the list names it. The list is written family by family (files,
memory, processes, signals, time, polling, IPC, sockets...) from what a container without
extra capabilities needs, and cross-checked against Docker's (moby's
``profiles/seccomp/default.json``); every difference is listed in docs/security.md.

Besides the names, as Docker does:

- ``socket`` for every address family but ``AF_ALG`` (38) and ``AF_VSOCK`` (40);
- ``personality`` only with the values Docker allows (Linux, its 32-bit-UID variant,
  ``UNAME26`` with either, and the ``0xffffffff`` query);
- ``clone`` without a namespace flag and ``clone3`` refused with ENOSYS (C libraries then
  fall back to ``clone``, whose flags a filter can read), unless ``SYS_ADMIN`` is granted;
- a few syscalls only with the capability that makes them useful (``chroot`` with
  ``SYS_CHROOT``, which squish grants; ``mount`` with ``SYS_ADMIN``, which it does not);
- ``ptrace`` only on kernels from 4.8, where it can no longer bypass seccomp;
- architecture-specific syscalls on their architecture only.

A name the host's libseccomp does not know is left out when the list is compiled (the
syscall stays refused); names absent on this architecture are skipped.
"""

from __future__ import annotations

import errno
import platform
from collections.abc import Collection

from runtime.sandbox.capabilities import DEFAULT_CAPABILITIES
from runtime.security.profile import ACT_ALLOW, Rule, errno_action, kernel_before

__all__ = (
    "ALLOWED",
    "ALLOWED_FAMILIES",
    "ALLOWED_WITH_CAPABILITY",
    "DEFAULT_ACTION",
    "NAMESPACE_FLAGS",
    "PERSONALITIES",
    "REFUSED_SOCKET_FAMILIES",
    "allowed_names",
    "default_rules",
)

DEFAULT_ACTION = errno_action(errno.EPERM)
"""What a syscall the profile does not allow gets: EPERM, as with Docker."""

ALLOWED_FAMILIES: dict[str, tuple[str, ...]] = {
    "file descriptors and I/O": (
        "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev",
        "preadv2", "pwritev2", "lseek", "_llseek", "sendfile", "sendfile64", "splice", "tee",
        "vmsplice", "copy_file_range", "readahead", "fadvise64", "fadvise64_64", "fallocate",
        "truncate", "truncate64", "ftruncate", "ftruncate64", "fsync", "fdatasync", "sync",
        "syncfs", "sync_file_range", "flock", "fcntl", "fcntl64", "ioctl", "close",
        "close_range", "dup", "dup2", "dup3", "pipe", "pipe2", "open", "openat", "openat2",
        "creat", "cachestat",
    ),
    "file metadata": (
        "stat", "stat64", "lstat", "lstat64", "fstat", "fstat64", "newfstatat", "fstatat64",
        "statx", "statfs", "statfs64", "fstatfs", "fstatfs64", "access", "faccessat",
        "faccessat2", "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "chown32",
        "fchown", "fchown32", "lchown", "lchown32", "fchownat", "umask", "utime", "utimes",
        "utimensat", "utimensat_time64", "futimesat", "readlink", "readlinkat",
    ),
    "directories and links": (
        "getcwd", "chdir", "fchdir", "mkdir", "mkdirat", "rmdir", "rename", "renameat",
        "renameat2", "link", "linkat", "symlink", "symlinkat", "unlink", "unlinkat", "mknod",
        "mknodat", "getdents", "getdents64",
    ),
    "extended attributes": (
        "getxattr", "lgetxattr", "fgetxattr", "setxattr", "lsetxattr", "fsetxattr",
        "listxattr", "llistxattr", "flistxattr", "removexattr", "lremovexattr",
        "fremovexattr",
    ),
    "file change notification": (
        "inotify_init", "inotify_init1", "inotify_add_watch", "inotify_rm_watch",
        "fanotify_mark",
    ),
    "memory": (
        "brk", "mmap", "mmap2", "munmap", "mremap", "mprotect", "madvise", "mincore", "msync",
        "mlock", "mlock2", "munlock", "mlockall", "munlockall", "remap_file_pages",
        "membarrier", "memfd_create", "memfd_secret", "pkey_alloc", "pkey_free",
        "pkey_mprotect", "map_shadow_stack", "process_mrelease",
    ),
    "processes and threads": (
        "fork", "vfork", "execve", "execveat", "exit", "exit_group", "wait4", "waitid",
        "waitpid", "getpid", "getppid", "gettid", "getpgid", "setpgid", "getpgrp", "getsid",
        "setsid", "set_tid_address", "set_robust_list", "get_robust_list", "rseq", "prctl",
        "get_thread_area", "set_thread_area", "futex", "futex_time64", "futex_waitv",
        "futex_wait", "futex_wake", "futex_requeue", "restart_syscall", "pidfd_open",
        "pidfd_send_signal", "capget", "capset", "seccomp", "landlock_create_ruleset",
        "landlock_add_rule", "landlock_restrict_self",
    ),
    "limits, priorities and scheduling": (
        "getrlimit", "setrlimit", "ugetrlimit", "prlimit64", "getrusage", "times",
        "getpriority", "setpriority", "ioprio_get", "ioprio_set", "sched_yield",
        "sched_getaffinity", "sched_setaffinity", "sched_getparam", "sched_setparam",
        "sched_getscheduler", "sched_setscheduler", "sched_getattr", "sched_setattr",
        "sched_get_priority_max", "sched_get_priority_min", "sched_rr_get_interval",
        "sched_rr_get_interval_time64", "getcpu",
    ),
    "user and group ids": (
        "getuid", "getuid32", "geteuid", "geteuid32", "getgid", "getgid32", "getegid",
        "getegid32", "getresuid", "getresuid32", "getresgid", "getresgid32", "getgroups",
        "getgroups32", "setuid", "setuid32", "setgid", "setgid32", "setreuid", "setreuid32",
        "setregid", "setregid32", "setresuid", "setresuid32", "setresgid", "setresgid32",
        "setgroups", "setgroups32", "setfsuid", "setfsuid32", "setfsgid", "setfsgid32",
    ),
    "signals": (
        "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending", "rt_sigsuspend",
        "rt_sigtimedwait", "rt_sigtimedwait_time64", "rt_sigqueueinfo", "rt_tgsigqueueinfo",
        "sigaltstack", "sigreturn", "sigprocmask", "signalfd", "signalfd4", "kill", "tkill",
        "tgkill", "pause", "alarm",
    ),
    "clocks and timers": (
        "time", "gettimeofday", "clock_gettime", "clock_gettime64", "clock_getres",
        "clock_getres_time64", "clock_nanosleep", "clock_nanosleep_time64", "nanosleep",
        "adjtimex", "getitimer", "setitimer", "timer_create", "timer_delete",
        "timer_gettime", "timer_gettime64", "timer_settime", "timer_settime64",
        "timer_getoverrun", "timerfd_create", "timerfd_gettime", "timerfd_gettime64",
        "timerfd_settime", "timerfd_settime64",
    ),
    "polling and events": (
        "select", "_newselect", "pselect6", "pselect6_time64", "poll", "ppoll",
        "ppoll_time64", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old",
        "epoll_wait", "epoll_wait_old", "epoll_pwait", "epoll_pwait2", "eventfd", "eventfd2",
    ),
    "asynchronous I/O (not io_uring)": (
        "io_setup", "io_destroy", "io_submit", "io_cancel", "io_getevents", "io_pgetevents",
        "io_pgetevents_time64",
    ),
    "System V and POSIX IPC": (
        "ipc", "msgget", "msgsnd", "msgrcv", "msgctl", "semget", "semop", "semtimedop",
        "semtimedop_time64", "semctl", "shmget", "shmat", "shmdt", "shmctl", "mq_open",
        "mq_unlink", "mq_timedsend", "mq_timedsend_time64", "mq_timedreceive",
        "mq_timedreceive_time64", "mq_notify", "mq_getsetattr",
    ),
    "sockets (socket itself: by address family, below)": (
        "socketpair", "bind", "connect", "listen", "accept", "accept4", "getsockname",
        "getpeername", "getsockopt", "setsockopt", "shutdown", "send", "sendto", "sendmsg",
        "sendmmsg", "recv", "recvfrom", "recvmsg", "recvmmsg", "recvmmsg_time64",
        "socketcall",
    ),
    "system information": ("uname", "sysinfo", "getrandom"),
}  # fmt: skip
"""The syscalls every container may make, by family."""

ALLOWED = tuple(name for names in ALLOWED_FAMILIES.values() for name in names)

ALLOWED_WITH_CAPABILITY: dict[str, tuple[str, ...]] = {
    "SYS_ADMIN": (
        "bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick",
        "lookup_dcookie", "mount", "mount_setattr", "move_mount", "open_tree",
        "perf_event_open", "quotactl", "quotactl_fd", "setdomainname", "sethostname",
        "setns", "syslog", "umount", "umount2", "unshare",
    ),
    "SYS_BOOT": ("reboot",),
    "SYS_CHROOT": ("chroot",),
    "SYS_MODULE": ("init_module", "finit_module", "delete_module"),
    "SYS_PACCT": ("acct",),
    "SYS_PTRACE": (
        "kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev",
        "ptrace",
    ),
    "SYS_RAWIO": ("iopl", "ioperm"),
    "SYS_TIME": (
        "settimeofday", "stime", "clock_settime", "clock_settime64", "clock_adjtime",
        "clock_adjtime64",
    ),
    "SYS_TTY_CONFIG": ("vhangup",),
    "SYS_NICE": ("get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"),
    "SYSLOG": ("syslog",),
    "BPF": ("bpf",),
    "PERFMON": ("perf_event_open",),
    "DAC_READ_SEARCH": ("open_by_handle_at", "name_to_handle_at"),
}  # fmt: skip
"""Syscalls allowed only when the container holds the capability (squish grants Docker's
default set: of these, ``SYS_CHROOT`` alone)."""

_BY_MACHINE = {
    "x86_64": ("arch_prctl", "modify_ldt"),
    "i686": ("modify_ldt",),
    "aarch64": (
        "arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint",
        "cacheflush", "set_tls",
    ),
    "ppc64le": ("sync_file_range2", "swapcontext"),
    "s390x": ("s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr"),
    "riscv64": ("riscv_flush_icache",),
}  # fmt: skip
"""Syscalls allowed on one architecture only (by ``platform.machine()``)."""
_BY_MACHINE["armv7l"] = _BY_MACHINE["aarch64"]

PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
"""``personality`` arguments allowed: PER_LINUX, PER_LINUX32, UNAME26 with either, and
0xffffffff, which only asks for the current one."""

_AF_ALG = 38
_AF_VSOCK = 40
REFUSED_SOCKET_FAMILIES = (_AF_ALG, _AF_VSOCK)
"""``socket`` address families refused: AF_ALG (the kernel's crypto API) and AF_VSOCK
(towards the hypervisor, on a virtual machine)."""

NAMESPACE_FLAGS = 0x7E020000
"""CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER |
CLONE_NEWPID | CLONE_NEWNET: ``clone`` is allowed when none is set."""


def allowed_names(
    capabilities: Collection[str] = DEFAULT_CAPABILITIES, machine: str | None = None
) -> tuple[str, ...]:
    """Every syscall allowed whatever its arguments, for a container holding
    ``capabilities`` on ``machine`` (this one by default) and this kernel."""
    names = [*ALLOWED, *_BY_MACHINE.get(machine or platform.machine(), ())]
    for capability, granted in ALLOWED_WITH_CAPABILITY.items():
        if capability in capabilities:
            names += granted
    if not kernel_before((4, 8)):  # before 4.8 ptrace could bypass seccomp
        names.append("ptrace")
    return tuple(dict.fromkeys(names))


def _socket_rules() -> list[Rule]:
    """``socket`` below AF_ALG, between the two (AF_NFC) and above AF_VSOCK."""
    bounds = (("SCMP_CMP_LT", _AF_ALG), ("SCMP_CMP_EQ", _AF_ALG + 1), ("SCMP_CMP_GT", _AF_VSOCK))
    return [Rule(("socket",), ACT_ALLOW, ((0, op, family, 0),)) for op, family in bounds]


def default_rules(
    capabilities: Collection[str] = DEFAULT_CAPABILITIES, machine: str | None = None
) -> list[Rule]:
    """The default profile's rules (its default action: :data:`DEFAULT_ACTION`)."""
    names = allowed_names(capabilities, machine)
    rules = [Rule(names, ACT_ALLOW), *_socket_rules()]
    rules += [
        Rule(("personality",), ACT_ALLOW, ((0, "SCMP_CMP_EQ", value, 0),))
        for value in PERSONALITIES
    ]
    if "clone" not in names:
        flags_arg = 1 if (machine or platform.machine()).startswith("s390") else 0
        rules.append(
            Rule(("clone",), ACT_ALLOW, ((flags_arg, "SCMP_CMP_MASKED_EQ", NAMESPACE_FLAGS, 0),))
        )
        rules.append(Rule(("clone3",), errno_action(errno.ENOSYS)))
    return rules
