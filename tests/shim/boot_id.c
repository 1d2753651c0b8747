/*
 * LD_PRELOAD shim for the replay-guarantee tests: makes the process it is loaded into read the
 * file named by CAPYKNOCK_BOOT_ID_FILE when it opens /proc/sys/kernel/random/boot_id, so a test
 * can show the daemon "another boot" (a simulated reboot) without rebooting the machine.
 * Test-only: never shipped, built by the test with the system's C compiler.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static const char BOOT_ID[] = "/proc/sys/kernel/random/boot_id";

static const char *redirect(const char *path) {
    const char *fake = getenv("CAPYKNOCK_BOOT_ID_FILE");
    if (fake != NULL && path != NULL && strcmp(path, BOOT_ID) == 0) return fake;
    return path;
}

static mode_t mode_of(int flags, va_list ap) {
    if ((flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE) return va_arg(ap, mode_t);
    return 0;
}

int open64(const char *path, int flags, ...) {
    static int (*real)(const char *, int, ...) = NULL;
    if (real == NULL) real = (int (*)(const char *, int, ...))dlsym(RTLD_NEXT, "open64");
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_of(flags, ap);
    va_end(ap);
    return real(redirect(path), flags, mode);
}

int open(const char *path, int flags, ...) {
    static int (*real)(const char *, int, ...) = NULL;
    if (real == NULL) real = (int (*)(const char *, int, ...))dlsym(RTLD_NEXT, "open");
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_of(flags, ap);
    va_end(ap);
    return real(redirect(path), flags, mode);
}
