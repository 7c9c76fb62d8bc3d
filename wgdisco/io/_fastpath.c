/*
 * wgdisco.io._fastpath: the compiled data path for bulk WireGuard transport (issue 18).
 *
 * Theory of operation
 * -------------------
 * Python (wgdisco/daemon/fastpath.py) owns keys, handshakes, timers and policy. It hands this
 * module, per peer, an endpoint and a sticky source (a pktinfo item), and per keypair the two
 * ChaCha20-Poly1305 keys, the indices, the send counter and the replay window; plus the
 * allowed-IPs table (prefix -> peer slot). Two calls move packets, each with the GIL released
 * around its whole batch:
 *
 *   tun_read(max)  reads the TUN fd (virtio-net header: TSO super-packets are split here, and
 *                  partial checksums completed), routes each packet by its destination, and
 *                  for a peer with a usable keypair encrypts it (whitepaper 5.4.6: padding to
 *                  16, counter nonce) into UDP GSO batches sent with sendmsg(UDP_SEGMENT).
 *                  A packet it cannot send (no route, no keypair, keypair at its message or time
 *                  limit, a peer Python keeps) is returned to Python as a plain IP packet.
 *   udp_read(max)  reads the socket (UDP GRO runs, pktinfo), decrypts transport messages for
 *                  the keypairs it holds (AEAD, then the RFC 6479 window exactly as
 *                  proto/replay.py, then the inner length and allowed-IPs source check, as
 *                  proto/device.py _receive_transport), and writes the packets to TUN, TCP runs
 *                  coalesced into GSO super-packets (as proto/gro.py). Everything else (handshake
 *                  messages, cookies, STUN, probes, unknown indices, expired keypairs) goes back to
 *                  Python unchanged: (datagram, address, pktinfo). A decrypted packet to a multicast
 *                  group goes back as (packet, peer slot, None): proto/multicast.py decides.
 *
 * Both return what happened per peer (bytes, data packets, the latest endpoint and source when
 * they changed, the keypair's send counter), so Python keeps its timers, wg show and roaming
 * right, and drop counters by the same reason names the Python path uses.
 *
 * Single-threaded: only the data-plane thread calls it, holding the tunnel's lock.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <openssl/evp.h>

#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif

#define VNET_HDR_LEN 10
#define VNET_F_NEEDS_CSUM 1
#define VNET_GSO_NONE 0
#define VNET_GSO_TCPV4 1
#define VNET_GSO_TCPV6 4
#define VNET_GSO_ECN 0x80

#define TUN_BUF (65535 + VNET_HDR_LEN)
#define UDP_BUF (65535 + 4096)
#define UDP_ARENA (1 << 20) /* a drain's decrypted packets wait here for one coalesced TUN write */
#define MAX_OUT 1024
#define MAX_SEGMENTS 64
#define MAX_GSO_BYTES 65000
#define SEND_BUF (MAX_GSO_BYTES + 2048)
#define MSG_HEADER 16
#define TAG 16
#define MIN_TRANSPORT 32

/* replay window: proto/replay.py (a byte per counter, blocks of 64, 128 blocks) */
#define BLOCK_LOG 6
#define BLOCK (1 << BLOCK_LOG)
#define RING_BLOCKS 128
#define RING (RING_BLOCKS * BLOCK)
#define RING_MASK (RING - 1)
#define BLOCK_MASK (RING_BLOCKS - 1)
#define WINDOW_SIZE ((RING_BLOCKS - 1) * BLOCK)

/* drop counters: the names proto/device.py (device) and daemon/dataplane.py (other) count */
enum {
    D_DATA_AUTH, D_REPLAY, D_INNER_NOT_IP, D_INNER_LENGTH, D_INNER_SOURCE, D_TUN_NOT_IP, D_N_DEVICE
};
static const char *device_drop_names[D_N_DEVICE] = {
    "data-auth", "replay", "inner-not-ip", "inner-length", "inner-source-not-allowed", "tun-not-ip",
};
#define N_ERRNO 160

typedef struct {
    uint32_t local_index;
    int slot;
    uint32_t remote_index;
    uint64_t send_counter;
    uint64_t send_limit; /* REJECT_AFTER_MESSAGES: at it, sending goes back to Python */
    uint64_t recv_limit;
    double expires;      /* CLOCK_BOOTTIME seconds (wgdisco/daemon/clock.py): REJECT_AFTER_TIME */
    int can_send;
    EVP_CIPHER_CTX *enc, *dec;
    uint64_t replay_last;
    uint8_t ring[RING];
} Keypair;

typedef struct {
    int active;
    int has_endpoint;
    struct sockaddr_storage ep;
    socklen_t eplen;
    int has_src;
    int src_level, src_type, src_len;
    uint8_t src[32];
    Keypair *send_kp;
    int fast_send; /* Python lets this module send to the peer */
    size_t max_inner; /* the peer's path MTU (proto/pmtu.py): larger packets are Python's */
    /* since the last report */
    int dirty;
    uint64_t rx_bytes, tx_bytes;
    uint64_t rx_data, rx_packets, tx_data;
    size_t tx_max, rx_max; /* the largest data datagrams sent and received (proto/pmtu.py black holes) */
    int roamed, src_changed, unstuck;
} Peer;

typedef struct {
    uint8_t addr[16];
    int slot;
} Route;

typedef struct {
    int cidr;
    Py_ssize_t n;
    Route *v;
} RouteLen;

typedef struct {
    int nlens;
    RouteLen lens[129]; /* longest first */
    int width;          /* 4 or 16 bytes */
} RouteTable;

/* a datagram or packet handed back to Python */
typedef struct {
    size_t off, len;
    struct sockaddr_storage from;
    socklen_t fromlen;
    int has_local;
    int local_level, local_type, local_len;
    uint8_t local[32];
    int inner_slot; /* > 0: a decrypted multicast packet from peer slot inner_slot - 1 */
} Punt;

typedef struct {
    PyObject_HEAD
    int tun_fd, sock_fd, family, vnet_hdr, mtu, gso;
    /* keypairs: open addressing by local index */
    Keypair **table;
    size_t table_cap, table_n;
    Peer *peers;
    int npeers;
    int *dirty_slots;
    int ndirty;
    RouteTable r4, r6;
    uint8_t *tunbuf, *udpbuf, *sendbuf, *scratch;
    struct Pkt_ *out;
    struct Seg_ *segs;
    /* punts */
    uint8_t *arena;
    size_t arena_len, arena_cap;
    Punt *punts;
    size_t npunts, punts_cap;
    uint64_t device_drops[D_N_DEVICE];
    uint64_t send_errno[N_ERRNO], tun_write_errno[N_ERRNO], socket_errno[N_ERRNO];
    uint64_t send_would_block, tun_drops;
    int drops_changed;
    int fatal_errno; /* EBADFD from TUN: the link is gone */
    int gso_off_logged;
} DataPath;

/* the daemon's protocol clock (wgdisco/daemon/clock.py): boottime, which counts a suspend, as the
   kernel module's; a keypair's expires is in it */
static double monotonic_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_BOOTTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------------ keypair table */

static size_t slot_of(uint32_t index, size_t cap)
{
    return (size_t)((index * 2654435761u) & (cap - 1));
}

static Keypair *kp_find(DataPath *self, uint32_t index)
{
    if (!self->table_cap)
        return NULL;
    size_t i = slot_of(index, self->table_cap);
    for (;;) {
        Keypair *kp = self->table[i];
        if (!kp)
            return NULL;
        if (kp->local_index == index)
            return kp;
        i = (i + 1) & (self->table_cap - 1);
    }
}

static int kp_insert_raw(Keypair **table, size_t cap, Keypair *kp)
{
    size_t i = slot_of(kp->local_index, cap);
    while (table[i])
        i = (i + 1) & (cap - 1);
    table[i] = kp;
    return 0;
}

static int kp_insert(DataPath *self, Keypair *kp)
{
    if ((self->table_n + 1) * 2 > self->table_cap) {
        size_t cap = self->table_cap ? self->table_cap * 2 : 16;
        Keypair **t = PyMem_Calloc(cap, sizeof(Keypair *));
        if (!t)
            return -1;
        for (size_t i = 0; i < self->table_cap; i++)
            if (self->table[i])
                kp_insert_raw(t, cap, self->table[i]);
        PyMem_Free(self->table);
        self->table = t;
        self->table_cap = cap;
    }
    kp_insert_raw(self->table, self->table_cap, kp);
    self->table_n++;
    return 0;
}

/* linear probing, deletion by backward shift */
static Keypair *kp_remove(DataPath *self, uint32_t index)
{
    if (!self->table_cap)
        return NULL;
    size_t mask = self->table_cap - 1, i = slot_of(index, self->table_cap);
    while (self->table[i] && self->table[i]->local_index != index)
        i = (i + 1) & mask;
    Keypair *found = self->table[i];
    if (!found)
        return NULL;
    self->table[i] = NULL;
    size_t j = i;
    for (;;) {
        j = (j + 1) & mask;
        Keypair *kp = self->table[j];
        if (!kp)
            break;
        size_t k = slot_of(kp->local_index, self->table_cap);
        /* move kp to i if its home k is not cyclically in (i, j] */
        if ((j > i && (k <= i || k > j)) || (j < i && (k <= i && k > j))) {
            self->table[i] = kp;
            self->table[j] = NULL;
            i = j;
        }
    }
    self->table_n--;
    return found;
}

static void kp_free(Keypair *kp)
{
    if (!kp)
        return;
    if (kp->enc)
        EVP_CIPHER_CTX_free(kp->enc);
    if (kp->dec)
        EVP_CIPHER_CTX_free(kp->dec);
    OPENSSL_cleanse(kp, sizeof(*kp));
    PyMem_Free(kp);
}

/* ------------------------------------------------------------------ replay (proto/replay.py) */

static int replay_validate(Keypair *kp, uint64_t counter)
{
    if (counter >= kp->recv_limit)
        return 0;
    uint64_t last = kp->replay_last;
    uint8_t *ring = kp->ring;
    if (counter > last) {
        size_t i = counter & RING_MASK;
        if (counter - last == 1) {
            if (!(i & (BLOCK - 1)))
                memset(ring + i, 0, BLOCK);
        } else {
            uint64_t blk = counter >> BLOCK_LOG, cur = last >> BLOCK_LOG;
            if (blk != cur) {
                if (blk - cur >= RING_BLOCKS) {
                    memset(ring, 0, RING);
                } else {
                    size_t a = ((cur + 1) & BLOCK_MASK) << BLOCK_LOG;
                    size_t b = ((blk & BLOCK_MASK) + 1) << BLOCK_LOG;
                    if (a < b) {
                        memset(ring + a, 0, b - a);
                    } else {
                        memset(ring + a, 0, RING - a);
                        memset(ring, 0, b);
                    }
                }
            }
        }
        ring[i] = 1;
        kp->replay_last = counter;
        return 1;
    }
    if (last - counter > WINDOW_SIZE)
        return 0;
    size_t i = counter & RING_MASK;
    if (ring[i])
        return 0;
    ring[i] = 1;
    return 1;
}

/* ------------------------------------------------------------------ routes */

static void routes_clear(RouteTable *t)
{
    for (int i = 0; i < t->nlens; i++)
        PyMem_Free(t->lens[i].v);
    t->nlens = 0;
}

static void mask_addr(uint8_t *out, const uint8_t *in, int width, int cidr)
{
    for (int i = 0; i < width; i++) {
        int bits = cidr - i * 8;
        uint8_t m = bits >= 8 ? 0xff : bits <= 0 ? 0 : (uint8_t)(0xff << (8 - bits));
        out[i] = in[i] & m;
    }
}

static int route_cmp(const void *a, const void *b)
{
    return memcmp(((const Route *)a)->addr, ((const Route *)b)->addr, 16);
}

static int route_lookup(const RouteTable *t, const uint8_t *addr)
{
    uint8_t key[16];
    for (int l = 0; l < t->nlens; l++) {
        const RouteLen *rl = &t->lens[l];
        memset(key, 0, 16);
        mask_addr(key, addr, t->width, rl->cidr);
        Py_ssize_t lo = 0, hi = rl->n - 1;
        while (lo <= hi) {
            Py_ssize_t mid = (lo + hi) / 2;
            int c = memcmp(rl->v[mid].addr, key, 16);
            if (!c)
                return rl->v[mid].slot;
            if (c < 0)
                lo = mid + 1;
            else
                hi = mid - 1;
        }
    }
    return -1;
}

/* ------------------------------------------------------------------ checksums */

static uint64_t csum_add(uint64_t sum, const uint8_t *p, size_t n)
{
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        uint64_t s = sum + v;
        sum = s + (s < v);
        p += 8;
        n -= 8;
    }
    uint64_t tail = 0;
    int shift = 0;
    /* the remaining bytes in memory order, as the 8-byte loads above (little-endian host) */
    while (n--) {
        tail |= (uint64_t)*p++ << shift;
        shift += 8;
    }
    uint64_t s = sum + tail;
    return s + (s < tail);
}

static uint16_t csum_fold(uint64_t sum)
{
    sum = (sum & 0xffffffffu) + (sum >> 32);
    sum = (sum & 0xffffffffu) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)sum; /* in host (little-endian) order of the network-order sum */
}

/* ones' complement of the sum of the bytes, as a 16-bit value to store with memcpy */
static uint16_t csum_final(uint64_t sum)
{
    return (uint16_t)~csum_fold(sum);
}

static uint64_t pseudo_sum(const uint8_t *pkt, int v6, uint32_t l4len, uint8_t proto)
{
    uint64_t sum = v6 ? csum_add(0, pkt + 8, 32) : csum_add(0, pkt + 12, 8);
    uint8_t tail[8] = {0};
    if (v6) {
        tail[0] = l4len >> 24;
        tail[1] = l4len >> 16;
        tail[2] = l4len >> 8;
        tail[3] = l4len;
        tail[7] = proto;
    } else {
        tail[1] = proto;
        tail[2] = l4len >> 8;
        tail[3] = l4len;
    }
    return csum_add(sum, tail, v6 ? 8 : 4);
}

static void ipv4_header_csum(uint8_t *ip)
{
    int ihl = (ip[0] & 15) * 4;
    ip[10] = ip[11] = 0;
    uint16_t c = csum_final(csum_add(0, ip, ihl));
    memcpy(ip + 10, &c, 2);
}

/* ------------------------------------------------------------------ counters */

static void count_errno(DataPath *self, uint64_t *arr, int e)
{
    arr[(e >= 0 && e < N_ERRNO) ? e : 0]++;
    self->drops_changed = 1;
}

static void device_drop(DataPath *self, int which)
{
    self->device_drops[which]++;
    self->drops_changed = 1;
}

static void mark_dirty(DataPath *self, int slot)
{
    Peer *p = &self->peers[slot];
    if (!p->dirty) {
        p->dirty = 1;
        self->dirty_slots[self->ndirty++] = slot;
    }
}

/* ------------------------------------------------------------------ punts */

static Punt *punt(DataPath *self, const uint8_t *data, size_t len)
{
    if (self->arena_len + len > self->arena_cap) {
        size_t cap = self->arena_cap * 2;
        while (cap < self->arena_len + len)
            cap *= 2;
        uint8_t *a = PyMem_RawRealloc(self->arena, cap);
        if (!a)
            return NULL;
        self->arena = a;
        self->arena_cap = cap;
    }
    if (self->npunts == self->punts_cap) {
        size_t cap = self->punts_cap * 2;
        Punt *p = PyMem_RawRealloc(self->punts, cap * sizeof(Punt));
        if (!p)
            return NULL;
        self->punts = p;
        self->punts_cap = cap;
    }
    Punt *p = &self->punts[self->npunts++];
    memset(p, 0, sizeof(*p));
    p->off = self->arena_len;
    p->len = len;
    memcpy(self->arena + self->arena_len, data, len);
    self->arena_len += len;
    return p;
}

/* ------------------------------------------------------------------ send (TUN -> UDP) */

typedef struct {
    int slot;     /* peer of the batch, -1 none */
    size_t used;  /* bytes in sendbuf */
    size_t segment;
    int count;
} Batch;

static void send_one(DataPath *self, Peer *p, const uint8_t *data, size_t len, int gso_segment);

static int source_error(int e)
{
    return e == EINVAL || e == EADDRNOTAVAIL || e == ENETUNREACH || e == EHOSTUNREACH || e == ENODEV || e == ENXIO;
}

/* sendmsg of data to the peer's endpoint, with UDP_SEGMENT if gso_segment, from its sticky source */
static int do_send(DataPath *self, Peer *p, const uint8_t *data, size_t len, int gso_segment)
{
    struct iovec iov = {(void *)data, len};
    union {
        char buf[CMSG_SPACE(sizeof(uint16_t)) + CMSG_SPACE(32)];
        struct cmsghdr align;
    } u;
    struct msghdr msg;
    memset(&msg, 0, sizeof(msg));
    msg.msg_name = &p->ep;
    msg.msg_namelen = p->eplen;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    size_t clen = 0;
    memset(u.buf, 0, sizeof(u.buf));
    msg.msg_control = u.buf;
    msg.msg_controllen = sizeof(u.buf);
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    if (gso_segment) {
        c->cmsg_level = SOL_UDP;
        c->cmsg_type = UDP_SEGMENT;
        c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
        uint16_t seg = (uint16_t)gso_segment;
        memcpy(CMSG_DATA(c), &seg, sizeof(seg));
        clen += CMSG_SPACE(sizeof(uint16_t));
        c = (struct cmsghdr *)((char *)c + CMSG_SPACE(sizeof(uint16_t)));
    }
    if (p->has_src) {
        c->cmsg_level = p->src_level;
        c->cmsg_type = p->src_type;
        c->cmsg_len = CMSG_LEN(p->src_len);
        memcpy(CMSG_DATA(c), p->src, p->src_len);
        clen += CMSG_SPACE(p->src_len);
    }
    msg.msg_controllen = clen;
    if (!clen)
        msg.msg_control = NULL;
    ssize_t r;
    do {
        r = sendmsg(self->sock_fd, &msg, MSG_DONTWAIT);
    } while (r < 0 && errno == EINTR);
    return r < 0 ? errno : 0;
}

static void send_one(DataPath *self, Peer *p, const uint8_t *data, size_t len, int gso_segment)
{
    int e = do_send(self, p, data, len, gso_segment);
    if (!e)
        return;
    if (e == EAGAIN || e == EWOULDBLOCK) {
        self->send_would_block++;
        self->drops_changed = 1;
        return;
    }
    if (p->has_src && source_error(e)) {
        /* the kernel refused the sticky source (io/udp.py Sender._unstick): let it choose, once */
        p->has_src = 0;
        p->unstuck = 1;
        mark_dirty(self, (int)(p - self->peers));
        send_one(self, p, data, len, gso_segment);
        return;
    }
    if (gso_segment && (e == EIO || e == EINVAL || e == EOPNOTSUPP)) {
        self->gso = 0; /* this path cannot segment: one by one from now on */
        for (size_t off = 0; off < len; off += gso_segment) {
            size_t n = len - off < (size_t)gso_segment ? len - off : (size_t)gso_segment;
            send_one(self, p, data + off, n, 0);
        }
        return;
    }
    count_errno(self, self->send_errno, e);
}

static void flush_batch(DataPath *self, Batch *b)
{
    if (b->slot < 0 || !b->count)
        return;
    Peer *p = &self->peers[b->slot];
    if (b->count == 1 || !self->gso) {
        for (size_t off = 0; off < b->used; off += b->segment) {
            size_t n = b->used - off < b->segment ? b->used - off : b->segment;
            send_one(self, p, self->sendbuf + off, n, 0);
        }
    } else {
        send_one(self, p, self->sendbuf, b->used, (int)b->segment);
    }
    b->used = 0;
    b->count = 0;
    b->segment = 0;
    b->slot = -1;
}

/* room in the batch for an n-byte packet to slot: where its plaintext goes (then seal_finish) */
static uint8_t *seal_reserve(DataPath *self, Batch *b, int slot, size_t n, size_t *padded_out)
{
    size_t padded = n;
    if ((n & 15) && n < (size_t)self->mtu) {
        padded = (n + 15) & ~(size_t)15;
        if (padded > (size_t)self->mtu)
            padded = self->mtu;
    }
    size_t dlen = MSG_HEADER + padded + TAG;
    if (b->count && (b->slot != slot || dlen > b->segment || b->count >= MAX_SEGMENTS
                     || b->used + dlen > MAX_GSO_BYTES))
        flush_batch(self, b);
    if (!b->count) {
        b->slot = slot;
        b->segment = dlen;
    }
    *padded_out = padded;
    return self->sendbuf + b->used + MSG_HEADER;
}

/* one transport message (whitepaper 5.4.6) around the n plaintext bytes seal_reserve placed */
static int seal_finish(DataPath *self, Batch *b, int slot, Keypair *kp, size_t n, size_t padded)
{
    size_t dlen = MSG_HEADER + padded + TAG;
    uint8_t *out = self->sendbuf + b->used;
    uint64_t counter = kp->send_counter++;
    uint32_t ridx = kp->remote_index;
    out[0] = 4;
    out[1] = out[2] = out[3] = 0;
    memcpy(out + 4, &ridx, 4); /* little-endian host (x86-64, aarch64) */
    memcpy(out + 8, &counter, 8);
    uint8_t *body = out + MSG_HEADER;
    memset(body + n, 0, padded - n);
    uint8_t nonce[12] = {0};
    memcpy(nonce + 4, &counter, 8);
    int outl = 0, finl = 0;
    if (EVP_EncryptInit_ex(kp->enc, NULL, NULL, NULL, nonce) != 1
        || EVP_EncryptUpdate(kp->enc, body, &outl, body, (int)padded) != 1
        || EVP_EncryptFinal_ex(kp->enc, body + outl, &finl) != 1
        || EVP_CIPHER_CTX_ctrl(kp->enc, EVP_CTRL_AEAD_GET_TAG, TAG, body + padded) != 1)
        return -1;
    b->used += dlen;
    b->count++;
    Peer *p = &self->peers[slot];
    p->tx_bytes += dlen;
    p->tx_data++;
    if (dlen > p->tx_max)
        p->tx_max = dlen;
    mark_dirty(self, slot);
    if (dlen < b->segment)
        flush_batch(self, b); /* a shorter datagram can only end a GSO batch */
    return 0;
}

/* encrypt one IP packet (n bytes at pkt) for peer slot into the batch */
static int seal_into(DataPath *self, Batch *b, int slot, Keypair *kp, const uint8_t *pkt, size_t n)
{
    size_t padded;
    uint8_t *body = seal_reserve(self, b, slot, n, &padded);
    memcpy(body, pkt, n);
    return seal_finish(self, b, slot, kp, n, padded);
}

/* the peer and keypair to send an IP packet with, or -1 (Python's); `len` is the size of the
   packet(s) to send: one over the peer's path MTU is Python's (ICMP too big, proto/icmp.py) */
static int route_packet(DataPath *self, const uint8_t *pkt, size_t n, size_t len, double now, Keypair **out)
{
    int version = n ? pkt[0] >> 4 : 0;
    int slot;
    if (version == 4 && n >= 20)
        slot = route_lookup(&self->r4, pkt + 16);
    else if (version == 6 && n >= 40)
        slot = route_lookup(&self->r6, pkt + 24);
    else
        return -1;
    if (slot < 0 || slot >= self->npeers)
        return -1;
    Peer *p = &self->peers[slot];
    Keypair *kp = p->send_kp;
    if (!p->active || !p->fast_send || !p->has_endpoint || !kp || !kp->can_send
        || kp->send_counter >= kp->send_limit || now >= kp->expires || len > p->max_inner)
        return -1;
    *out = kp;
    return slot;
}

/* one plain IP packet from TUN: encrypt and batch, or hand it to Python */
static int handle_plain(DataPath *self, Batch *b, uint8_t *pkt, size_t n, double now)
{
    Keypair *kp = NULL;
    int slot = route_packet(self, pkt, n, n, now, &kp);
    if (slot < 0) {
        flush_batch(self, b); /* keep the order of what we send and what Python sends later */
        return punt(self, pkt, n) ? 0 : -1;
    }
    return seal_into(self, b, slot, kp, pkt, n);
}

/* complete a CHECKSUM_PARTIAL packet (virtio-net NEEDS_CSUM). A sum that completes to zero is
   written as 0xFFFF, its other one's-complement form (RFC 768; Linux skb_checksum_help writes
   CSUM_MANGLED_0): a zero UDP checksum means "none" over IPv4 and is invalid over IPv6 (RFC 8200
   §8.1), so the receiver dropped the packet (Udp6InCsumErrors). For TCP and ICMP both forms verify. */
static void complete_csum(uint8_t *pkt, size_t n, size_t start, size_t offset)
{
    if (start + offset + 2 > n)
        return;
    uint16_t c = csum_final(csum_add(0, pkt + start, n - start));
    if (!c)
        c = 0xFFFF;
    memcpy(pkt + start + offset, &c, 2);
}

/* split a TSO super-packet (wireguard-go tun/offload_linux.go gsoSplit, Linux tcp_gso_segment) */
static int split_tso(DataPath *self, Batch *b, uint8_t *pkt, size_t n, int v6, size_t ip_len, size_t gso_size,
                     double now)
{
    if (ip_len + 20 > n)
        return 0;
    size_t tcp_len = (size_t)(pkt[ip_len + 12] >> 4) * 4;
    size_t hdr = ip_len + tcp_len;
    if (tcp_len < 20 || hdr > n || !gso_size)
        return 0;
    size_t payload = n - hdr;
    uint32_t seq;
    memcpy(&seq, pkt + ip_len + 4, 4);
    seq = ntohl(seq);
    uint16_t id;
    memcpy(&id, pkt + 4, 2);
    id = ntohs(id);
    uint8_t flags = pkt[ip_len + 13];
    Keypair *kp = NULL;
    /* every segment has the super-packet's addresses; the largest is hdr + gso_size bytes */
    int slot = route_packet(self, pkt, n, hdr + gso_size, now, &kp);
    size_t i = 0;
    for (size_t off = 0; off < payload || (payload == 0 && off == 0); off += gso_size, i++) {
        size_t len = payload - off < gso_size ? payload - off : gso_size;
        int last = off + len >= payload;
        /* straight into the send batch when it can go out now, else built aside for handle_plain */
        int direct = slot >= 0 && kp->send_counter < kp->send_limit;
        size_t padded = 0;
        uint8_t *seg = direct ? seal_reserve(self, b, slot, hdr + len, &padded) : self->scratch;
        memcpy(seg, pkt, hdr);
        memcpy(seg + hdr, pkt + hdr + off, len);
        size_t total = hdr + len;
        if (v6) {
            uint16_t pl = htons((uint16_t)(total - 40));
            memcpy(seg + 4, &pl, 2);
        } else {
            uint16_t tl = htons((uint16_t)total), nid = htons((uint16_t)(id + i));
            memcpy(seg + 2, &tl, 2);
            memcpy(seg + 4, &nid, 2);
            ipv4_header_csum(seg);
        }
        uint32_t s = htonl(seq + (uint32_t)off);
        memcpy(seg + ip_len + 4, &s, 4);
        uint8_t f = flags;
        if (!last)
            f &= ~(0x01 | 0x08); /* FIN, PSH on the last segment only */
        if (i)
            f &= ~0x80; /* CWR on the first only */
        seg[ip_len + 13] = f;
        seg[ip_len + 16] = seg[ip_len + 17] = 0;
        uint64_t sum = pseudo_sum(seg, v6, (uint32_t)(total - ip_len), 6);
        uint16_t c = csum_final(csum_add(sum, seg + ip_len, total - ip_len));
        memcpy(seg + ip_len + 16, &c, 2);
        if (direct ? seal_finish(self, b, slot, kp, total, padded) < 0 : handle_plain(self, b, seg, total, now) < 0)
            return -1;
        if (payload == 0)
            break;
    }
    return 0;
}

static int handle_tun_frame(DataPath *self, Batch *b, uint8_t *frame, size_t n, double now)
{
    if (!self->vnet_hdr)
        return handle_plain(self, b, frame, n, now);
    if (n < VNET_HDR_LEN)
        return 0;
    uint8_t vflags = frame[0], gso_type = frame[1] & ~VNET_GSO_ECN;
    uint16_t gso_size, csum_start, csum_offset;
    memcpy(&gso_size, frame + 4, 2);
    memcpy(&csum_start, frame + 6, 2);
    memcpy(&csum_offset, frame + 8, 2);
    uint8_t *pkt = frame + VNET_HDR_LEN;
    n -= VNET_HDR_LEN;
    if (gso_type == VNET_GSO_NONE) {
        if (vflags & VNET_F_NEEDS_CSUM)
            complete_csum(pkt, n, csum_start, csum_offset);
        return handle_plain(self, b, pkt, n, now);
    }
    if ((gso_type == VNET_GSO_TCPV4 && n >= 20 && pkt[0] >> 4 == 4)
        || (gso_type == VNET_GSO_TCPV6 && n >= 40 && pkt[0] >> 4 == 6)) {
        size_t ip_len = csum_start; /* the kernel's: IP header plus any IPv6 extension headers */
        if (ip_len < (gso_type == VNET_GSO_TCPV4 ? 20u : 40u) || ip_len >= n)
            return 0;
        return split_tso(self, b, pkt, n, gso_type == VNET_GSO_TCPV6, ip_len, gso_size, now);
    }
    device_drop(self, D_TUN_NOT_IP); /* a GSO kind never enabled (UDP, ...) */
    return 0;
}

/* ------------------------------------------------------------------ receive (UDP -> TUN) */

typedef struct Pkt_ {
    uint8_t *p;
    size_t n;
} Pkt;

static void tun_write_iov(DataPath *self, struct iovec *iov, int cnt)
{
    ssize_t r;
    do {
        r = writev(self->tun_fd, iov, cnt);
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
        int e = errno;
        if (e == EAGAIN || e == ENOBUFS || e == ENOMEM || e == EIO) {
            self->tun_drops++;
            self->drops_changed = 1;
        } else if (e == EBADFD) {
            self->fatal_errno = e;
        } else {
            count_errno(self, self->tun_write_errno, e);
        }
    }
}

static void tun_write_plain(DataPath *self, uint8_t *pkt, size_t n)
{
    static uint8_t zero[VNET_HDR_LEN];
    struct iovec iov[2];
    int k = 0;
    if (self->vnet_hdr) {
        iov[k].iov_base = zero;
        iov[k++].iov_len = VNET_HDR_LEN;
    }
    iov[k].iov_base = pkt;
    iov[k++].iov_len = n;
    tun_write_iov(self, iov, k);
}

/* proto/gro.py _Segment.parse: header length and payload length of a mergeable TCP packet, or 0 */
typedef struct Seg_ {
    int v6;
    size_t ip_len, hdr_len, payload;
    uint32_t seq;
    uint8_t flags;
} Seg;

static int seg_parse(const uint8_t *p, size_t n, Seg *s)
{
    int version = p[0] >> 4;
    size_t total;
    if (version == 4) {
        if (n < 40 || p[0] != 0x45 || p[9] != 6)
            return 0;
        if ((p[6] & 0x3f) || p[7])
            return 0;
        s->ip_len = 20;
        total = (size_t)p[2] << 8 | p[3];
    } else if (version == 6) {
        if (n < 60 || p[6] != 6)
            return 0;
        s->ip_len = 40;
        total = 40 + ((size_t)p[4] << 8 | p[5]);
    } else {
        return 0;
    }
    if (total != n)
        return 0;
    size_t tcp_len = (size_t)(p[s->ip_len + 12] >> 4) * 4;
    s->hdr_len = s->ip_len + tcp_len;
    if (tcp_len < 20 || s->hdr_len > n)
        return 0;
    uint8_t flags = p[s->ip_len + 13];
    if ((flags & ~(0x10 | 0x08)) || !(flags & 0x10))
        return 0;
    s->payload = n - s->hdr_len;
    if (!s->payload)
        return 0;
    s->v6 = version == 6;
    s->flags = flags;
    uint32_t seq;
    memcpy(&seq, p + s->ip_len + 4, 4);
    s->seq = ntohl(seq);
    return 1;
}

/* the header fields gro.py compares (header_key): equal for packets of one TSO send */
static int seg_same(const uint8_t *a, const Seg *sa, const uint8_t *b, const Seg *sb)
{
    if (sa->v6 != sb->v6 || sa->hdr_len != sb->hdr_len)
        return 0;
    size_t il = sa->ip_len;
    if (sa->v6) {
        if (memcmp(a, b, 4) || a[7] != b[7] || memcmp(a + 8, b + 8, 32))
            return 0;
    } else {
        if (a[1] != b[1] || a[6] != b[6] || a[8] != b[8] || a[9] != b[9] || memcmp(a + 12, b + 12, 8))
            return 0;
    }
    return !memcmp(a + il, b + il, 4) && !memcmp(a + il + 8, b + il + 8, 4) && !memcmp(a + il + 14, b + il + 14, 2)
           && !memcmp(a + il + 18, b + il + 18, sa->hdr_len - il - 18);
}

static void write_run(DataPath *self, Pkt *pk, Seg *sg, int lo, int hi)
{
    if (hi - lo == 1) {
        tun_write_plain(self, pk[lo].p, pk[lo].n);
        return;
    }
    uint8_t hdr[VNET_HDR_LEN + 60 + 60];
    const Seg *f = &sg[lo];
    const uint8_t *p = pk[lo].p;
    size_t il = f->ip_len, hl = f->hdr_len;
    size_t total = hl;
    for (int i = lo; i < hi; i++)
        total += sg[i].payload;
    uint8_t *h = hdr + VNET_HDR_LEN;
    memcpy(h, p, hl);
    h[il + 13] = sg[hi - 1].flags;
    uint32_t tcp_length = (uint32_t)(total - il);
    uint8_t gso_type;
    if (f->v6) {
        uint16_t pl = htons((uint16_t)(total - 40));
        memcpy(h + 4, &pl, 2);
        gso_type = VNET_GSO_TCPV6;
    } else {
        uint16_t tl = htons((uint16_t)total);
        memcpy(h + 2, &tl, 2);
        ipv4_header_csum(h);
        gso_type = VNET_GSO_TCPV4;
    }
    uint16_t partial = csum_fold(pseudo_sum(p, f->v6, tcp_length, 6));
    memcpy(h + il + 16, &partial, 2);
    uint16_t v[5] = {0};
    hdr[0] = VNET_F_NEEDS_CSUM;
    hdr[1] = gso_type;
    v[1] = (uint16_t)hl;
    v[2] = (uint16_t)f->payload;
    v[3] = (uint16_t)il;
    v[4] = 16;
    memcpy(hdr + 2, &v[1], 8);
    struct iovec iov[MAX_SEGMENTS + 2];
    int k = 0;
    iov[k].iov_base = hdr;
    iov[k++].iov_len = VNET_HDR_LEN + hl;
    for (int i = lo; i < hi; i++) {
        iov[k].iov_base = pk[i].p + sg[i].hdr_len;
        iov[k++].iov_len = sg[i].payload;
    }
    tun_write_iov(self, iov, k);
}

/* proto/gro.py coalesce: adjacent segments of one flow become one GSO write */
static void write_packets(DataPath *self, Pkt *pk, int n)
{
    if (!self->vnet_hdr || n == 1) {
        for (int i = 0; i < n; i++)
            tun_write_plain(self, pk[i].p, pk[i].n);
        return;
    }
    Seg *sg = self->segs;
    int run = -1; /* start of the current run */
    size_t size = 0, total = 0;
    for (int i = 0; i < n; i++) {
        if (!seg_parse(pk[i].p, pk[i].n, &sg[i])) {
            if (run >= 0)
                write_run(self, pk, sg, run, i);
            run = -1;
            tun_write_plain(self, pk[i].p, pk[i].n);
            continue;
        }
        if (run >= 0) {
            Seg *prev = &sg[i - 1];
            if (seg_same(pk[i - 1].p, prev, pk[i].p, &sg[i]) && sg[i].seq == prev->seq + (uint32_t)prev->payload
                && prev->payload == size && sg[i].payload <= size && !(prev->flags & 0x08)
                && total + sg[i].payload <= 65535 && i - run < MAX_SEGMENTS) {
                total += sg[i].payload;
                continue;
            }
            write_run(self, pk, sg, run, i);
        }
        run = i;
        size = sg[i].payload;
        total = sg[i].hdr_len + sg[i].payload;
    }
    if (run >= 0)
        write_run(self, pk, sg, run, n);
}

static int same_endpoint(const Peer *p, const struct sockaddr_storage *from, socklen_t fromlen)
{
    if (!p->has_endpoint || p->ep.ss_family != from->ss_family)
        return 0;
    if (from->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&p->ep, *b = (const struct sockaddr_in6 *)from;
        return a->sin6_port == b->sin6_port && a->sin6_scope_id == b->sin6_scope_id
               && a->sin6_flowinfo == b->sin6_flowinfo && !memcmp(&a->sin6_addr, &b->sin6_addr, 16);
    }
    const struct sockaddr_in *a = (const struct sockaddr_in *)&p->ep, *b = (const struct sockaddr_in *)from;
    (void)fromlen;
    return a->sin_port == b->sin_port && a->sin_addr.s_addr == b->sin_addr.s_addr;
}

typedef struct {
    int has;
    int level, type, len;
    uint8_t data[32];
} Local;

/* one transport datagram for a held keypair: 1 handled (delivered or dropped), 0 for Python.
   A packet to a multicast group that passed the checks is not delivered: it is left in *mc
   (and the peer's slot in *mc_slot) for Python (proto/multicast.py: groups, budgets). */
static int open_transport(DataPath *self, uint8_t *d, size_t n, const struct sockaddr_storage *from,
                          socklen_t fromlen, const Local *local, double now, Pkt *out, int *nout,
                          Pkt *mc, int *mc_slot)
{
    uint32_t ridx;
    memcpy(&ridx, d + 4, 4);
    Keypair *kp = kp_find(self, ridx);
    if (!kp || now >= kp->expires)
        return 0; /* unknown index (a handshake's next keypair, a stranger), expired: Python's */
    uint64_t counter;
    memcpy(&counter, d + 8, 8);
    uint8_t nonce[12] = {0};
    memcpy(nonce + 4, &counter, 8);
    size_t clen = n - MSG_HEADER - TAG;
    uint8_t *body = d + MSG_HEADER;
    int outl = 0, finl = 0;
    if (EVP_DecryptInit_ex(kp->dec, NULL, NULL, NULL, nonce) != 1
        || EVP_CIPHER_CTX_ctrl(kp->dec, EVP_CTRL_AEAD_SET_TAG, TAG, body + clen) != 1
        || EVP_DecryptUpdate(kp->dec, body, &outl, body, (int)clen) != 1
        || EVP_DecryptFinal_ex(kp->dec, body + outl, &finl) != 1) {
        device_drop(self, D_DATA_AUTH);
        return 1;
    }
    if (!replay_validate(kp, counter)) {
        device_drop(self, D_REPLAY);
        return 1;
    }
    int slot = kp->slot;
    Peer *p = &self->peers[slot];
    mark_dirty(self, slot);
    p->rx_bytes += n;
    p->rx_packets++;
    /* roaming (whitepaper 2.1): the endpoint follows the latest authenticated packet */
    if (!same_endpoint(p, from, fromlen)) {
        memcpy(&p->ep, from, fromlen);
        p->eplen = fromlen;
        p->has_endpoint = 1;
        p->roamed = 1;
        p->has_src = 0;
        if (local->has) {
            p->has_src = 1;
            p->src_level = local->level;
            p->src_type = local->type;
            p->src_len = local->len;
            memcpy(p->src, local->data, local->len);
        }
    } else if (local->has && (!p->has_src || p->src_len != local->len || p->src_level != local->level
                              || p->src_type != local->type || memcmp(p->src, local->data, local->len))) {
        p->has_src = 1;
        p->src_level = local->level;
        p->src_type = local->type;
        p->src_len = local->len;
        memcpy(p->src, local->data, local->len);
        p->src_changed = 1;
    }
    if (!clen)
        return 1; /* a keepalive */
    p->rx_data++;
    if (n > p->rx_max)
        p->rx_max = n;
    uint8_t *pt = body;
    size_t length;
    const uint8_t *source;
    const RouteTable *t;
    int version = pt[0] >> 4;
    if (version == 4 && clen >= 20) {
        length = (size_t)pt[2] << 8 | pt[3];
        source = pt + 12;
        t = &self->r4;
    } else if (version == 6 && clen >= 40) {
        length = ((size_t)pt[4] << 8 | pt[5]) + 40;
        source = pt + 8;
        t = &self->r6;
    } else {
        device_drop(self, D_INNER_NOT_IP);
        return 1;
    }
    if (length > clen || length < 20) {
        device_drop(self, D_INNER_LENGTH);
        return 1;
    }
    if (route_lookup(t, source) != slot) {
        device_drop(self, D_INNER_SOURCE);
        return 1;
    }
    if (version == 4 ? (pt[16] & 0xF0) == 0xE0 : pt[24] == 0xFF) { /* 224.0.0.0/4, ff00::/8 */
        mc->p = pt;
        mc->n = length;
        *mc_slot = slot;
        return 1;
    }
    out[*nout].p = pt;
    out[*nout].n = length;
    (*nout)++;
    return 1;
}

/* ------------------------------------------------------------------ Python glue */

static PyObject *sockaddr_to_tuple(const struct sockaddr_storage *ss)
{
    char host[INET6_ADDRSTRLEN];
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
        return Py_BuildValue("(sHkk)", host, ntohs(a->sin6_port), (unsigned long)ntohl(a->sin6_flowinfo),
                             (unsigned long)a->sin6_scope_id);
    }
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
        return Py_BuildValue("(sH)", host, ntohs(a->sin_port));
    }
    Py_RETURN_NONE;
}

/* the (host, port[, flowinfo, scope_id]) tuple Python's socket module uses, to a sockaddr */
static int tuple_to_sockaddr(PyObject *t, int family, struct sockaddr_storage *ss, socklen_t *len)
{
    memset(ss, 0, sizeof(*ss));
    if (!PyTuple_Check(t))
        return 0;
    const char *host;
    if (family == AF_INET6) {
        unsigned int port = 0;
        unsigned long flow = 0, scope = 0;
        if (PyTuple_GET_SIZE(t) != 4 || !PyArg_ParseTuple(t, "sIkk", &host, &port, &flow, &scope)) {
            PyErr_Clear();
            return 0;
        }
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
        a->sin6_family = AF_INET6;
        if (port > 65535 || inet_pton(AF_INET6, host, &a->sin6_addr) != 1)
            return 0;
        a->sin6_port = htons((uint16_t)port);
        a->sin6_flowinfo = htonl((uint32_t)flow);
        a->sin6_scope_id = (uint32_t)scope;
        *len = sizeof(*a);
        return 1;
    }
    unsigned int port = 0;
    if (PyTuple_GET_SIZE(t) != 2 || !PyArg_ParseTuple(t, "sI", &host, &port)) {
        PyErr_Clear();
        return 0;
    }
    struct sockaddr_in *a = (struct sockaddr_in *)ss;
    a->sin_family = AF_INET;
    if (port > 65535 || inet_pton(AF_INET, host, &a->sin_addr) != 1)
        return 0;
    a->sin_port = htons((uint16_t)port);
    *len = sizeof(*a);
    return 1;
}

/* a pktinfo item (level, type, bytes) as recvmsg gives it */
static int parse_local(PyObject *o, int *level, int *type, uint8_t *data, int *len)
{
    Py_buffer view;
    if (!PyTuple_Check(o) || PyTuple_GET_SIZE(o) != 3)
        return 0;
    if (!PyArg_ParseTuple(o, "iiy*", level, type, &view)) {
        PyErr_Clear();
        return 0;
    }
    int ok = view.len <= 32;
    if (ok) {
        memcpy(data, view.buf, view.len);
        *len = (int)view.len;
    }
    PyBuffer_Release(&view);
    return ok;
}

static PyObject *local_tuple(int level, int type, const uint8_t *data, int len)
{
    return Py_BuildValue("(iiy#)", level, type, (const char *)data, (Py_ssize_t)len);
}

static PyObject *peer_events(DataPath *self)
{
    PyObject *list = PyList_New(0);
    if (!list)
        return NULL;
    for (int i = 0; i < self->ndirty; i++) {
        int slot = self->dirty_slots[i];
        Peer *p = &self->peers[slot];
        p->dirty = 0;
        PyObject *roam = Py_None, *src = Py_None;
        Py_INCREF(Py_None);
        Py_INCREF(Py_None);
        if (p->roamed || p->src_changed) {
            Py_DECREF(roam);
            roam = sockaddr_to_tuple(&p->ep);
            Py_DECREF(src);
            src = p->has_src ? local_tuple(p->src_level, p->src_type, p->src, p->src_len) : (Py_INCREF(Py_None), Py_None);
        }
        long long counter = p->send_kp ? (long long)p->send_kp->send_counter : -1;
        PyObject *ev = Py_BuildValue("(iKKKKKNNiiLnn)", slot, (unsigned long long)p->rx_bytes,
                                     (unsigned long long)p->rx_packets, (unsigned long long)p->rx_data,
                                     (unsigned long long)p->tx_bytes, (unsigned long long)p->tx_data, roam, src,
                                     p->roamed, p->unstuck, counter, (Py_ssize_t)p->tx_max, (Py_ssize_t)p->rx_max);
        p->rx_bytes = p->tx_bytes = p->rx_data = p->rx_packets = p->tx_data = 0;
        p->tx_max = p->rx_max = 0;
        p->roamed = p->src_changed = p->unstuck = 0;
        if (!ev || PyList_Append(list, ev) < 0) {
            Py_XDECREF(ev);
            Py_DECREF(list);
            self->ndirty = 0;
            return NULL;
        }
        Py_DECREF(ev);
    }
    self->ndirty = 0;
    return list;
}

static void reset_punts(DataPath *self)
{
    self->npunts = 0;
    self->arena_len = 0;
}

/* the punts from index `from` on as a list: (datagram, address, pktinfo) tuples, or packets */
static PyObject *punt_list(DataPath *self, size_t from, size_t to, int udp)
{
    PyObject *list = PyList_New((Py_ssize_t)(to - from));
    if (!list)
        return NULL;
    for (size_t i = from; i < to; i++) {
        Punt *p = &self->punts[i];
        PyObject *item;
        if (udp && p->inner_slot) {
            item = Py_BuildValue("(y#iO)", (const char *)self->arena + p->off, (Py_ssize_t)p->len,
                                 p->inner_slot - 1, Py_None);
        } else if (udp) {
            PyObject *addr = sockaddr_to_tuple(&p->from);
            PyObject *loc = p->has_local ? local_tuple(p->local_level, p->local_type, p->local, p->local_len)
                                         : (Py_INCREF(Py_None), Py_None);
            item = Py_BuildValue("(y#NN)", (const char *)self->arena + p->off, (Py_ssize_t)p->len, addr, loc);
        } else {
            item = PyBytes_FromStringAndSize((const char *)self->arena + p->off, (Py_ssize_t)p->len);
        }
        if (!item) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)(i - from), item);
    }
    return list;
}

/* the result of a drain: ([udp punts,] [tun punts,] events, drops changed); `nudp` punts are UDP */
static PyObject *finish(DataPath *self, int oom, size_t nudp, int want_udp, int want_tun)
{
    PyObject *u = NULL, *t = NULL, *events = NULL, *r = NULL;
    if (oom) {
        reset_punts(self);
        return PyErr_NoMemory();
    }
    if (self->fatal_errno) {
        int e = self->fatal_errno;
        self->fatal_errno = 0;
        reset_punts(self);
        errno = e;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (want_udp && !(u = punt_list(self, 0, nudp, 1)))
        goto done;
    if (want_tun && !(t = punt_list(self, nudp, self->npunts, 0)))
        goto done;
    if (!(events = peer_events(self)))
        goto done;
    PyObject *changed = self->drops_changed ? Py_True : Py_False;
    self->drops_changed = 0;
    if (want_udp && want_tun)
        r = Py_BuildValue("(OOOO)", u, t, events, changed);
    else
        r = Py_BuildValue("(OOO)", want_udp ? u : t, events, changed);
done:
    reset_punts(self);
    Py_XDECREF(u);
    Py_XDECREF(t);
    Py_XDECREF(events);
    return r;
}

/* read TUN until EAGAIN or max_reads: encrypt and send, punt the rest (GIL released) */
static int drain_tun(DataPath *self, int max_reads, double now)
{
    Batch b = {-1, 0, 0, 0};
    int rc = 0;
    for (int reads = 0; reads < max_reads; reads++) {
        ssize_t n = read(self->tun_fd, self->tunbuf, TUN_BUF);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EBADFD)
                self->fatal_errno = EBADFD;
            break;
        }
        if (handle_tun_frame(self, &b, self->tunbuf, (size_t)n, now) < 0) {
            rc = -1;
            break;
        }
    }
    flush_batch(self, &b);
    return rc;
}

/* read the socket until EAGAIN or max_reads: decrypt and write to TUN, punt the rest (GIL released) */
static int drain_udp(DataPath *self, int max_reads, double now)
{
    int oom = 0;
    Pkt *out = self->out;
    int nout = 0;
    size_t pos = 0;
    union {
        char buf[CMSG_SPACE(sizeof(int)) + CMSG_SPACE(32)];
        struct cmsghdr align;
    } u;
    for (int reads = 0; reads < max_reads; reads++) {
        struct sockaddr_storage from;
        if (pos > UDP_ARENA || nout > MAX_OUT - 64) {
            write_packets(self, out, nout);
            nout = 0;
            pos = 0;
        }
        uint8_t *buf = self->udpbuf + pos;
        struct iovec iov = {buf, UDP_BUF};
        struct msghdr msg;
        memset(&msg, 0, sizeof(msg));
        msg.msg_name = &from;
        msg.msg_namelen = sizeof(from);
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = u.buf;
        msg.msg_controllen = sizeof(u.buf);
        ssize_t n = recvmsg(self->sock_fd, &msg, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            count_errno(self, self->socket_errno, errno); /* e.g. ECONNREFUSED from an ICMP error */
            continue;
        }
        int segment = 0;
        Local local = {0};
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
            if (c->cmsg_level == SOL_UDP) {
                if (c->cmsg_type == UDP_GRO && c->cmsg_len >= CMSG_LEN(sizeof(int)))
                    memcpy(&segment, CMSG_DATA(c), sizeof(int));
            } else {
                size_t dl = c->cmsg_len - CMSG_LEN(0);
                if (dl <= sizeof(local.data)) {
                    local.has = 1;
                    local.level = c->cmsg_level;
                    local.type = c->cmsg_type;
                    local.len = (int)dl;
                    memcpy(local.data, CMSG_DATA(c), dl);
                }
            }
        }
        size_t total = (size_t)n, seg = segment > 0 && (size_t)segment < total ? (size_t)segment : total;
        pos += (total + 15) & ~(size_t)15;
        for (size_t off = 0; off < total || (total == 0 && off == 0); off += seg ? seg : 1) {
            size_t len = total - off < seg ? total - off : seg;
            uint8_t *d = buf + off;
            if (nout == MAX_OUT) {
                write_packets(self, out, nout);
                nout = 0;
            }
            Pkt mc = {NULL, 0};
            int mc_slot = -1;
            if (len >= MIN_TRANSPORT && d[0] == 4 && !d[1] && !d[2] && !d[3]
                && open_transport(self, d, len, &from, msg.msg_namelen, &local, now, out, &nout, &mc, &mc_slot)) {
                if (mc.p) { /* multicast: Python's, as (packet, slot, None) */
                    Punt *p = punt(self, mc.p, mc.n);
                    if (!p) {
                        oom = 1;
                        break;
                    }
                    p->inner_slot = mc_slot + 1;
                }
                continue;
            }
            /* Python's: handshakes, cookies, STUN, probes, strangers. Data delivered so far goes
               first, so that what Python delivers later stays in order behind it. */
            if (nout) {
                write_packets(self, out, nout);
                nout = 0;
            }
            Punt *p = punt(self, d, len);
            if (!p) {
                oom = 1;
                break;
            }
            memcpy(&p->from, &from, msg.msg_namelen);
            p->fromlen = msg.msg_namelen;
            if (local.has) {
                p->has_local = 1;
                p->local_level = local.level;
                p->local_type = local.type;
                p->local_len = local.len;
                memcpy(p->local, local.data, local.len);
            }
        }
        if (oom || self->fatal_errno)
            break;
    }
    if (nout)
        write_packets(self, out, nout);
    return oom ? -1 : 0;
}

static PyObject *DataPath_tun_read(DataPath *self, PyObject *args)
{
    int max_reads = 256, rc;
    if (!PyArg_ParseTuple(args, "|i", &max_reads))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    rc = drain_tun(self, max_reads, monotonic_now());
    Py_END_ALLOW_THREADS
    return finish(self, rc < 0, 0, 0, 1);
}

static PyObject *DataPath_udp_read(DataPath *self, PyObject *args)
{
    int max_reads = 256, rc;
    if (!PyArg_ParseTuple(args, "|i", &max_reads))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    rc = drain_udp(self, max_reads, monotonic_now());
    Py_END_ALLOW_THREADS
    return finish(self, rc < 0, self->npunts, 1, 0);
}

/* the socket, then TUN: what the kernel answered at once (an ICMP echo reply, TCP ACKs) goes out
   in the same call, without a round through Python (the round trip of a ping) */
static PyObject *DataPath_udp_tun_read(DataPath *self, PyObject *args)
{
    int max_reads = 256, rc;
    size_t nudp = 0;
    if (!PyArg_ParseTuple(args, "|i", &max_reads))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    double now = monotonic_now();
    rc = drain_udp(self, max_reads, now);
    nudp = self->npunts;
    if (!rc && !self->fatal_errno)
        rc = drain_tun(self, max_reads, now);
    Py_END_ALLOW_THREADS
    return finish(self, rc < 0, nudp, 1, 1);
}

static int ensure_peer(DataPath *self, int slot)
{
    if (slot < 0 || slot > 1 << 20) {
        PyErr_SetString(PyExc_ValueError, "peer slot out of range");
        return -1;
    }
    if (slot >= self->npeers) {
        int n = self->npeers ? self->npeers : 8;
        while (n <= slot)
            n *= 2;
        Peer *p = PyMem_Realloc(self->peers, n * sizeof(Peer));
        if (!p) {
            PyErr_NoMemory();
            return -1;
        }
        int *d = PyMem_Realloc(self->dirty_slots, n * sizeof(int));
        if (!d) {
            self->peers = p;
            PyErr_NoMemory();
            return -1;
        }
        memset(p + self->npeers, 0, (n - self->npeers) * sizeof(Peer));
        self->peers = p;
        self->dirty_slots = d;
        self->npeers = n;
    }
    return 0;
}

/* set_peer(slot, endpoint tuple or None, pktinfo item or None, send_index or -1, fast_send[, max_inner]) */
static PyObject *DataPath_set_peer(DataPath *self, PyObject *args)
{
    int slot, fast;
    long long send_index;
    Py_ssize_t max_inner = 65535;
    PyObject *ep, *src;
    if (!PyArg_ParseTuple(args, "iOOLp|n", &slot, &ep, &src, &send_index, &fast, &max_inner))
        return NULL;
    if (max_inner < 0) {
        PyErr_SetString(PyExc_ValueError, "max_inner < 0");
        return NULL;
    }
    if (ensure_peer(self, slot) < 0)
        return NULL;
    Peer *p = &self->peers[slot];
    p->active = 1;
    p->has_endpoint = ep != Py_None && tuple_to_sockaddr(ep, self->family, &p->ep, &p->eplen);
    p->has_src = src != Py_None && parse_local(src, &p->src_level, &p->src_type, p->src, &p->src_len);
    p->send_kp = NULL;
    if (send_index >= 0) {
        Keypair *kp = kp_find(self, (uint32_t)send_index);
        if (kp && kp->slot == slot)
            p->send_kp = kp;
    }
    p->fast_send = fast && p->has_endpoint; /* an endpoint this module cannot parse: Python sends */
    p->max_inner = (size_t)max_inner;
    return PyBool_FromLong(p->has_endpoint);
}

static PyObject *DataPath_remove_peer(DataPath *self, PyObject *args)
{
    int slot;
    if (!PyArg_ParseTuple(args, "i", &slot))
        return NULL;
    if (slot >= 0 && slot < self->npeers) {
        Peer *p = &self->peers[slot];
        p->active = 0;
        p->fast_send = 0;
        p->send_kp = NULL;
        p->has_endpoint = 0;
        p->has_src = 0;
    }
    Py_RETURN_NONE;
}

static EVP_CIPHER_CTX *make_ctx(const uint8_t *key, int enc)
{
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (!ctx)
        return NULL;
    if (EVP_CipherInit_ex(ctx, EVP_chacha20_poly1305(), NULL, key, NULL, enc) != 1) {
        EVP_CIPHER_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

/* add_keypair(local_index, slot, send_key, receive_key, remote_index, send_counter, send_limit,
 *             recv_limit, expires, can_send, replay_last, replay_ring) */
static PyObject *DataPath_add_keypair(DataPath *self, PyObject *args)
{
    unsigned int local_index, remote_index;
    int slot, can_send;
    Py_buffer sk, rk, ring;
    unsigned long long counter, send_limit, recv_limit, last;
    double expires;
    if (!PyArg_ParseTuple(args, "Iiy*y*IKKKdpKy*", &local_index, &slot, &sk, &rk, &remote_index, &counter,
                          &send_limit, &recv_limit, &expires, &can_send, &last, &ring))
        return NULL;
    PyObject *result = NULL;
    Keypair *kp = NULL;
    if (sk.len != 32 || rk.len != 32 || ring.len != RING) {
        PyErr_SetString(PyExc_ValueError, "keys are 32 bytes and the replay ring 8192");
        goto done;
    }
    if (ensure_peer(self, slot) < 0)
        goto done;
    if (kp_find(self, local_index)) {
        PyErr_SetString(PyExc_ValueError, "a keypair with this index is held already");
        goto done;
    }
    kp = PyMem_Calloc(1, sizeof(Keypair));
    if (!kp) {
        PyErr_NoMemory();
        goto done;
    }
    kp->local_index = local_index;
    kp->slot = slot;
    kp->remote_index = remote_index;
    kp->send_counter = counter;
    kp->send_limit = send_limit;
    kp->recv_limit = recv_limit;
    kp->expires = expires;
    kp->can_send = can_send;
    kp->replay_last = last;
    memcpy(kp->ring, ring.buf, RING);
    kp->enc = make_ctx(sk.buf, 1);
    kp->dec = make_ctx(rk.buf, 0);
    if (!kp->enc || !kp->dec) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL refused ChaCha20-Poly1305");
        kp_free(kp);
        goto done;
    }
    if (kp_insert(self, kp) < 0) {
        kp_free(kp);
        PyErr_NoMemory();
        goto done;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&sk);
    PyBuffer_Release(&rk);
    PyBuffer_Release(&ring);
    return result;
}

/* remove_keypair(local_index) -> (send_counter, replay_last, replay_ring) or None */
static PyObject *DataPath_remove_keypair(DataPath *self, PyObject *args)
{
    unsigned int index;
    if (!PyArg_ParseTuple(args, "I", &index))
        return NULL;
    Keypair *kp = kp_remove(self, index);
    if (!kp)
        Py_RETURN_NONE;
    for (int i = 0; i < self->npeers; i++)
        if (self->peers[i].send_kp == kp)
            self->peers[i].send_kp = NULL;
    PyObject *r = Py_BuildValue("(KKy#)", (unsigned long long)kp->send_counter, (unsigned long long)kp->replay_last,
                                (const char *)kp->ring, (Py_ssize_t)RING);
    kp_free(kp);
    return r;
}

static PyObject *DataPath_set_send_counter(DataPath *self, PyObject *args)
{
    unsigned int index;
    unsigned long long counter;
    if (!PyArg_ParseTuple(args, "IK", &index, &counter))
        return NULL;
    Keypair *kp = kp_find(self, index);
    if (kp)
        kp->send_counter = counter;
    return PyBool_FromLong(kp != NULL);
}

static PyObject *DataPath_send_counter(DataPath *self, PyObject *args)
{
    unsigned int index;
    if (!PyArg_ParseTuple(args, "I", &index))
        return NULL;
    Keypair *kp = kp_find(self, index);
    if (!kp)
        Py_RETURN_NONE;
    return PyLong_FromUnsignedLongLong(kp->send_counter);
}

/* set_routes([(address bytes, cidr, slot), ...]) replaces the allowed-IPs table */
static PyObject *DataPath_set_routes(DataPath *self, PyObject *arg)
{
    PyObject *seq = PySequence_Fast(arg, "routes must be a sequence");
    if (!seq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    RouteTable t4 = {.width = 4}, t6 = {.width = 16};
    Py_ssize_t counts[2][129] = {{0}};
    Route *tmp = PyMem_Calloc(n ? n : 1, sizeof(Route));
    int *cidrs = PyMem_Calloc(n ? n : 1, sizeof(int));
    if (!tmp || !cidrs) {
        PyMem_Free(tmp);
        PyMem_Free(cidrs);
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_buffer addr;
        int cidr, slot;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "y*ii", &addr, &cidr, &slot))
            goto fail;
        int width = (int)addr.len;
        if ((width != 4 && width != 16) || cidr < 0 || cidr > width * 8 || slot < 0) {
            PyBuffer_Release(&addr);
            PyErr_SetString(PyExc_ValueError, "a route is (4 or 16 address bytes, prefix length, slot >= 0)");
            goto fail;
        }
        mask_addr(tmp[i].addr, addr.buf, width, cidr);
        PyBuffer_Release(&addr);
        tmp[i].slot = slot;
        cidrs[i] = width == 4 ? cidr : cidr + 1000;
        counts[width == 16][cidr]++;
    }
    for (int fam = 0; fam < 2; fam++) {
        RouteTable *t = fam ? &t6 : &t4;
        for (int c = fam ? 128 : 32; c >= 0; c--) {
            if (!counts[fam][c])
                continue;
            RouteLen *rl = &t->lens[t->nlens++];
            rl->cidr = c;
            rl->v = PyMem_Calloc(counts[fam][c], sizeof(Route));
            if (!rl->v) {
                PyErr_NoMemory();
                routes_clear(&t4);
                routes_clear(&t6);
                goto fail;
            }
            for (Py_ssize_t i = 0; i < n; i++)
                if (cidrs[i] == (fam ? c + 1000 : c))
                    rl->v[rl->n++] = tmp[i];
            qsort(rl->v, rl->n, sizeof(Route), route_cmp);
        }
    }
    routes_clear(&self->r4);
    routes_clear(&self->r6);
    self->r4 = t4;
    self->r6 = t6;
    PyMem_Free(tmp);
    PyMem_Free(cidrs);
    Py_DECREF(seq);
    Py_RETURN_NONE;
fail:
    PyMem_Free(tmp);
    PyMem_Free(cidrs);
    Py_DECREF(seq);
    return NULL;
}

static PyObject *DataPath_set_socket(DataPath *self, PyObject *args)
{
    int fd, family;
    if (!PyArg_ParseTuple(args, "ii", &fd, &family))
        return NULL;
    if (family != AF_INET && family != AF_INET6) {
        PyErr_SetString(PyExc_ValueError, "family must be AF_INET or AF_INET6");
        return NULL;
    }
    self->sock_fd = fd;
    if (family != self->family) {
        for (int i = 0; i < self->npeers; i++) {
            self->peers[i].has_endpoint = 0;
            self->peers[i].fast_send = 0;
        }
    }
    self->family = family;
    Py_RETURN_NONE;
}

static int add_counts(PyObject *d, const char *prefix, const uint64_t *arr)
{
    for (int e = 0; e < N_ERRNO; e++) {
        if (!arr[e])
            continue;
        const char *name = NULL;
        char buf[64];
        /* the names io/udp.py errno_name gives, from Python's errno.errorcode */
        PyObject *mod = PyImport_ImportModule("errno");
        if (!mod)
            return -1;
        PyObject *codes = PyObject_GetAttrString(mod, "errorcode");
        Py_DECREF(mod);
        if (!codes)
            return -1;
        PyObject *key = PyLong_FromLong(e);
        PyObject *nm = key ? PyDict_GetItemWithError(codes, key) : NULL;
        Py_XDECREF(key);
        if (nm && PyUnicode_Check(nm))
            name = PyUnicode_AsUTF8(nm);
        if (name)
            snprintf(buf, sizeof(buf), "%s%s", prefix, name);
        else
            snprintf(buf, sizeof(buf), "%s%d", prefix, e);
        Py_DECREF(codes);
        PyObject *v = PyLong_FromUnsignedLongLong(arr[e]);
        if (!v || PyDict_SetItemString(d, buf, v) < 0) {
            Py_XDECREF(v);
            return -1;
        }
        Py_DECREF(v);
    }
    return 0;
}

/* take_drops() -> (device drops, other drops): counts since the last call, by reason */
static PyObject *DataPath_take_drops(DataPath *self, PyObject *unused)
{
    (void)unused;
    PyObject *dev = PyDict_New(), *other = PyDict_New();
    if (!dev || !other)
        goto fail;
    for (int i = 0; i < D_N_DEVICE; i++) {
        if (!self->device_drops[i])
            continue;
        PyObject *v = PyLong_FromUnsignedLongLong(self->device_drops[i]);
        if (!v || PyDict_SetItemString(dev, device_drop_names[i], v) < 0) {
            Py_XDECREF(v);
            goto fail;
        }
        Py_DECREF(v);
    }
    if (add_counts(other, "send-", self->send_errno) < 0 || add_counts(other, "tun-write-", self->tun_write_errno) < 0
        || add_counts(other, "socket-", self->socket_errno) < 0)
        goto fail;
    if (self->send_would_block) {
        PyObject *v = PyLong_FromUnsignedLongLong(self->send_would_block);
        if (!v || PyDict_SetItemString(other, "send-would-block", v) < 0) {
            Py_XDECREF(v);
            goto fail;
        }
        Py_DECREF(v);
    }
    PyObject *r = Py_BuildValue("(NNK)", dev, other, (unsigned long long)self->tun_drops);
    memset(self->device_drops, 0, sizeof(self->device_drops));
    memset(self->send_errno, 0, sizeof(self->send_errno));
    memset(self->tun_write_errno, 0, sizeof(self->tun_write_errno));
    memset(self->socket_errno, 0, sizeof(self->socket_errno));
    self->send_would_block = self->tun_drops = 0;
    return r;
fail:
    Py_XDECREF(dev);
    Py_XDECREF(other);
    return NULL;
}

static PyObject *DataPath_gso(DataPath *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->gso);
}

static int DataPath_init(DataPath *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"tun_fd", "sock_fd", "family", "vnet_hdr", "mtu", NULL};
    int tun_fd, sock_fd, family, vnet, mtu = 1420;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iiip|i", kwlist, &tun_fd, &sock_fd, &family, &vnet, &mtu))
        return -1;
    if (family != AF_INET && family != AF_INET6) {
        PyErr_SetString(PyExc_ValueError, "family must be AF_INET or AF_INET6");
        return -1;
    }
    if (mtu < 576 || mtu > 65535) {
        PyErr_SetString(PyExc_ValueError, "mtu out of range");
        return -1;
    }
    if (self->tunbuf) {
        PyErr_SetString(PyExc_RuntimeError, "DataPath is initialized once");
        return -1;
    }
    self->tun_fd = tun_fd;
    self->sock_fd = sock_fd;
    self->family = family;
    self->vnet_hdr = vnet;
    self->mtu = mtu;
    self->gso = 1;
    self->r4.width = 4;
    self->r6.width = 16;
    self->tunbuf = PyMem_RawMalloc(TUN_BUF + 64);
    self->udpbuf = PyMem_RawMalloc(UDP_ARENA + UDP_BUF + 64);
    self->out = PyMem_RawMalloc(MAX_OUT * sizeof(Pkt));
    self->segs = PyMem_RawMalloc(MAX_OUT * sizeof(Seg));
    self->sendbuf = PyMem_RawMalloc(SEND_BUF);
    self->scratch = PyMem_RawMalloc(TUN_BUF + 64);
    self->arena_cap = 1 << 16;
    self->arena = PyMem_RawMalloc(self->arena_cap);
    self->punts_cap = 64;
    self->punts = PyMem_RawMalloc(self->punts_cap * sizeof(Punt));
    if (!self->out || !self->segs || !self->tunbuf || !self->udpbuf || !self->sendbuf || !self->scratch || !self->arena || !self->punts) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static void DataPath_dealloc(DataPath *self)
{
    for (size_t i = 0; i < self->table_cap; i++)
        kp_free(self->table[i]);
    PyMem_Free(self->table);
    PyMem_Free(self->peers);
    PyMem_Free(self->dirty_slots);
    routes_clear(&self->r4);
    routes_clear(&self->r6);
    PyMem_RawFree(self->tunbuf);
    PyMem_RawFree(self->udpbuf);
    PyMem_RawFree(self->out);
    PyMem_RawFree(self->segs);
    if (self->sendbuf)
        OPENSSL_cleanse(self->sendbuf, SEND_BUF);
    PyMem_RawFree(self->sendbuf);
    PyMem_RawFree(self->scratch);
    PyMem_RawFree(self->arena);
    PyMem_RawFree(self->punts);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef DataPath_methods[] = {
    {"tun_read", (PyCFunction)DataPath_tun_read, METH_VARARGS,
     "tun_read(max_reads=256) -> (packets for Python, peer events, drops changed)"},
    {"udp_tun_read", (PyCFunction)DataPath_udp_tun_read, METH_VARARGS,
     "udp_tun_read(max_reads=256) -> (datagrams for Python, packets for Python, peer events, drops changed)"},
    {"udp_read", (PyCFunction)DataPath_udp_read, METH_VARARGS,
     "udp_read(max_reads=256) -> ([(datagram, address, pktinfo)] for Python, peer events, drops changed)"},
    {"set_peer", (PyCFunction)DataPath_set_peer, METH_VARARGS,
     "set_peer(slot, endpoint, pktinfo, send_index, fast_send[, max_inner]) -> whether the endpoint parsed"},
    {"remove_peer", (PyCFunction)DataPath_remove_peer, METH_VARARGS, "remove_peer(slot)"},
    {"add_keypair", (PyCFunction)DataPath_add_keypair, METH_VARARGS,
     "add_keypair(local_index, slot, send_key, receive_key, remote_index, send_counter, send_limit, "
     "receive_limit, expires, can_send, replay_last, replay_ring)"},
    {"remove_keypair", (PyCFunction)DataPath_remove_keypair, METH_VARARGS,
     "remove_keypair(local_index) -> (send_counter, replay_last, replay_ring) or None"},
    {"set_send_counter", (PyCFunction)DataPath_set_send_counter, METH_VARARGS, "set_send_counter(local_index, n)"},
    {"send_counter", (PyCFunction)DataPath_send_counter, METH_VARARGS, "send_counter(local_index) -> int or None"},
    {"set_routes", (PyCFunction)DataPath_set_routes, METH_O, "set_routes([(address, cidr, slot), ...])"},
    {"set_socket", (PyCFunction)DataPath_set_socket, METH_VARARGS, "set_socket(fd, family)"},
    {"take_drops", (PyCFunction)DataPath_take_drops, METH_NOARGS,
     "take_drops() -> (device drops, other drops, TUN write drops) since the last call"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef DataPath_getset[] = {
    {"gso", (getter)DataPath_gso, NULL, "False once the path refused UDP GSO", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject DataPathType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "wgdisco.io._fastpath.DataPath",
    .tp_basicsize = sizeof(DataPath),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The compiled bulk-transport data path (see the module's source for the theory).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)DataPath_init,
    .tp_dealloc = (destructor)DataPath_dealloc,
    .tp_methods = DataPath_methods,
    .tp_getset = DataPath_getset,
};

static struct PyModuleDef fastpath_module = {
    PyModuleDef_HEAD_INIT, "wgdisco.io._fastpath", "The compiled bulk-transport data path (issue 18).", -1, NULL,
};

PyMODINIT_FUNC PyInit__fastpath(void)
{
    if (PyType_Ready(&DataPathType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&fastpath_module);
    if (!m)
        return NULL;
    Py_INCREF(&DataPathType);
    if (PyModule_AddObject(m, "DataPath", (PyObject *)&DataPathType) < 0) {
        Py_DECREF(&DataPathType);
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddIntConstant(m, "REPLAY_RING", RING);
    PyModule_AddStringConstant(m, "CRYPTO", OpenSSL_version(OPENSSL_VERSION));
    return m;
}
