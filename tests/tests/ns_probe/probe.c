/* An isolation probe for tests/tests/ns_isolation.rs, built there with
 * `gcc -static` and run both inside a namespace sandbox and on the host (the
 * positive control). Each argument is one check; each check prints exactly
 * one line:
 *
 *     <check> ok <number>
 *     <check> err <errno> <strerror>
 *
 * and the probe exits 0 once every check has run (the verdicts are in the
 * lines, not the exit status). Checks that change the process (unshare,
 * clone, mount, ptrace) run in a forked child so later checks see the
 * probe as it started. No check modifies an existing file, and whatever a
 * check creates (a file, a directory, a node, a mount) it removes at once:
 * a probe that is not confined after all must not damage the host. Busybox
 * cannot issue most of these system calls. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <linux/io_uring.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <arpa/inet.h>
#include <unistd.h>

static void ok(const char *check, long n) { printf("%s ok %ld\n", check, n); }

static void err(const char *check, int e) { printf("%s err %d %s\n", check, e, strerror(e)); }

/* A syscall's result: >= 0 is success (fds are closed), -1 reports errno. */
static void report(const char *check, long r) {
    if (r < 0) {
        err(check, errno);
    } else {
        ok(check, r);
    }
}

/* Runs `fn` in a forked child; the child exits with 0 or the errno. */
static void in_child(const char *check, int (*fn)(const char *), const char *arg) {
    fflush(stdout);
    pid_t p = fork();
    if (p < 0) {
        err(check, errno);
        return;
    }
    if (p == 0) {
        errno = 0;
        _exit(fn(arg) < 0 ? (errno ? errno : 255) : 0);
    }
    int st = 0;
    if (waitpid(p, &st, 0) < 0) {
        err(check, errno);
    } else if (!WIFEXITED(st)) {
        printf("%s err 0 child killed by signal %d\n", check, WTERMSIG(st));
    } else if (WEXITSTATUS(st) == 0) {
        ok(check, 0);
    } else {
        err(check, WEXITSTATUS(st));
    }
}

static int do_unshare(const char *which) {
    int flag = 0;
    if (!strcmp(which, "user")) flag = CLONE_NEWUSER;
    if (!strcmp(which, "mnt")) flag = CLONE_NEWNS;
    if (!strcmp(which, "net")) flag = CLONE_NEWNET;
    if (!strcmp(which, "pid")) flag = CLONE_NEWPID;
    if (flag == 0) {
        errno = EINVAL;
        return -1;
    }
    return unshare(flag);
}

/* clone(2) itself (not libc's wrapper) with CLONE_NEWUSER: the child
 * exits at once. */
static int do_clone_newuser(const char *unused) {
    (void)unused;
    long r = syscall(SYS_clone, (long)(CLONE_NEWUSER | SIGCHLD), 0L, 0L, 0L, 0L);
    if (r < 0) return -1;
    if (r == 0) _exit(0);
    waitpid((pid_t)r, NULL, 0);
    return 0;
}

static int do_mount(const char *dir) {
    if (mount("none", dir, "tmpfs", 0, "size=64k") < 0) return -1;
    umount2(dir, MNT_DETACH);
    return 0;
}

/* PTRACE_ATTACH to a child of ours (sleeping); `signal` does the same
 * dance with kill(2) instead, the harmless control. */
static int do_ptrace(const char *how) {
    pid_t c = fork();
    if (c < 0) return -1;
    if (c == 0) {
        for (;;) pause();
    }
    int r, e = 0;
    if (!strcmp(how, "signal")) {
        r = kill(c, 0);
    } else {
        r = (int)ptrace(PTRACE_ATTACH, c, NULL, NULL);
        if (r == 0) {
            waitpid(c, NULL, __WALL);
            ptrace(PTRACE_DETACH, c, NULL, NULL);
        }
    }
    e = errno;
    kill(c, SIGKILL);
    waitpid(c, NULL, 0);
    errno = e;
    return r;
}

static long do_io_uring(void) {
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    long fd = syscall(SYS_io_uring_setup, 4, &p);
    if (fd >= 0) close((int)fd);
    return fd < 0 ? -1 : 0;
}

static long do_init_module(void) {
    static const char garbage[] = "not a module";
    return syscall(SYS_init_module, garbage, sizeof garbage, "");
}

static long do_finit_module(void) {
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    long r = syscall(SYS_finit_module, fd, "", 0);
    int e = errno;
    close(fd);
    errno = e;
    return r;
}

static long do_open(const char *path, int flags) {
    int fd = open(path, flags | O_CLOEXEC, 0644);
    if (fd < 0) return -1;
    close(fd);
    return 0;
}

/* Creates `path` (which must not exist), writes one byte and removes it
 * again: a probe that escaped its sandbox leaves nothing behind. */
static long do_create(const char *path) {
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) return -1;
    long r = write(fd, "x", 1);
    int e = errno;
    close(fd);
    unlink(path);
    errno = e;
    return r;
}

/* Opens an existing file for writing without changing it (no O_TRUNC, no
 * write): read-only mounts and Landlock refuse the open itself. */
static long do_openw(const char *path) {
    int fd = open(path, O_WRONLY | O_APPEND | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) return -1;
    close(fd);
    return 0;
}

/* mkdir, removed again on success. */
static long do_mkdir(const char *path) {
    if (mkdir(path, 0755) < 0) return -1;
    rmdir(path);
    return 0;
}

/* A character device node (the tun device's numbers), removed again. */
static long do_mknod(const char *path) {
    if (mknod(path, S_IFCHR | 0600, makedev(10, 200)) < 0) return -1;
    unlink(path);
    return 0;
}

/* The number of bytes `path` holds (read to the end). */
static long do_read(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    char buf[4096];
    long total = 0, n;
    while ((n = read(fd, buf, sizeof buf)) > 0) total += n;
    int e = errno;
    close(fd);
    errno = e;
    return n < 0 ? -1 : total;
}

static long do_exists(const char *path) {
    struct stat st;
    return lstat(path, &st);
}

/* How many entries a directory holds, besides . and .. */
static long do_count(const char *path) {
    DIR *d = opendir(path);
    if (!d) return -1;
    long n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    }
    closedir(d);
    return n;
}

static long connect_to(int family, const struct sockaddr *sa, socklen_t len, int type) {
    int s = socket(family, type | SOCK_CLOEXEC, 0);
    if (s < 0) return -1;
    long r = connect(s, sa, len);
    int e = errno;
    close(s);
    errno = e;
    return r;
}

static long do_unix(const char *path, int abstract) {
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    size_t n = strlen(path);
    if (n + 2 > sizeof sa.sun_path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(sa.sun_path + (abstract ? 1 : 0), path, n);
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (abstract ? 1 : 0));
    return connect_to(AF_UNIX, (struct sockaddr *)&sa, len, SOCK_STREAM);
}

/* HOST:PORT, IPv4. */
static long do_tcp(const char *hostport) {
    char host[64];
    const char *colon = strrchr(hostport, ':');
    if (!colon || (size_t)(colon - hostport) >= sizeof host) {
        errno = EINVAL;
        return -1;
    }
    memcpy(host, hostport, (size_t)(colon - hostport));
    host[colon - hostport] = 0;
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((unsigned short)atoi(colon + 1));
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        errno = EINVAL;
        return -1;
    }
    return connect_to(AF_INET, (struct sockaddr *)&sa, sizeof sa, SOCK_STREAM);
}

/* A listener on this namespace's loopback, reached by our own connect. */
static long do_tcp_self(void) {
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (l < 0) return -1;
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
    long r = -1;
    if (bind(l, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(l, 1) == 0 &&
        getsockname(l, (struct sockaddr *)&sa, &len) == 0) {
        r = connect_to(AF_INET, (struct sockaddr *)&sa, sizeof sa, SOCK_STREAM);
    }
    int e = errno;
    close(l);
    errno = e;
    return r;
}

/* Processes other than this one whose command line holds `marker`. */
static long do_findproc(const char *marker) {
    DIR *d = opendir("/proc");
    if (!d) return -1;
    long n = 0;
    struct dirent *e;
    pid_t self = getpid();
    while ((e = readdir(d))) {
        char *end;
        long pid = strtol(e->d_name, &end, 10);
        if (*end || pid <= 0 || pid == self) continue;
        char path[64], buf[4096];
        snprintf(path, sizeof path, "/proc/%ld/cmdline", pid);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        ssize_t m = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (m <= 0) continue;
        for (ssize_t i = 0; i < m; i++)
            if (!buf[i]) buf[i] = ' ';
        buf[m] = 0;
        if (strstr(buf, marker)) n++;
    }
    closedir(d);
    return n;
}

/* Forks up to `n` children that sleep; reports how many it got (ok when
 * all n, else the errno of the first refusal and the count so far on a
 * second line), then kills and reaps them all. */
static void do_forks(const char *check, long n) {
    pid_t *kids = calloc((size_t)n, sizeof *kids);
    long got = 0;
    int e = 0;
    fflush(stdout);
    for (; got < n; got++) {
        pid_t p = fork();
        if (p < 0) {
            e = errno;
            break;
        }
        if (p == 0) {
            for (;;) pause();
        }
        kids[got] = p;
    }
    for (long i = 0; i < got; i++) kill(kids[i], SIGKILL);
    for (long i = 0; i < got; i++) waitpid(kids[i], NULL, 0);
    free(kids);
    if (got == n) {
        ok(check, got);
    } else {
        err(check, e);
        printf("%s.count ok %ld\n", check, got);
    }
}

static long do_socket(int family, int type) {
    int s = socket(family, type | SOCK_CLOEXEC, 0);
    if (s < 0) return -1;
    close(s);
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 1; i < argc; i++) {
        const char *c = argv[i];
        const char *eq = strchr(c, '=');
        const char *arg = eq ? eq + 1 : "";
        size_t klen = eq ? (size_t)(eq - c) : strlen(c);
#define IS(name) (klen == strlen(name) && !strncmp(c, name, klen))
        errno = 0;
        if (IS("getpid")) report(c, getpid());
        else if (IS("unshare")) in_child(c, do_unshare, arg);
        else if (IS("clone_newuser")) in_child(c, do_clone_newuser, arg);
        else if (IS("mount")) in_child(c, do_mount, arg);
        else if (IS("ptrace")) in_child(c, do_ptrace, "attach");
        else if (IS("signal")) in_child(c, do_ptrace, "signal");
        else if (IS("io_uring")) report(c, do_io_uring());
        else if (IS("init_module")) report(c, do_init_module());
        else if (IS("finit_module")) report(c, do_finit_module());
        else if (IS("delete_module")) report(c, syscall(SYS_delete_module, "cordon_no_such_module", O_NONBLOCK));
        else if (IS("open")) report(c, do_open(arg, O_RDWR));
        else if (IS("openro")) report(c, do_open(arg, O_RDONLY));
        else if (IS("mknod")) report(c, do_mknod(arg));
        else if (IS("create")) report(c, do_create(arg));
        else if (IS("openw")) report(c, do_openw(arg));
        else if (IS("mkdir")) report(c, do_mkdir(arg));
        else if (IS("read")) report(c, do_read(arg));
        else if (IS("exists")) report(c, do_exists(arg));
        else if (IS("count")) report(c, do_count(arg));
        else if (IS("unix")) report(c, do_unix(arg, 0));
        else if (IS("abstract")) report(c, do_unix(arg, 1));
        else if (IS("tcp")) report(c, do_tcp(arg));
        else if (IS("tcp_self")) report(c, do_tcp_self());
        else if (IS("findproc")) report(c, do_findproc(arg));
        else if (IS("forks")) do_forks(c, atol(arg));
        else if (IS("packet")) report(c, do_socket(AF_PACKET, SOCK_RAW));
        else if (IS("vsock")) report(c, do_socket(AF_VSOCK, SOCK_STREAM));
        else if (IS("pause")) {
            /* `pause=MARKER`: a host process whose command line the
             * sandbox must not see. */
            for (;;) pause();
        } else {
            fprintf(stderr, "probe: unknown check %s\n", c);
            return 2;
        }
#undef IS
    }
    return 0;
}
