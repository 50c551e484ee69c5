#ifndef FIELDGATE_SOCKET_BATCH_H
#define FIELDGATE_SOCKET_BATCH_H
#include <stddef.h>
#include <sys/socket.h>

/* The most datagrams one call takes. */
#define FG_RECV_BATCH_MAX 64

/* Receives up to `count` (<= FG_RECV_BATCH_MAX) queued datagrams with one recvmmsg(2), without waiting.
 * Datagram k lands in storage + k * slot_bytes; lengths[k] is its received length, truncated[k] is 1 when it did
 * not fit its slot, addresses[k] its sender. With SO_RXQ_OVFL on, *dropped becomes the socket's count of datagrams
 * the kernel dropped for want of buffer (the largest seen; left alone when no datagram carried it).
 * Returns how many were received (0 when none), or -1 with errno. */
int fg_recv_batch(int fd, unsigned char *storage, size_t slot_bytes, unsigned count,
                  struct sockaddr_storage *addresses, unsigned *lengths, unsigned char *truncated,
                  unsigned *dropped);

/* Turns on SO_RXQ_OVFL (the kernel's drop count travels with each datagram). 0 on success. */
int fg_enable_drop_count(int fd);
#endif
