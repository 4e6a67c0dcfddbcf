/* Is a packet socket's transmit ring (PACKET_TX_RING) worth it for raw ESP
 * over a veth? A bare experiment, not the product (README, Performance,
 * "The transmit ring, tried"); tests/bench/tx-ring.sh runs it.
 *
 *   tx-ring drain                    count what a raw socket (protocol 253) gets
 *   tx-ring hold N                   hold N datagrams 2 s, then check each is its own
 *   tx-ring send IF MAC N mmsg|ring  send N 1,420-byte IPv4 datagrams to MAC
 *   tx-ring small IF MAC N           the same through a 16-frame ring, slowly reused
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/ip.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PAYLOAD 1400
#define BATCH 64
#define PROTO 253 /* RFC 3692: for experiments */

static uint16_t checksum(const void *p, int n) {
    uint32_t s = 0;
    const uint16_t *w = p;
    for (; n > 1; n -= 2) s += *w++;
    while (s >> 16) s = (s & 0xffff) + (s >> 16);
    return ~s;
}

static double seconds(clockid_t c) {
    struct timespec t;
    clock_gettime(c, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* Datagram i: an IPv4 header, then i as 4 bytes, then i's low byte. */
static void fill(char *d, uint32_t i) {
    struct iphdr *ip = (void *)d;
    memset(ip, 0, sizeof *ip);
    ip->version = 4;
    ip->ihl = 5;
    ip->ttl = 64;
    ip->protocol = PROTO;
    ip->tot_len = htons(20 + PAYLOAD);
    ip->saddr = inet_addr("10.9.0.1");
    ip->daddr = inet_addr("10.9.0.2");
    ip->check = checksum(ip, 20);
    memcpy(d + 20, &i, 4);
    memset(d + 24, (unsigned char)i, PAYLOAD - 4);
}

static int receiver(void) {
    int fd = socket(AF_INET, SOCK_RAW, PROTO);
    int big = 64 << 20;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big)) {
        perror("raw socket");
        exit(1);
    }
    struct timeval tv = {2, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

static int drain(void) {
    int fd = receiver();
    static char b[BATCH][2048];
    struct mmsghdr m[BATCH];
    struct iovec io[BATCH];
    for (int i = 0; i < BATCH; i++) {
        io[i] = (struct iovec){b[i], sizeof b[i]};
        memset(&m[i], 0, sizeof m[i]);
        m[i].msg_hdr.msg_iov = &io[i];
        m[i].msg_hdr.msg_iovlen = 1;
    }
    long got = 0;
    for (int r; (r = recvmmsg(fd, m, BATCH, 0, NULL)) > 0;) got += r;
    printf("drained %ld\n", got);
    return 0;
}

static int hold(long n) {
    int fd = receiver();
    printf("ready\n");
    fflush(stdout);
    sleep(2); /* the sender reuses its frames meanwhile */
    unsigned char b[4096];
    long got = 0, bad = 0;
    for (int l; got < n && (l = recv(fd, b, sizeof b, 0)) > 0; got++) {
        uint32_t i;
        memcpy(&i, b + 20, 4);
        int own = i == (uint32_t)got;
        for (int j = 24; own && j < l; j++) own = b[j] == (unsigned char)i;
        bad += !own;
    }
    printf("held %ld, %ld not their own\n", got, bad);
    return got == n && bad == 0 ? 0 : 1;
}

static int sender(const char *ifname, const char *mac, long n, int ring, int frames) {
    int fd = socket(AF_PACKET, SOCK_DGRAM, 0);
    struct sockaddr_ll a = {.sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_IP), .sll_halen = 6};
    a.sll_ifindex = if_nametoindex(ifname);
    unsigned char *m = a.sll_addr;
    if (fd < 0 || !a.sll_ifindex ||
        sscanf(mac, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &m[0], &m[1], &m[2], &m[3], &m[4], &m[5]) != 6) {
        fprintf(stderr, "packet socket, interface or MAC\n");
        return 1;
    }
    int sb = 8 << 20;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sb, sizeof sb);
    double t0 = seconds(CLOCK_MONOTONIC), c0 = seconds(CLOCK_PROCESS_CPUTIME_ID);
    if (ring) {
        const int fsz = 2048, bsz = frames * fsz < (1 << 16) ? frames * fsz : 1 << 16;
        int v = TPACKET_V2;
        struct tpacket_req r = {.tp_block_size = bsz, .tp_block_nr = (frames * fsz + bsz - 1) / bsz,
                                .tp_frame_size = fsz, .tp_frame_nr = frames};
        r.tp_frame_nr = r.tp_block_nr * (bsz / fsz);
        char *rg;
        if (setsockopt(fd, SOL_PACKET, PACKET_VERSION, &v, sizeof v) ||
            setsockopt(fd, SOL_PACKET, PACKET_TX_RING, &r, sizeof r) ||
            (rg = mmap(NULL, (size_t)r.tp_block_nr * bsz, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)) == MAP_FAILED) {
            perror("transmit ring");
            return 1;
        }
        /* A flush never waits for a frame of its own batch. */
        int per_send = r.tp_frame_nr < 2 * BATCH ? (int)r.tp_frame_nr / 2 : BATCH;
        for (long i = 0; i < n;) {
            for (int k = 0; k < per_send && i < n; k++, i++) {
                struct tpacket2_hdr *h = (void *)(rg + (i % r.tp_frame_nr) * fsz);
                while (h->tp_status != TP_STATUS_AVAILABLE) {
                    struct pollfd p = {fd, POLLOUT, 0};
                    poll(&p, 1, 1);
                }
                fill((char *)h + TPACKET2_HDRLEN - sizeof(struct sockaddr_ll), (uint32_t)i);
                h->tp_len = 20 + PAYLOAD;
                h->tp_status = TP_STATUS_SEND_REQUEST;
            }
            if (sendto(fd, NULL, 0, 0, (void *)&a, sizeof a) < 0) {
                perror("sendto");
                return 1;
            }
        }
    } else {
        static char buf[BATCH][20 + PAYLOAD];
        struct mmsghdr mm[BATCH];
        struct iovec io[BATCH];
        for (long i = 0; i < n;) {
            int k = 0;
            for (; k < BATCH && i < n; k++, i++) {
                fill(buf[k], (uint32_t)i);
                io[k] = (struct iovec){buf[k], sizeof buf[k]};
                memset(&mm[k], 0, sizeof mm[k]);
                mm[k].msg_hdr.msg_iov = &io[k];
                mm[k].msg_hdr.msg_iovlen = 1;
                mm[k].msg_hdr.msg_name = &a;
                mm[k].msg_hdr.msg_namelen = sizeof a;
            }
            for (int s = 0, r; s < k; s += r)
                if ((r = sendmmsg(fd, mm + s, k - s, 0)) < 0) {
                    perror("sendmmsg");
                    return 1;
                }
        }
    }
    double t = seconds(CLOCK_MONOTONIC) - t0, c = seconds(CLOCK_PROCESS_CPUTIME_ID) - c0;
    printf("%-8s %ld datagrams: %4.0f k/s, %5.2f Gbit/s, %4.0f ns of the sender's CPU each\n", ring ? "ring" : "sendmmsg",
           n, n / t / 1e3, n * (20.0 + PAYLOAD) * 8 / t / 1e9, c / n * 1e9);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 2 && !strcmp(argv[1], "drain")) return drain();
    if (argc == 3 && !strcmp(argv[1], "hold")) return hold(atol(argv[2]));
    if (argc == 6 && !strcmp(argv[1], "send")) return sender(argv[2], argv[3], atol(argv[4]), !strcmp(argv[5], "ring"), 1024);
    if (argc == 5 && !strcmp(argv[1], "small")) return sender(argv[2], argv[3], atol(argv[4]), 1, 16);
    fprintf(stderr, "usage: see the comment at the top of tx-ring.c\n");
    return 2;
}
