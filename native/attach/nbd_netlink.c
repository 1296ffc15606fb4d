/*
 * nbd_netlink.c — generic-netlink requests to the kernel's nbd family.
 * A request is sent with NLM_F_ACK; we read until the NLMSG_ERROR that answers
 * our sequence number (0 = done), keeping any NBD_ATTR_INDEX the kernel sends
 * with it. Multicast notifications arrive on a separate socket (ev_fd) so
 * they never interleave with replies.
 */
#include "nbd_netlink.h"
#include "nbd_netlink_defs.h"
#include "nbd_parse.h"

#include <errno.h>
#include <linux/genetlink.h>
#include <linux/netlink.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef SOL_NETLINK
#define SOL_NETLINK 270
#endif

struct msg {
  uint8_t b[4096] __attribute__((aligned(4)));
  size_t n;
  int overflow;
};

static void put(struct msg *m, const void *p, size_t n) {
  size_t padded = (n + 3) & ~(size_t)3;
  if (m->n + padded > sizeof m->b) {
    m->overflow = 1;
    return;
  }
  memcpy(m->b + m->n, p, n);
  memset(m->b + m->n + n, 0, padded - n);
  m->n += padded;
}

static size_t nest_begin(struct msg *m, uint16_t type) {
  size_t at = m->n;
  struct nlattr a = {0, (uint16_t)(type | NLA_F_NESTED)};
  put(m, &a, sizeof a);
  return at;
}

static void nest_end(struct msg *m, size_t at) {
  if (m->overflow) return;
  uint16_t len = (uint16_t)(m->n - at);
  memcpy(m->b + at, &len, 2);
}

static void put_attr(struct msg *m, uint16_t type, const void *p, uint16_t n) {
  struct nlattr a = {(uint16_t)(NLA_HDRLEN + n), type};
  if (m->n + NLA_ALIGN(NLA_HDRLEN + n) > sizeof m->b) {
    m->overflow = 1;
    return;
  }
  memcpy(m->b + m->n, &a, sizeof a);
  m->n += NLA_HDRLEN;
  put(m, p, n);
}

static void put_u32(struct msg *m, uint16_t type, uint32_t v) { put_attr(m, type, &v, 4); }
static void put_u64(struct msg *m, uint16_t type, uint64_t v) { put_attr(m, type, &v, 8); }

static void msg_init(struct msg *m, struct nbd_nl *nl, uint16_t family, uint8_t cmd, uint8_t version) {
  memset(m, 0, sizeof *m);
  struct nlmsghdr h = {0, family, NLM_F_REQUEST | NLM_F_ACK, ++nl->seq, 0};
  put(m, &h, sizeof h);
  struct genlmsghdr g = {cmd, version, 0};
  put(m, &g, sizeof g);
}

/* Sends m and reads until the ACK/error for its sequence number. `on_reply`
 * (may be NULL) sees each non-error reply message. */
static int transact(struct nbd_nl *nl, struct msg *m, int (*on_reply)(const struct nlp_msg *, void *), void *ctx) {
  if (m->overflow) return -EMSGSIZE;
  uint32_t len = (uint32_t)m->n;
  memcpy(m->b, &len, 4);
  uint32_t seq = nl->seq;
  struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
  if (sendto(nl->fd, m->b, m->n, 0, (struct sockaddr *)&kernel, sizeof kernel) < 0) return -errno;
  static uint8_t buf[32768] __attribute__((aligned(4)));
  for (;;) {
    ssize_t got = recv(nl->fd, buf, sizeof buf, 0);
    if (got < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    size_t off = 0;
    const uint8_t *raw;
    size_t raw_len;
    int r;
    while ((r = nlp_next_msg(buf, (size_t)got, &off, &raw, &raw_len)) == 1) {
      struct nlp_msg pm;
      if (nlp_parse_msg(raw, raw_len, &pm) || pm.seq != seq) continue;
      int err;
      if (nlp_parse_error(&pm, &err) == 0) return err;
      if (pm.type == NLMSG_ERROR) return -EPROTO;
      if (on_reply) {
        int cr = on_reply(&pm, ctx);
        if (cr) return cr;
      }
    }
    if (r < 0) return -EPROTO;
  }
}

struct family_ctx {
  uint16_t family;
  uint32_t group;
  int found;
};

static int on_family(const struct nlp_msg *m, void *p) {
  struct family_ctx *c = p;
  if (nlp_parse_family(m, &c->family, NBD_GENL_MCAST_GROUP_NAME, &c->group) == 0) c->found = 1;
  return 0;
}

int nbd_nl_open(struct nbd_nl *nl) {
  memset(nl, 0, sizeof *nl);
  nl->ev_fd = -1;
  nl->fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_GENERIC);
  if (nl->fd < 0) return -errno;
  struct sockaddr_nl me = {.nl_family = AF_NETLINK};
  if (bind(nl->fd, (struct sockaddr *)&me, sizeof me) < 0) {
    int e = -errno;
    nbd_nl_close(nl);
    return e;
  }
  struct msg m;
  msg_init(&m, nl, GENL_ID_CTRL, CTRL_CMD_GETFAMILY, 1);
  put_attr(&m, CTRL_ATTR_FAMILY_NAME, NBD_GENL_FAMILY_NAME, sizeof NBD_GENL_FAMILY_NAME);
  struct family_ctx c = {0};
  int r = transact(nl, &m, on_family, &c);
  if (r == 0 && !c.found) r = -ENOENT;
  if (r) {
    nbd_nl_close(nl);
    return r;
  }
  nl->family = c.family;
  nl->mcgrp = c.group;
  return 0;
}

int nbd_nl_subscribe(struct nbd_nl *nl) {
  if (nl->mcgrp == 0) return -ENOENT;
  nl->ev_fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, NETLINK_GENERIC);
  if (nl->ev_fd < 0) return -errno;
  struct sockaddr_nl me = {.nl_family = AF_NETLINK};
  int grp = (int)nl->mcgrp;
  if (bind(nl->ev_fd, (struct sockaddr *)&me, sizeof me) < 0 ||
      setsockopt(nl->ev_fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &grp, sizeof grp) < 0) {
    int e = -errno;
    close(nl->ev_fd);
    nl->ev_fd = -1;
    return e;
  }
  return 0;
}

void nbd_nl_close(struct nbd_nl *nl) {
  if (nl->fd >= 0) close(nl->fd);
  if (nl->ev_fd >= 0) close(nl->ev_fd);
  nl->fd = nl->ev_fd = -1;
}

static void put_config(struct msg *m, const struct nbd_nl_config *c) {
  put_u32(m, NBD_ATTR_INDEX, c->index);
  if (c->size_bytes) put_u64(m, NBD_ATTR_SIZE_BYTES, c->size_bytes);
  if (c->block_size) put_u64(m, NBD_ATTR_BLOCK_SIZE_BYTES, c->block_size);
  if (c->server_flags) put_u64(m, NBD_ATTR_SERVER_FLAGS, c->server_flags);
  if (c->timeout_s) put_u64(m, NBD_ATTR_TIMEOUT, c->timeout_s);
  if (c->dead_conn_timeout_s) put_u64(m, NBD_ATTR_DEAD_CONN_TIMEOUT, c->dead_conn_timeout_s);
  if (c->nfds > 0) {
    size_t socks = nest_begin(m, NBD_ATTR_SOCKETS);
    for (int i = 0; i < c->nfds; i++) {
      size_t item = nest_begin(m, NBD_SOCK_ITEM);
      put_u32(m, NBD_SOCK_FD, (uint32_t)c->fds[i]);
      nest_end(m, item);
    }
    nest_end(m, socks);
  }
}

struct index_ctx {
  struct nbd_nl *nl;
  uint32_t index;
  int have;
};

static int on_connect(const struct nlp_msg *m, void *p) {
  struct index_ctx *c = p;
  if (nlp_parse_connect_reply(m, c->nl->family, &c->index) == 0) c->have = 1;
  return 0;
}

int nbd_nl_connect(struct nbd_nl *nl, const struct nbd_nl_config *c, uint32_t *index_out) {
  struct msg m;
  msg_init(&m, nl, nl->family, NBD_CMD_CONNECT, NBD_GENL_VERSION);
  put_config(&m, c);
  struct index_ctx ic = {nl, c->index, 0};
  int r = transact(nl, &m, on_connect, &ic);
  if (r == 0 && index_out) *index_out = ic.have ? ic.index : c->index;
  return r;
}

int nbd_nl_reconfigure(struct nbd_nl *nl, const struct nbd_nl_config *c) {
  struct msg m;
  msg_init(&m, nl, nl->family, NBD_CMD_RECONFIGURE, NBD_GENL_VERSION);
  put_config(&m, c);
  return transact(nl, &m, NULL, NULL);
}

int nbd_nl_disconnect(struct nbd_nl *nl, uint32_t index) {
  struct msg m;
  msg_init(&m, nl, nl->family, NBD_CMD_DISCONNECT, NBD_GENL_VERSION);
  put_u32(&m, NBD_ATTR_INDEX, index);
  return transact(nl, &m, NULL, NULL);
}

struct status_ctx {
  struct nbd_nl *nl;
  uint32_t index;
  int connected;
  int have;
};

static int on_status(const struct nlp_msg *m, void *p) {
  struct status_ctx *c = p;
  if (nlp_parse_status(m, c->nl->family, c->index, &c->connected) == 0) c->have = 1;
  return 0;
}

int nbd_nl_status(struct nbd_nl *nl, uint32_t index, int *connected) {
  struct msg m;
  msg_init(&m, nl, nl->family, NBD_CMD_STATUS, NBD_GENL_VERSION);
  put_u32(&m, NBD_ATTR_INDEX, index);
  struct status_ctx c = {nl, index, 0, 0};
  int r = transact(nl, &m, on_status, &c);
  if (r) return r;
  if (!c.have) return -ENODEV;
  *connected = c.connected;
  return 0;
}

int nbd_nl_drain_link_dead(struct nbd_nl *nl, uint32_t index) {
  static uint8_t buf[32768] __attribute__((aligned(4)));
  int count = 0;
  for (;;) {
    ssize_t got = recv(nl->ev_fd, buf, sizeof buf, MSG_DONTWAIT);
    if (got < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return count;
      /* ENOBUFS: the kernel dropped notifications; say one was there. */
      if (errno == ENOBUFS) {
        count++;
        continue;
      }
      return -errno;
    }
    size_t off = 0;
    const uint8_t *raw;
    size_t raw_len;
    while (nlp_next_msg(buf, (size_t)got, &off, &raw, &raw_len) == 1) {
      struct nlp_msg pm;
      uint32_t idx;
      if (nlp_parse_msg(raw, raw_len, &pm) == 0 && nlp_parse_link_dead(&pm, nl->family, &idx) == 0 && idx == index) count++;
    }
  }
}
