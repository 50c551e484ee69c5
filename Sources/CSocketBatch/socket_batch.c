#define _GNU_SOURCE
#include "socket_batch.h"
#include <errno.h>
#include <string.h>
#include <sys/uio.h>

/* Swift's Glibc module is built without _GNU_SOURCE and so lacks recvmmsg and struct mmsghdr. */
int fg_enable_drop_count(int fd) {
    int one = 1;
    return setsockopt(fd, SOL_SOCKET, SO_RXQ_OVFL, &one, sizeof one);
}

int fg_recv_batch(int fd, unsigned char *storage, size_t slot_bytes, unsigned count,
                  struct sockaddr_storage *addresses, unsigned *lengths, unsigned char *truncated,
                  unsigned *dropped) {
    struct mmsghdr headers[FG_RECV_BATCH_MAX];
    struct iovec vectors[FG_RECV_BATCH_MAX];
    /* Room for the one control message asked for (SO_RXQ_OVFL, a u32) per datagram. */
    union { char bytes[CMSG_SPACE(sizeof(unsigned))]; struct cmsghdr align; } control[FG_RECV_BATCH_MAX];
    if (count > FG_RECV_BATCH_MAX) count = FG_RECV_BATCH_MAX;
    memset(headers, 0, sizeof(struct mmsghdr) * count);
    for (unsigned k = 0; k < count; k++) {
        vectors[k].iov_base = storage + (size_t)k * slot_bytes;
        vectors[k].iov_len = slot_bytes;
        headers[k].msg_hdr.msg_name = &addresses[k];
        headers[k].msg_hdr.msg_namelen = sizeof(struct sockaddr_storage);
        headers[k].msg_hdr.msg_iov = &vectors[k];
        headers[k].msg_hdr.msg_iovlen = 1;
        headers[k].msg_hdr.msg_control = control[k].bytes;
        headers[k].msg_hdr.msg_controllen = sizeof control[k].bytes;
    }
    int n = recvmmsg(fd, headers, count, MSG_DONTWAIT, NULL);
    if (n < 0) return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
    for (int k = 0; k < n; k++) {
        lengths[k] = headers[k].msg_len;
        truncated[k] = (headers[k].msg_hdr.msg_flags & MSG_TRUNC) ? 1 : 0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&headers[k].msg_hdr); c; c = CMSG_NXTHDR(&headers[k].msg_hdr, c)) {
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_RXQ_OVFL) {
                unsigned v;
                memcpy(&v, CMSG_DATA(c), sizeof v);
                if (v > *dropped) *dropped = v;
            }
        }
    }
    return n;
}
