/* runner-reseed: credits 64 bytes from stdin to the kernel's entropy pool and reseeds its
 * generator at once (RNDADDENTROPY, RNDRESEEDCRNG). Every machine restored from one
 * snapshot starts with the same generator state; the host hands each its own randomness,
 * and this makes the kernel use it before anything (sshd) draws from it. Static, so it
 * runs from the initrd; a shell cannot issue an ioctl. */
#include <fcntl.h>
#include <linux/random.h>
#include <sys/ioctl.h>
#include <unistd.h>

int main(void) {
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
