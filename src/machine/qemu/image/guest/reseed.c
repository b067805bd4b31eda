/* runner-reseed [SECS.NANOS]: credits 64 bytes from stdin to the kernel's entropy pool and
 * reseeds its generator at once (RNDADDENTROPY, RNDRESEEDCRNG). Every machine restored from
 * one snapshot starts with the same generator state; the host hands each its own randomness,
 * and this makes the kernel use it before anything (sshd) draws from it. With an argument,
 * it first sets the wall clock to it, to the nanosecond (busybox `date` takes whole seconds).
 * Static, so it runs from the initrd; a shell cannot issue an ioctl. */
#include <fcntl.h>
#include <stdlib.h>
#include <time.h>
#include <linux/random.h>
#include <sys/ioctl.h>
#include <unistd.h>

static int set_clock(const char *arg) {
    char *end;
    struct timespec ts = {0, 0};
    ts.tv_sec = (time_t)strtoll(arg, &end, 10);
    if (*end == '.') {
        long ns = 0;
        int digits = 0;
        for (end++; *end >= '0' && *end <= '9' && digits < 9; end++, digits++)
            ns = ns * 10 + (*end - '0');
        for (; digits < 9; digits++) ns *= 10;
        ts.tv_nsec = ns;
    }
    return clock_settime(CLOCK_REALTIME, &ts);
}

int main(int argc, char **argv) {
    if (argc > 1 && set_clock(argv[1]) != 0) return 6;
    struct {
        int entropy_count;
        int buf_size;
        unsigned char buf[64];
    } e = {512, 64, {0}};
    size_t got = 0;
    while (got < sizeof e.buf) {
        ssize_t n = read(0, e.buf + got, sizeof e.buf - got);
        if (n <= 0) return 2;
        got += (size_t)n;
    }
    int fd = open("/dev/urandom", O_WRONLY);
    if (fd < 0) return 3;
    if (ioctl(fd, RNDADDENTROPY, &e) != 0) return 4;
    if (ioctl(fd, RNDRESEEDCRNG) != 0) return 5;
    return 0;
}
