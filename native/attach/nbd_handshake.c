/*
 * nbd_handshake.c — connect, then NBD fixed-newstyle negotiation with
 * NBD_OPT_GO (nbd-proto.md, "Fixed newstyle negotiation"). Every byte the
 * server sends is checked by nbd_parse.c before it is used; a reply payload
 * longer than NBDP_MAX_REPLY_PAYLOAD is refused before it is read. A signal
 * (EINTR) ends a handshake: the attacher handles only SIGTERM and SIGINT,
 * without SA_RESTART, and both mean stop.
 */
#include "nbd_handshake.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

int nbd_endpoint_parse(const char *s, struct nbd_endpoint *ep) {
  memset(ep, 0, sizeof *ep);
  if (strlen(s) >= sizeof ep->text) return -1;
  strcpy(ep->text, s);
  char host[64];
  const char *port;
  if (s[0] == '[') {
    const char *close = strchr(s, ']');
    if (!close || close[1] != ':' || (size_t)(close - s - 1) >= sizeof host) return -1;
    memcpy(host, s + 1, (size_t)(close - s - 1));
    host[close - s - 1] = 0;
    port = close + 2;
  } else {
    const char *colon = strrchr(s, ':');
    if (!colon || (size_t)(colon - s) >= sizeof host || strchr(s, ':') != colon) return -1;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = 0;
    port = colon + 1;
  }
  char *end;
  errno = 0;
  long p = strtol(port, &end, 10);
  if (errno || *port == 0 || *end != 0 || p < 1 || p > 65535) return -1;
  struct sockaddr_in *v4 = (struct sockaddr_in *)&ep->addr;
  struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ep->addr;
  if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons((uint16_t)p);
    ep->addr_len = sizeof *v4;
  } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons((uint16_t)p);
    ep->addr_len = sizeof *v6;
  } else {
    return -1;
  }
  return 0;
}

static int fail(char *err, size_t len, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, len, fmt, ap);
  va_end(ap);
  return -1;
}

static int read_full(int fd, void *buf, size_t n) {
  uint8_t *p = buf;
  while (n) {
    ssize_t r = read(fd, p, n);
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return -ETIMEDOUT; /* SO_RCVTIMEO */
    if (r < 0) return -errno; /* EINTR too: our only handled signals mean stop */
    if (r == 0) return -ECONNRESET;
    p += r;
    n -= (size_t)r;
  }
  return 0;
}

static int write_full(int fd, const void *buf, size_t n) {
  const uint8_t *p = buf;
  while (n) {
    ssize_t r = send(fd, p, n, MSG_NOSIGNAL);
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return -ETIMEDOUT; /* SO_SNDTIMEO */
    if (r < 0) return -errno;
    p += r;
    n -= (size_t)r;
  }
  return 0;
}

static int set_timeouts(int fd, int seconds) {
  struct timeval tv = {seconds, 0};
  if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0) return -errno;
  if (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) < 0) return -errno;
  return 0;
}

static int connect_within(int fd, const struct nbd_endpoint *ep, int seconds) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return -errno;
  if (connect(fd, (const struct sockaddr *)&ep->addr, ep->addr_len) < 0) {
    if (errno != EINPROGRESS) return -errno;
    struct pollfd p = {fd, POLLOUT, 0};
    int r = poll(&p, 1, seconds * 1000);
    if (r < 0) return -errno;
    if (r == 0) return -ETIMEDOUT;
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0) return -errno;
    if (soerr) return -soerr;
  }
  if (fcntl(fd, F_SETFL, fl) < 0) return -errno;
  return 0;
}

/* The text of an error reply, made printable. */
static void error_text(const uint8_t *p, size_t n, char *out, size_t cap) {
  size_t j = 0;
  for (size_t i = 0; i < n && j + 1 < cap; i++) out[j++] = (p[i] >= 0x20 && p[i] < 0x7f) ? (char)p[i] : '?';
  out[j] = 0;
}

static int negotiate(int fd, const char *name, struct nbdp_export *ex, uint32_t *block_size, char *err, size_t err_len) {
  uint8_t greet[NBDP_GREETING_LEN];
  int r;
  if ((r = read_full(fd, greet, sizeof greet))) return fail(err, err_len, "reading the greeting: %s", strerror(-r));
  uint16_t hs;
  if ((r = nbdp_parse_greeting(greet, sizeof greet, &hs))) return fail(err, err_len, "greeting: %s", nbdp_strerror(r));
  uint8_t cflags[4];
  nbdp_put_be32(cflags, NBD_CL_FLAG_FIXED_NEWSTYLE | ((hs & NBD_HS_FLAG_NO_ZEROES) ? NBD_CL_FLAG_NO_ZEROES : 0));
  if ((r = write_full(fd, cflags, sizeof cflags))) return fail(err, err_len, "sending client flags: %s", strerror(-r));
  static uint8_t req[16 + 4 + 4096 + 6];
  long n = nbdp_build_opt_go(req, sizeof req, name, strlen(name));
  if (n < 0) return fail(err, err_len, "export name longer than 4096 bytes");
  if ((r = write_full(fd, req, (size_t)n))) return fail(err, err_len, "sending NBD_OPT_GO: %s", strerror(-r));
  memset(ex, 0, sizeof *ex);
  static uint8_t payload[NBDP_MAX_REPLY_PAYLOAD];
  for (int replies = 0;; replies++) {
    if (replies > 64) return fail(err, err_len, "more than 64 replies to NBD_OPT_GO");
    uint8_t hdr[NBDP_OPT_REPLY_HDR_LEN];
    if ((r = read_full(fd, hdr, sizeof hdr))) return fail(err, err_len, "reading an option reply: %s", strerror(-r));
    struct nbdp_opt_reply rep;
    if ((r = nbdp_parse_opt_reply_header(hdr, sizeof hdr, NBD_OPT_GO_, &rep))) return fail(err, err_len, "option reply: %s", nbdp_strerror(r));
    if (rep.length && (r = read_full(fd, payload, rep.length))) return fail(err, err_len, "reading an option reply payload: %s", strerror(-r));
    if (rep.type == NBD_REP_ACK_) break;
    if (rep.type == NBD_REP_INFO_) {
      if ((r = nbdp_parse_info(payload, rep.length, ex))) return fail(err, err_len, "NBD_REP_INFO: %s", nbdp_strerror(r));
      continue;
    }
    if (rep.type & NBD_REP_FLAG_ERROR_) {
      char text[160];
      error_text(payload, rep.length, text, sizeof text);
      return fail(err, err_len, "server refused export \"%s\" (error 0x%x%s%s)", name, rep.type, text[0] ? ": " : "", text);
    }
    return fail(err, err_len, "unexpected reply type 0x%x to NBD_OPT_GO", rep.type);
  }
  if ((r = nbdp_finish_export(ex, block_size))) return fail(err, err_len, "export \"%s\": %s (size %llu, flags 0x%x)", name, nbdp_strerror(r), (unsigned long long)ex->size, ex->flags);
  return 0;
}

int nbd_dial(const struct nbd_endpoint *ep, const char *export_name, int io_timeout_s, struct nbdp_export *ex,
             uint32_t *block_size, char *err, size_t err_len) {
  int fd = socket(ep->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return fail(err, err_len, "socket: %s", strerror(errno));
  int r = connect_within(fd, ep, io_timeout_s);
  if (r) {
    close(fd);
    return fail(err, err_len, "connect %s: %s", ep->text, strerror(-r));
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
  if ((r = set_timeouts(fd, io_timeout_s)) || negotiate(fd, export_name, ex, block_size, err, err_len) || (r = set_timeouts(fd, 0))) {
    if (r) snprintf(err, err_len, "socket options: %s", strerror(-r));
    close(fd);
    return -1;
  }
  return fd;
}
