/* wakeup.c -- what one wake-up costs on this machine: two processes pass one byte back and forth
 * over a unix socketpair, N round trips, each one two wake-ups. Run once across CPUs (the parent on
 * CPU 0, the child on CPU 1) and once with both on CPU 0. Prints one line:
 *   wakeup_rtt_us: cross_cpu=X same_cpu=Y
 * Every stack in bench/nat and bench/forward pays one such wake-up per hop from one process to the
 * next, so this is the unit their latencies are made of (bench/lib/harness.sh records it in meta.txt). */
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void pin(int cpu) {
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    if (sched_setaffinity(0, sizeof s, &s) != 0) { perror("sched_setaffinity"); exit(1); }
}

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

/* The mean round trip in µs over n round trips, after n/10 of warm-up. */
static double rtt(int parent_cpu, int child_cpu, int n) {
    int sv[2];
    char c = 0;
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) { perror("socketpair"); exit(1); }
    pid_t p = fork();
    if (p < 0) { perror("fork"); exit(1); }
    if (p == 0) {
        pin(child_cpu);
        for (int i = 0; i < n + n / 10; i++)
            if (read(sv[1], &c, 1) != 1 || write(sv[1], &c, 1) != 1) _exit(1);
        _exit(0);
    }
    pin(parent_cpu);
    double t0 = 0;
    for (int i = 0; i < n + n / 10; i++) {
        if (i == n / 10) t0 = now_us();
        if (write(sv[0], &c, 1) != 1 || read(sv[0], &c, 1) != 1) { fprintf(stderr, "wakeup: peer gone\n"); exit(1); }
    }
    double t = (now_us() - t0) / n;
    waitpid(p, NULL, 0);
    close(sv[0]);
    close(sv[1]);
    return t;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 20000;
    if (n < 10) n = 10;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    double same = rtt(0, 0, n);
    if (cpus >= 2)
        printf("wakeup_rtt_us: cross_cpu=%.1f same_cpu=%.1f\n", rtt(0, 1, n), same);
    else
        printf("wakeup_rtt_us: cross_cpu=NA same_cpu=%.1f\n", same);
    return 0;
}
