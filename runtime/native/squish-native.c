/*
 * squish-native: the small native processes a running container keeps.
 *
 *   squish-native init GO_FD STATE_FD REPORT_FD LOG_FD EXIT_FD OOM_FD PIDS_FD MASK LABEL PROGRAM ARGV...
 *   squish-native pump SOURCE_FD LOG_FD PATH MAX_SIZE MAX_FILES
 *
 * init: pid 1 of a container, exec'd by the Python init (runtime/holder/init.py) once the
 * container is assembled and confined, so that none of the Python process's memory stays
 * for as long as the container runs (the exec overlaps the spare's last steps). It waits
 * for "G" on GO_FD, then starts PROGRAM (its environment is this process's), forwards
 * signals to it, reaps every zombie, and when PROGRAM exits records exit.json in
 * the container's folder (STATE_FD) and exits with the same code. It reports on REPORT_FD
 * as the Python init does: "S" once PROGRAM runs, "E<why>" if it cannot start. EXIT_FD
 * stays open for as long as this process lives (slirp4netns ends when it closes). OOM_FD and
 * PIDS_FD are the cgroup's memory.events and pids.events (-1: none). MASK is the signal
 * mask PROGRAM starts with (hexadecimal, bit N-1 for signal N); LABEL names PROGRAM in
 * messages. The signals forwarded and SIGCHLD arrive blocked (the mask survives execve);
 * it blocks them itself too, for whoever else starts it.
 *
 * pump: the log pump of runtime/holder/logpump.py: moves what comes on SOURCE_FD into
 * LOG_FD (open on PATH) until EOF, rotating before PATH would exceed MAX_SIZE bytes and
 * keeping MAX_FILES files in all.
 *
 * Built by runtime/native/__init__.py (statically: it runs inside containers that have no
 * C library); the Python code it stands in for is the reference and stays the fallback.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static const int forwarded[] = {SIGTERM, SIGINT,  SIGHUP,  SIGQUIT,
                                SIGUSR1, SIGUSR2, SIGWINCH, SIGCONT};
#define N_FORWARDED (sizeof forwarded / sizeof forwarded[0])

static int number(const char *text) {
    char *end;
    long value = strtol(text, &end, 10);
    if (*text == '\0' || *end != '\0' || value < INT_MIN || value > INT_MAX) {
        _exit(125);
    }
    return (int)value;
}

static void write_all(int fd, const char *data, size_t size) {
    while (size > 0) {
        ssize_t done = write(fd, data, size);
        if (done < 0 && errno == EINTR) {
            continue;
        }
        if (done <= 0) {
            return;
        }
        data += done;
        size -= (size_t)done;
    }
}

/* ---- init ------------------------------------------------------------------------------ */

struct init_fds {
    int go, state, report, log, exit, oom, pids;
};

/* The count on the line "NAME N" of a cgroup events file, or -1. */
static long long event_count(int fd, const char *name) {
    char text[4096];
    ssize_t size = fd < 0 ? -1 : pread(fd, text, sizeof text - 1, 0);
    if (size <= 0) {
        return -1;
    }
    text[size] = '\0';
    size_t length = strlen(name);
    for (char *line = text; line != NULL && *line != '\0';) {
        if (strncmp(line, name, length) == 0 && line[length] == ' ') {
            return strtoll(line + length + 1, NULL, 10);
        }
        line = strchr(line, '\n');
        line = line == NULL ? NULL : line + 1;
    }
    return -1;
}

static int append_count(char *out, size_t room, const char *key, long long count) {
    return count < 0 ? 0 : snprintf(out, room, ", \"%s\": %lld", key, count);
}

/* exit.json, as runtime/holder/init.py writes it: a temporary file, fsync, rename. */
static void record_exit(const struct init_fds *fds, int code, int signum) {
    struct timespec now;
    char text[512];
    clock_gettime(CLOCK_REALTIME, &now);
    int size = snprintf(text, sizeof text, "{\"exit_code\": %d, \"signal\": %d, "
                        "\"finished_at\": %lld.%06ld", code, signum,
                        (long long)now.tv_sec, now.tv_nsec / 1000);
    size += append_count(text + size, sizeof text - (size_t)size, "oom_kills",
                         event_count(fds->oom, "oom_kill"));
    size += append_count(text + size, sizeof text - (size_t)size, "pids_refused",
                         event_count(fds->pids, "max"));
    size += snprintf(text + size, sizeof text - (size_t)size, "}\n");
    char temp[32];
    snprintf(temp, sizeof temp, "exit.json.tmp.%d", (int)getpid());
    int fd = openat(fds->state, temp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        return;
    }
    fchmod(fd, 0600);
    write_all(fd, text, (size_t)size);
    int synced = fsync(fd);
    close(fd);
    if (synced != 0 || renameat(fds->state, temp, fds->state, "exit.json") != 0) {
        unlinkat(fds->state, temp, 0);
    }
}

static void fail(int report, const char *label, int error) {
    char text[1024];
    int size = snprintf(text, sizeof text, "E%s cannot start: %s", label, strerror(error));
    write_all(report, text, size < (int)sizeof text ? (size_t)size : sizeof text - 1);
    _exit(127);
}

static pid_t spawn(const struct init_fds *fds, const char *mask, const char *label,
                   char **argv) {
    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attr;
    sigset_t start_mask, defaults;
    unsigned long long bits = strtoull(mask, NULL, 16);
    sigemptyset(&start_mask);
    for (int signum = 1; signum <= 64 && signum < NSIG; signum++) {
        if (bits >> (signum - 1) & 1) {
            sigaddset(&start_mask, signum);
        }
    }
    sigemptyset(&defaults);
    for (size_t i = 0; i < N_FORWARDED; i++) {
        sigaddset(&defaults, forwarded[i]);
    }
    sigaddset(&defaults, SIGCHLD);
    sigaddset(&defaults, SIGPIPE); /* ignored by Python, whose exec left them ignored */
    sigaddset(&defaults, SIGXFSZ);
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&actions, fds->log, 1);
    posix_spawn_file_actions_adddup2(&actions, fds->log, 2);
    posix_spawnattr_init(&attr);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK |
                                        POSIX_SPAWN_SETSIGDEF);
    posix_spawnattr_setsigmask(&attr, &start_mask);
    posix_spawnattr_setsigdefault(&attr, &defaults);
    pid_t child;
    int error = posix_spawn(&child, argv[0], &actions, &attr, argv + 1, environ);
    if (error != 0) {
        fail(fds->report, label, error);
    }
    return child;
}

static _Noreturn void finish(const struct init_fds *fds, int status) {
    int code, signum = 0;
    if (WIFSIGNALED(status)) {
        signum = WTERMSIG(status);
        code = 128 + signum;
    } else {
        code = WEXITSTATUS(status);
    }
    record_exit(fds, code, signum);
    _exit(code);
}

static void waited_signals(sigset_t *waited) {
    sigemptyset(waited);
    sigaddset(waited, SIGCHLD);
    for (size_t i = 0; i < N_FORWARDED; i++) {
        sigaddset(waited, forwarded[i]);
    }
}

static _Noreturn void wait_for(const struct init_fds *fds, pid_t child) {
    sigset_t waited;
    waited_signals(&waited);
    for (;;) {
        int status;
        pid_t pid;
        while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
            if (pid == child) {
                finish(fds, status);
            }
        }
        int signum = sigwaitinfo(&waited, NULL);
        if (signum > 0 && signum != SIGCHLD) {
            kill(child, signum);
        }
    }
}

/* The arguments from FIRST on, copied; the originals are blanked, so that /proc/1/cmdline
   (what ps shows in the container) reads "squish-init" only. */
static char **take_arguments(int argc, char **argv, int first) {
    char **copy = calloc((size_t)(argc - first + 1), sizeof *copy);
    if (copy == NULL) {
        _exit(125);
    }
    for (int i = first; i < argc; i++) {
        copy[i - first] = strdup(argv[i]);
        if (copy[i - first] == NULL) {
            _exit(125);
        }
    }
    char *end = argv[argc - 1] + strlen(argv[argc - 1]);
    memset(argv[1], 0, (size_t)(end - argv[1]));
    return copy;
}

/* The spare's go (runtime.holder.protocol.Launching.GO): anything else, or its end, and
   the container is not started. The signals are blocked: no read is interrupted. */
static void await_go(int go) {
    char mark = 0;
    if (read(go, &mark, 1) != 1 || mark != 'G') {
        _exit(125);
    }
    close(go);
}

/* Mark the init's own descriptors close-on-exec, so that none of them reaches the command
   (STATE_FD leads outside its root); 0, or the errno of the first that could not be
   marked (the container's seccomp profile may refuse fcntl): the command does not start. */
static int keep_own(const int *own, size_t count) {
    for (size_t i = 0; i < count; i++) {
        if (own[i] >= 0 && fcntl(own[i], F_SETFD, FD_CLOEXEC) != 0) {
            return errno;
        }
    }
    return 0;
}

static int run_init(int argc, char **argv) {
    /* Not dumpable before anything of the container runs: /proc/1/fd must not lead to
       STATE_FD (the container's folder, outside its root). */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    prctl(PR_SET_NAME, "squish-init", 0, 0, 0);
    sigset_t waited; /* blocked already by the Python init (pending ones stay pending) */
    waited_signals(&waited);
    sigprocmask(SIG_BLOCK, &waited, NULL);
    if (argc < 13) {
        return 125;
    }
    argv = take_arguments(argc, argv, 0);
    struct init_fds fds = {number(argv[2]), number(argv[3]), number(argv[4]), number(argv[5]),
                           number(argv[6]), number(argv[7]), number(argv[8])};
    int own[] = {fds.go, fds.state, fds.report, fds.log, fds.exit, fds.oom, fds.pids};
    int refused = keep_own(own, sizeof own / sizeof own[0]);
    await_go(fds.go);
    if (refused != 0) {
        fail(fds.report, argv[10], refused);
    }
    pid_t child = spawn(&fds, argv[9], argv[10], argv + 11);
    close(fds.log);
    if (chdir("/") != 0) {
        return 125;
    }
    write_all(fds.report, "S", 1);
    close(fds.report);
    wait_for(&fds, child);
}

/* ---- pump ------------------------------------------------------------------------------ */

#define CHUNK (1 << 20)

static char buffer[64 << 10];

static int make_dirs(const char *path) {
    char copy[PATH_MAX];
    if (snprintf(copy, sizeof copy, "%s", path) >= (int)sizeof copy) {
        return -1;
    }
    for (char *slash = copy + 1; (slash = strchr(slash, '/')) != NULL; slash++) {
        *slash = '\0';
        if (mkdir(copy, 0700) != 0 && errno != EEXIST) {
            return -1;
        }
        *slash = '/';
    }
    return 0;
}

static int open_log(const char *path) {
    if (make_dirs(path) != 0) {
        return -1;
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0) {
        lseek(fd, 0, SEEK_END);
    }
    return fd;
}

static void rotate(const char *path, int max_files) {
    char older[PATH_MAX], newer[PATH_MAX];
    for (int index = max_files - 1; index > 0; index--) {
        if (index == 1) {
            snprintf(older, sizeof older, "%s", path);
        } else {
            snprintf(older, sizeof older, "%s.%d", path, index - 1);
        }
        snprintf(newer, sizeof newer, "%s.%d", path, index);
        if (rename(older, newer) != 0 && errno != ENOENT) {
            _exit(1);
        }
    }
    if (unlink(path) != 0 && errno != ENOENT) {
        _exit(1);
    }
}

static ssize_t read_some(int source, size_t count) {
    ssize_t got;
    do {
        got = read(source, buffer, count < sizeof buffer ? count : sizeof buffer);
    } while (got < 0 && errno == EINTR);
    if (got < 0) {
        _exit(1);
    }
    return got;
}

/* Bytes taken from the pipe (at most count); 0 at the end of the output. A disk that
   refuses a write costs the output, never the command. */
static ssize_t move(int source, int target, size_t count, int *can_splice) {
    if (*can_splice) {
        ssize_t moved;
        do {
            moved = splice(source, NULL, target, NULL, count, 0);
        } while (moved < 0 && errno == EINTR);
        if (moved >= 0) {
            return moved;
        }
        if (errno != EINVAL) {
            return read_some(source, count);
        }
        *can_splice = 0;
    }
    ssize_t got = read_some(source, count);
    write_all(target, buffer, (size_t)got);
    return got;
}

static int run_pump(int argc, char **argv) {
    if (argc != 7) {
        return 1;
    }
    prctl(PR_SET_NAME, "squish-pump", 0, 0, 0);
    signal(SIGXFSZ, SIG_IGN); /* a file past RLIMIT_FSIZE: the write fails, no signal */
    int source = number(argv[2]), log = number(argv[3]);
    const char *path = argv[4];
    long long max_size = strtoll(argv[5], NULL, 10);
    int max_files = number(argv[6]), can_splice = 1;
    struct stat st;
    long long size = fstat(log, &st) == 0 ? (long long)st.st_size : 0;
    for (;;) {
        if (size >= max_size) {
            close(log);
            rotate(path, max_files);
            log = open_log(path);
            if (log < 0) {
                log = open("/dev/null", O_WRONLY | O_CLOEXEC);
            }
            size = 0;
        }
        long long room = max_size - size;
        ssize_t moved = move(source, log, room < CHUNK ? (size_t)room : CHUNK, &can_splice);
        if (moved == 0) {
            break;
        }
        size += moved;
    }
    close(log);
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "init") == 0) {
        return run_init(argc, argv);
    }
    if (argc > 1 && strcmp(argv[1], "pump") == 0) {
        return run_pump(argc, argv);
    }
    return 2;
}
