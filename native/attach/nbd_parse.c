/*
 * nbd_parse.c — the parsers declared in nbd_parse.h. No I/O and no
 * allocation: each function reads only inside the (buf, len) it is given.
 */
#include "nbd_parse.h"
#include "nbd_netlink_defs.h"

#include <linux/genetlink.h>
#include <linux/netlink.h>
#include <string.h>

const char *nbdp_strerror(int err) {
  switch (err) {
    case NBDP_OK: return "ok";
    case NBDP_ESHORT: return "truncated";
    case NBDP_EMAGIC: return "bad magic";
    case NBDP_ELENGTH: return "bad length";
    case NBDP_EPROTO: return "protocol violation";
    case NBDP_EVALUE: return "unusable value";
    case NBDP_ENOTFOUND: return "not found";
    default: return "unknown error";
  }
}

uint16_t nbdp_be16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
uint32_t nbdp_be32(const uint8_t *p) {
  return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
uint64_t nbdp_be64(const uint8_t *p) { return ((uint64_t)nbdp_be32(p) << 32) | nbdp_be32(p + 4); }
void nbdp_put_be16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
void nbdp_put_be32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}
void nbdp_put_be64(uint8_t *p, uint64_t v) { nbdp_put_be32(p, (uint32_t)(v >> 32)); nbdp_put_be32(p + 4, (uint32_t)v); }

static int is_pow2(uint32_t v) { return v != 0 && (v & (v - 1)) == 0; }

int nbdp_parse_greeting(const uint8_t *buf, size_t len, uint16_t *hs_flags) {
  if (len < NBDP_GREETING_LEN) return NBDP_ESHORT;
  if (len > NBDP_GREETING_LEN) return NBDP_ELENGTH;
  if (nbdp_be64(buf) != NBD_MAGIC_INIT) return NBDP_EMAGIC;
  /* An oldstyle server sends a different second magic: we speak newstyle only. */
  if (nbdp_be64(buf + 8) != NBD_MAGIC_IHAVEOPT) return NBDP_EMAGIC;
  uint16_t f = nbdp_be16(buf + 16);
  if (!(f & NBD_HS_FLAG_FIXED_NEWSTYLE)) return NBDP_EPROTO;
  *hs_flags = f;
  return NBDP_OK;
}

int nbdp_parse_opt_reply_header(const uint8_t *buf, size_t len, uint32_t expect_opt, struct nbdp_opt_reply *out) {
  if (len < NBDP_OPT_REPLY_HDR_LEN) return NBDP_ESHORT;
  if (len > NBDP_OPT_REPLY_HDR_LEN) return NBDP_ELENGTH;
  if (nbdp_be64(buf) != NBD_MAGIC_REPLY) return NBDP_EMAGIC;
  out->option = nbdp_be32(buf + 8);
  out->type = nbdp_be32(buf + 12);
  out->length = nbdp_be32(buf + 16);
  if (out->option != expect_opt) return NBDP_EPROTO;
  if (out->length > NBDP_MAX_REPLY_PAYLOAD) return NBDP_ELENGTH;
  /* An ACK carries no data. */
  if (out->type == NBD_REP_ACK_ && out->length != 0) return NBDP_ELENGTH;
  return NBDP_OK;
}

int nbdp_parse_info(const uint8_t *payload, size_t len, struct nbdp_export *ex) {
  if (len < 2) return NBDP_ESHORT;
  uint16_t type = nbdp_be16(payload);
  switch (type) {
    case NBD_INFO_EXPORT_:
      if (len != 12) return len < 12 ? NBDP_ESHORT : NBDP_ELENGTH;
      ex->size = nbdp_be64(payload + 2);
      ex->flags = nbdp_be16(payload + 10);
      ex->have_export = 1;
      return NBDP_OK;
    case NBD_INFO_BLOCK_SIZE_: {
      if (len != 14) return len < 14 ? NBDP_ESHORT : NBDP_ELENGTH;
      uint32_t mn = nbdp_be32(payload + 2), pr = nbdp_be32(payload + 6), mx = nbdp_be32(payload + 10);
      /* The spec: minimum a power of two <= 64 KiB, preferred a power of two
       * >= 512 and >= minimum, maximum a multiple of the minimum. */
      if (!is_pow2(mn) || mn > 65536 || !is_pow2(pr) || pr < mn) return NBDP_EVALUE;
      if (mx < mn || mx % mn != 0) return NBDP_EVALUE;
      ex->min_block = mn;
      ex->preferred_block = pr;
      ex->max_block = mx;
      ex->have_block_size = 1;
      return NBDP_OK;
    }
    case NBD_INFO_NAME_:
    case NBD_INFO_DESCRIPTION_:
      if (len > 2 + 4096) return NBDP_ELENGTH;
      return NBDP_OK;
    default:
      return NBDP_OK; /* the spec: a client ignores info types it did not ask for */
  }
}

int nbdp_finish_export(const struct nbdp_export *ex, uint32_t *kernel_block_size) {
  if (!ex->have_export) return NBDP_ENOTFOUND;
  if (!(ex->flags & NBD_TFLAG_HAS_FLAGS)) return NBDP_EPROTO;
  if (ex->size == 0 || ex->size % 512 != 0 || ex->size > (UINT64_C(1) << 62)) return NBDP_EVALUE;
  uint32_t bs = 4096, lowest = 512;
  if (ex->have_block_size) {
    if (ex->min_block > 4096) return NBDP_EVALUE; /* the kernel's block size is at most a page */
    bs = ex->preferred_block;
    if (bs > 4096) bs = 4096;
    if (bs < 512) bs = 512;
    if (bs < ex->min_block) bs = ex->min_block;
    if (ex->min_block > lowest) lowest = ex->min_block;
  }
  /* The device must end on a block boundary: smaller blocks (down to the
   * server's minimum) rather than a device that hides the export's tail. */
  while (ex->size % bs != 0 && bs > lowest) bs >>= 1;
  if (ex->size % bs != 0) return NBDP_EVALUE;
  *kernel_block_size = bs;
  return NBDP_OK;
}

long nbdp_build_opt_go(uint8_t *out, size_t cap, const char *name, size_t name_len) {
  if (name_len > 4096) return -1;
  size_t payload = 4 + name_len + 2 + 2 * 2;
  size_t total = 16 + payload;
  if (cap < total) return -1;
  nbdp_put_be64(out, NBD_MAGIC_IHAVEOPT);
  nbdp_put_be32(out + 8, NBD_OPT_GO_);
  nbdp_put_be32(out + 12, (uint32_t)payload);
  nbdp_put_be32(out + 16, (uint32_t)name_len);
  memcpy(out + 20, name, name_len);
  uint8_t *p = out + 20 + name_len;
  nbdp_put_be16(p, 2);
  nbdp_put_be16(p + 2, NBD_INFO_EXPORT_);
  nbdp_put_be16(p + 4, NBD_INFO_BLOCK_SIZE_);
  return (long)total;
}

/* ---- generic netlink ------------------------------------------------------ */

static size_t align4(size_t v) { return (v + 3) & ~(size_t)3; }

int nlp_parse_attrs(const uint8_t *buf, size_t len, struct nlp_attr *tb, int max) {
  if (max < 0 || max >= NLP_MAX_ATTR) return NBDP_EVALUE;
  for (int i = 0; i <= max; i++) tb[i].present = 0, tb[i].data = NULL, tb[i].len = 0;
  size_t off = 0;
  while (off < len) {
    if (len - off < NLA_HDRLEN) return NBDP_ESHORT;
    struct nlattr a;
    memcpy(&a, buf + off, sizeof a);
    if (a.nla_len < NLA_HDRLEN || a.nla_len > len - off) return NBDP_ELENGTH;
    int type = a.nla_type & NLA_TYPE_MASK;
    if (type <= max) {
      tb[type].present = 1;
      tb[type].data = buf + off + NLA_HDRLEN;
      tb[type].len = (uint16_t)(a.nla_len - NLA_HDRLEN);
    }
    size_t step = align4(a.nla_len);
    if (step > len - off) step = len - off; /* the last attribute may omit its padding */
    off += step;
  }
  return NBDP_OK;
}

int nlp_next_msg(const uint8_t *buf, size_t len, size_t *off, const uint8_t **msg, size_t *msg_len) {
  if (*off >= len) return 0;
  size_t left = len - *off;
  if (left < NLMSG_HDRLEN) return NBDP_ESHORT;
  struct nlmsghdr h;
  memcpy(&h, buf + *off, sizeof h);
  if (h.nlmsg_len < NLMSG_HDRLEN || h.nlmsg_len > left) return NBDP_ELENGTH;
  *msg = buf + *off;
  *msg_len = h.nlmsg_len;
  size_t step = NLMSG_ALIGN(h.nlmsg_len);
  *off += step > left ? left : step;
  return 1;
}

int nlp_parse_msg(const uint8_t *msg, size_t len, struct nlp_msg *out) {
  if (len < NLMSG_HDRLEN) return NBDP_ESHORT;
  struct nlmsghdr h;
  memcpy(&h, msg, sizeof h);
  if (h.nlmsg_len != len) return NBDP_ELENGTH;
  out->type = h.nlmsg_type;
  out->flags = h.nlmsg_flags;
  out->seq = h.nlmsg_seq;
  out->pid = h.nlmsg_pid;
  out->payload = msg + NLMSG_HDRLEN;
  out->payload_len = len - NLMSG_HDRLEN;
  return NBDP_OK;
}

int nlp_parse_error(const struct nlp_msg *m, int *error) {
  if (m->type != NLMSG_ERROR) return NBDP_ENOTFOUND;
  if (m->payload_len < sizeof(int32_t)) return NBDP_ESHORT;
  int32_t e;
  memcpy(&e, m->payload, sizeof e);
  if (e > 0 || e < -4095) return NBDP_EVALUE;
  *error = e;
  return NBDP_OK;
}

int nlp_parse_genl(const struct nlp_msg *m, uint16_t family, uint8_t *cmd, struct nlp_attr *tb, int max) {
  if (m->type != family) return NBDP_ENOTFOUND;
  if (m->payload_len < GENL_HDRLEN) return NBDP_ESHORT;
  struct genlmsghdr g;
  memcpy(&g, m->payload, sizeof g);
  *cmd = g.cmd;
  return nlp_parse_attrs(m->payload + GENL_HDRLEN, m->payload_len - GENL_HDRLEN, tb, max);
}

static int attr_u32(const struct nlp_attr *a, uint32_t *v) {
  if (!a->present) return NBDP_ENOTFOUND;
  if (a->len != 4) return NBDP_ELENGTH;
  memcpy(v, a->data, 4);
  return NBDP_OK;
}

static int attr_u16(const struct nlp_attr *a, uint16_t *v) {
  if (!a->present) return NBDP_ENOTFOUND;
  if (a->len != 2) return NBDP_ELENGTH;
  memcpy(v, a->data, 2);
  return NBDP_OK;
}

/* A NUL-terminated string attribute equal to `want`. */
static int attr_streq(const struct nlp_attr *a, const char *want) {
  size_t n = strlen(want);
  if (!a->present || a->len < n + 1) return 0;
  if (memchr(a->data, 0, a->len) != a->data + n) return 0;
  return memcmp(a->data, want, n) == 0;
}

int nlp_parse_family(const struct nlp_msg *m, uint16_t *family_id, const char *group, uint32_t *group_id) {
  struct nlp_attr tb[CTRL_ATTR_MCAST_GROUPS + 1];
  uint8_t cmd;
  int r = nlp_parse_genl(m, GENL_ID_CTRL, &cmd, tb, CTRL_ATTR_MCAST_GROUPS);
  if (r) return r;
  if (cmd != CTRL_CMD_NEWFAMILY) return NBDP_ENOTFOUND;
  if ((r = attr_u16(&tb[CTRL_ATTR_FAMILY_ID], family_id))) return r;
  if (*family_id == 0) return NBDP_EVALUE;
  *group_id = 0;
  if (!tb[CTRL_ATTR_MCAST_GROUPS].present) return NBDP_OK;
  /* [CTRL_ATTR_MCAST_GROUPS] { [n] { [CTRL_ATTR_MCAST_GRP_NAME], [CTRL_ATTR_MCAST_GRP_ID] } ... } */
  const uint8_t *g = tb[CTRL_ATTR_MCAST_GROUPS].data;
  size_t glen = tb[CTRL_ATTR_MCAST_GROUPS].len, off = 0;
  while (off < glen) {
    if (glen - off < NLA_HDRLEN) return NBDP_ESHORT;
    struct nlattr a;
    memcpy(&a, g + off, sizeof a);
    if (a.nla_len < NLA_HDRLEN || a.nla_len > glen - off) return NBDP_ELENGTH;
    struct nlp_attr in[CTRL_ATTR_MCAST_GRP_ID + 1];
    if ((r = nlp_parse_attrs(g + off + NLA_HDRLEN, a.nla_len - NLA_HDRLEN, in, CTRL_ATTR_MCAST_GRP_ID))) return r;
    if (attr_streq(&in[CTRL_ATTR_MCAST_GRP_NAME], group)) {
      if ((r = attr_u32(&in[CTRL_ATTR_MCAST_GRP_ID], group_id))) return r;
      if (*group_id == 0) return NBDP_EVALUE;
    }
    size_t step = align4(a.nla_len);
    off += step > glen - off ? glen - off : step;
  }
  return NBDP_OK;
}

int nlp_parse_link_dead(const struct nlp_msg *m, uint16_t family, uint32_t *index) {
  struct nlp_attr tb[NBD_ATTR_INDEX + 1];
  uint8_t cmd;
  int r = nlp_parse_genl(m, family, &cmd, tb, NBD_ATTR_INDEX);
  if (r) return r;
  if (cmd != NBD_CMD_LINK_DEAD) return NBDP_ENOTFOUND;
  return attr_u32(&tb[NBD_ATTR_INDEX], index);
}

int nlp_parse_connect_reply(const struct nlp_msg *m, uint16_t family, uint32_t *index) {
  struct nlp_attr tb[NBD_ATTR_INDEX + 1];
  uint8_t cmd;
  int r = nlp_parse_genl(m, family, &cmd, tb, NBD_ATTR_INDEX);
  if (r) return r;
  if (cmd != NBD_CMD_CONNECT) return NBDP_ENOTFOUND;
  return attr_u32(&tb[NBD_ATTR_INDEX], index);
}

int nlp_parse_status(const struct nlp_msg *m, uint16_t family, uint32_t index, int *connected) {
  struct nlp_attr tb[NBD_ATTR_DEVICE_LIST + 1];
  uint8_t cmd;
  int r = nlp_parse_genl(m, family, &cmd, tb, NBD_ATTR_DEVICE_LIST);
  if (r) return r;
  if (cmd != NBD_CMD_STATUS) return NBDP_ENOTFOUND;
  if (!tb[NBD_ATTR_DEVICE_LIST].present) return NBDP_ENOTFOUND;
  /* [NBD_ATTR_DEVICE_LIST] { [NBD_DEVICE_ITEM] { [NBD_DEVICE_INDEX] u32, [NBD_DEVICE_CONNECTED] u8 } ... } */
  const uint8_t *d = tb[NBD_ATTR_DEVICE_LIST].data;
  size_t dlen = tb[NBD_ATTR_DEVICE_LIST].len, off = 0;
  while (off < dlen) {
    if (dlen - off < NLA_HDRLEN) return NBDP_ESHORT;
    struct nlattr a;
    memcpy(&a, d + off, sizeof a);
    if (a.nla_len < NLA_HDRLEN || a.nla_len > dlen - off) return NBDP_ELENGTH;
    if ((a.nla_type & NLA_TYPE_MASK) == NBD_DEVICE_ITEM) {
      struct nlp_attr in[NBD_DEVICE_CONNECTED + 1];
      if ((r = nlp_parse_attrs(d + off + NLA_HDRLEN, a.nla_len - NLA_HDRLEN, in, NBD_DEVICE_CONNECTED))) return r;
      uint32_t idx;
      if ((r = attr_u32(&in[NBD_DEVICE_INDEX], &idx))) return r;
      if (idx == index) {
        if (!in[NBD_DEVICE_CONNECTED].present) return NBDP_ENOTFOUND;
        if (in[NBD_DEVICE_CONNECTED].len != 1) return NBDP_ELENGTH;
        *connected = in[NBD_DEVICE_CONNECTED].data[0] != 0;
        return NBDP_OK;
      }
    }
    size_t step = align4(a.nla_len);
    off += step > dlen - off ? dlen - off : step;
  }
  return NBDP_ENOTFOUND;
}
