/*
 * LD_PRELOAD shim for the replay-guarantee tests: shifts the wall clock (CLOCK_REALTIME) of the
 * process it is loaded into by the number of seconds written in the file named by
 * CAPYKNOCK_CLOCK_OFFSET_FILE (re-read on every call, so a test can step a running daemon's
 * clock forward and back, as NTP or a resumed VM would). Monotonic clocks are untouched.
 * Test-only: never shipped, built by the test with the system's C compiler.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

static long offset_seconds(void) {
    const char *path = getenv("CAPYKNOCK_CLOCK_OFFSET_FILE");
    if (path == NULL) return 0;
    FILE *f = fopen(path, "re");
    if (f == NULL) return 0;
    long offset = 0;
    if (fscanf(f, "%ld", &offset) != 1) offset = 0;
    fclose(f);
    return offset;
}

int clock_gettime(clockid_t clk, struct timespec *ts) {
    static int (*real)(clockid_t, struct timespec *) = NULL;
    if (real == NULL) real = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    int rc = real(clk, ts);
    if (rc == 0 && (clk == CLOCK_REALTIME || clk == CLOCK_REALTIME_COARSE)) ts->tv_sec += offset_seconds();
    return rc;
}

int gettimeofday(struct timeval *tv, void *tz) {
    struct timespec ts;
    int rc = clock_gettime(CLOCK_REALTIME, &ts);
    if (rc == 0 && tv != NULL) {
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    (void)tz;
    return rc;
}

time_t time(time_t *out) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (out != NULL) *out = ts.tv_sec;
    return ts.tv_sec;
}
