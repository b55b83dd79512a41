/* Adds a fixed delay to every fsync and fdatasync, to stand in for a slower disk.
 *
 *   gcc -shared -fPIC -O2 -o slow_fsync.so bench/slow_fsync.c -ldl
 *   LD_PRELOAD=$PWD/slow_fsync.so STOWPAY_FSYNC_DELAY_US=1000 python bench/reader_store.py
 *
 * The delay is a sleep after the real call returns: the data is as durable as before, the
 * caller only waits longer, as it would for flash that takes that long to flush.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static long delay_ns(void) {
    static long ns = -1;
    if (ns < 0) {
        const char *us = getenv("STOWPAY_FSYNC_DELAY_US");
        ns = us ? atol(us) * 1000L : 0;
    }
    return ns;
}

static void wait_more(void) {
    long ns = delay_ns();
    if (ns > 0) {
        struct timespec ts = {ns / 1000000000L, ns % 1000000000L};
        nanosleep(&ts, NULL);
    }
}

int fsync(int fd) {
    static int (*real)(int) = NULL;
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    int rc = real(fd);
    wait_more();
    return rc;
}

int fdatasync(int fd) {
    static int (*real)(int) = NULL;
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    int rc = real(fd);
    wait_more();
    return rc;
}
