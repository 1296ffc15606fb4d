/*
 * nbd_handshake.h — a TCP connection to an NBD server taken through the
 * fixed-newstyle handshake (NBD_OPT_GO) up to the transmission phase, ready to
 * be handed to the kernel.
 */
#ifndef XDEVICE_NBD_HANDSHAKE_H
#define XDEVICE_NBD_HANDSHAKE_H

#include <netinet/in.h>
#include <stddef.h>
#include <sys/socket.h>

#include "nbd_parse.h"

struct nbd_endpoint {
  char text[80]; /* as given, for logs */
  struct sockaddr_storage addr;
  socklen_t addr_len;
};

/* Parses HOST:PORT with a numeric IPv4 host, or [IPv6]:PORT. 0 or -1. */
int nbd_endpoint_parse(const char *s, struct nbd_endpoint *ep);

/* Connects (within io_timeout_s) and negotiates `export_name`. On success
 * returns the socket (blocking, no socket timeouts left on it) and fills
 * *ex and *block_size; on failure returns -1 with a reason in err. */
int nbd_dial(const struct nbd_endpoint *ep, const char *export_name, int io_timeout_s, struct nbdp_export *ex,
             uint32_t *block_size, char *err, size_t err_len);

#endif
