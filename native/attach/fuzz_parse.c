/*
 * fuzz_parse.c — drives every parser of nbd_parse.c with hostile input.
 * Built by test/unit/nbd-attach-parse.test.ts with -fsanitize=address,undefined.
 *
 *   fuzz_parse fuzz SEED COUNT   random and mutated-valid inputs; every input
 *                                lives in a heap buffer of exactly its length,
 *                                so an over-read is an ASan report
 *   fuzz_parse parse KIND HEX... one input given as hex, result on stdout:
 *     greeting HEX               "ok flags=N" | "err CODE"
 *     opt-reply OPT HEX          "ok type=N length=N"
 *     export HEX [HEX...]        NBD_REP_INFO payloads, then finish:
 *                                "ok size=N flags=N block=N"
 *     link-dead FAMILY HEX       "ok index=N"
 *     family GROUP HEX           "ok family=N group=N"
 *     status FAMILY INDEX HEX    "ok connected=N"
 */
#include "nbd_parse.h"
#include "nbd_netlink_defs.h"

#include <linux/genetlink.h>
#include <linux/netlink.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* xorshift64*: the same seed gives the same inputs. */
static uint64_t rng_state;
static uint64_t rnd(void) {
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return rng_state * UINT64_C(2685821657736338717);
}
static size_t rnd_below(size_t n) { return n ? (size_t)(rnd() % n) : 0; }

/* ---- builders of valid inputs -------------------------------------------- */
struct buf {
  uint8_t b[1024];
  size_t n;
};
static void put(struct buf *o, const void *p, size_t n) {
  if (o->n + n > sizeof o->b) abort();
  memcpy(o->b + o->n, p, n);
  o->n += n;
}
static void pad4(struct buf *o) {
  static const uint8_t z[4];
  put(o, z, (4 - (o->n & 3)) & 3);
}
static size_t attr_begin(struct buf *o, uint16_t type) {
  size_t at = o->n;
  struct nlattr a = {0, type};
  put(o, &a, sizeof a);
  return at;
}
static void attr_end(struct buf *o, size_t at) {
  uint16_t len = (uint16_t)(o->n - at);
  memcpy(o->b + at, &len, 2);
  pad4(o);
}
static void attr(struct buf *o, uint16_t type, const void *p, size_t n) {
  size_t at = attr_begin(o, type);
  put(o, p, n);
  attr_end(o, at);
}
static void attr_u32(struct buf *o, uint16_t type, uint32_t v) { attr(o, type, &v, 4); }
static size_t msg_begin(struct buf *o, uint16_t type, uint8_t cmd) {
  size_t at = o->n;
  struct nlmsghdr h = {0, type, 0, 1, 0};
  put(o, &h, sizeof h);
  struct genlmsghdr g = {cmd, 1, 0};
  put(o, &g, sizeof g);
  return at;
}
static void msg_end(struct buf *o, size_t at) {
  uint32_t len = (uint32_t)(o->n - at);
  memcpy(o->b + at, &len, 4);
  pad4(o);
}

enum { K_GREETING, K_OPT_REPLY, K_INFO, K_MSGS, K_COUNT };

static void valid_greeting(struct buf *o) {
  uint8_t g[18];
  nbdp_put_be64(g, NBD_MAGIC_INIT);
  nbdp_put_be64(g + 8, NBD_MAGIC_IHAVEOPT);
  nbdp_put_be16(g + 16, 3);
  put(o, g, sizeof g);
}
static void valid_opt_reply(struct buf *o) {
  uint8_t r[20];
  nbdp_put_be64(r, NBD_MAGIC_REPLY);
  nbdp_put_be32(r + 8, NBD_OPT_GO_);
  nbdp_put_be32(r + 12, rnd() & 1 ? NBD_REP_INFO_ : NBD_REP_ACK_);
  nbdp_put_be32(r + 16, nbdp_be32(r + 12) == NBD_REP_INFO_ ? 12 : 0);
  put(o, r, sizeof r);
}
static void valid_info(struct buf *o) {
  uint8_t p[14];
  if (rnd() & 1) {
    nbdp_put_be16(p, NBD_INFO_EXPORT_);
    nbdp_put_be64(p + 2, (rnd() % 4096 + 1) * 4096);
    nbdp_put_be16(p + 10, (uint16_t)(rnd() | 1));
    put(o, p, 12);
  } else {
    nbdp_put_be16(p, NBD_INFO_BLOCK_SIZE_);
    nbdp_put_be32(p + 2, 512);
    nbdp_put_be32(p + 6, 4096);
    nbdp_put_be32(p + 10, 1u << 25);
    put(o, p, 14);
  }
}
/* One recv() worth of netlink messages: a family reply, a LINK_DEAD, a
 * CONNECT reply, a STATUS reply and an ACK, in a random order and count. */
static void valid_msgs(struct buf *o) {
  int count = 1 + (int)rnd_below(3);
  for (int i = 0; i < count; i++) {
    size_t m;
    switch (rnd_below(5)) {
      case 0: {
        m = msg_begin(o, GENL_ID_CTRL, CTRL_CMD_NEWFAMILY);
        attr(o, CTRL_ATTR_FAMILY_NAME, "nbd", 4);
        uint16_t id = 30;
        attr(o, CTRL_ATTR_FAMILY_ID, &id, 2);
        size_t gs = attr_begin(o, CTRL_ATTR_MCAST_GROUPS | NLA_F_NESTED);
        size_t g1 = attr_begin(o, 1 | NLA_F_NESTED);
        attr(o, CTRL_ATTR_MCAST_GRP_NAME, "nbd_mc_group", 13);
        attr_u32(o, CTRL_ATTR_MCAST_GRP_ID, 9);
        attr_end(o, g1);
        attr_end(o, gs);
        break;
      }
      case 1:
        m = msg_begin(o, 30, NBD_CMD_LINK_DEAD);
        attr_u32(o, NBD_ATTR_INDEX, (uint32_t)rnd_below(16));
        break;
      case 2:
        m = msg_begin(o, 30, NBD_CMD_CONNECT);
        attr_u32(o, NBD_ATTR_INDEX, (uint32_t)rnd_below(16));
        break;
      case 3: {
        m = msg_begin(o, 30, NBD_CMD_STATUS);
        size_t l = attr_begin(o, NBD_ATTR_DEVICE_LIST | NLA_F_NESTED);
        for (uint32_t d = 0; d < 2; d++) {
          size_t it = attr_begin(o, NBD_DEVICE_ITEM | NLA_F_NESTED);
          attr_u32(o, NBD_DEVICE_INDEX, d);
          uint8_t c = (uint8_t)(rnd() & 1);
          attr(o, NBD_DEVICE_CONNECTED, &c, 1);
          attr_end(o, it);
        }
        attr_end(o, l);
        break;
      }
      default: {
        m = o->n;
        struct nlmsghdr h = {0, NLMSG_ERROR, 0, 1, 0};
        put(o, &h, sizeof h);
        int32_t e = -(int32_t)rnd_below(3);
        put(o, &e, 4);
        put(o, &h, sizeof h); /* the echoed request header */
        break;
      }
    }
    msg_end(o, m);
  }
}

/* ---- the parsers, all of them, on one input -------------------------------- */
static uint64_t sink; /* keeps results observable so nothing is optimised away */

static void run_netlink(const uint8_t *b, size_t n) {
  size_t off = 0;
  const uint8_t *msg;
  size_t mlen;
  int r;
  while ((r = nlp_next_msg(b, n, &off, &msg, &mlen)) == 1) {
    struct nlp_msg m;
    if (nlp_parse_msg(msg, mlen, &m)) continue;
    int err;
    uint16_t fam;
    uint32_t grp, idx;
    int conn;
    if (!nlp_parse_error(&m, &err)) sink += (uint64_t)err;
    if (!nlp_parse_family(&m, &fam, NBD_GENL_MCAST_GROUP_NAME, &grp)) sink += fam + grp;
    if (!nlp_parse_link_dead(&m, 30, &idx)) sink += idx;
    if (!nlp_parse_connect_reply(&m, 30, &idx)) sink += idx;
    if (!nlp_parse_status(&m, 30, 1, &conn)) sink += (uint64_t)conn;
  }
  struct nlp_attr tb[NLP_MAX_ATTR];
  if (!nlp_parse_attrs(b, n, tb, NLP_MAX_ATTR - 1)) sink++;
}

static void run_all(const uint8_t *b, size_t n) {
  uint16_t f;
  if (!nbdp_parse_greeting(b, n, &f)) sink += f;
  struct nbdp_opt_reply r;
  if (!nbdp_parse_opt_reply_header(b, n, NBD_OPT_GO_, &r)) sink += r.length;
  struct nbdp_export ex = {0};
  if (!nbdp_parse_info(b, n, &ex)) {
    uint32_t bs;
    if (!nbdp_finish_export(&ex, &bs)) sink += bs;
  }
  run_netlink(b, n);
}

static void mutate(struct buf *o) {
  int rounds = 1 + (int)rnd_below(4);
  for (int i = 0; i < rounds; i++) {
    switch (rnd_below(6)) {
      case 0: if (o->n) o->b[rnd_below(o->n)] ^= (uint8_t)(1u << rnd_below(8)); break;
      case 1: if (o->n) o->b[rnd_below(o->n)] = (uint8_t)rnd(); break;
      case 2: o->n = rnd_below(o->n + 1); break; /* truncate */
      case 3: { /* extend with junk */
        size_t add = rnd_below(16);
        while (add-- && o->n < sizeof o->b) o->b[o->n++] = (uint8_t)rnd();
        break;
      }
      case 4: /* a 16-bit length field (nlattr, or inside the NBD fields) gets a boundary value */
        if (o->n >= 2) {
          static const uint16_t edges[] = {0, 1, 3, 4, 5, 0xffff, 0x7fff, 8, 16, 20};
          uint16_t v = edges[rnd_below(sizeof edges / sizeof edges[0])];
          memcpy(o->b + (rnd_below(o->n - 1) & ~(size_t)1), &v, 2);
        }
        break;
      default: /* a 32-bit length field */
        if (o->n >= 4) {
          uint32_t v = (uint32_t)rnd_below(o->n + 40);
          if (rnd() & 1) v = 0xffffffffu - (uint32_t)rnd_below(4);
          memcpy(o->b + (rnd_below(o->n - 3) & ~(size_t)3), &v, 4);
        }
        break;
    }
  }
}

static int fuzz(uint64_t seed, long count) {
  rng_state = seed ? seed : 1;
  for (long i = 0; i < count; i++) {
    struct buf o = {.n = 0};
    if (rnd_below(8) == 0) {
      o.n = rnd_below(128);
      for (size_t j = 0; j < o.n; j++) o.b[j] = (uint8_t)rnd();
    } else {
      switch (rnd_below(K_COUNT)) {
        case K_GREETING: valid_greeting(&o); break;
        case K_OPT_REPLY: valid_opt_reply(&o); break;
        case K_INFO: valid_info(&o); break;
        default: valid_msgs(&o); break;
      }
      if (rnd_below(10) != 0) mutate(&o);
    }
    /* Exactly o.n bytes on the heap: one byte past the end is a report. */
    uint8_t *heap = malloc(o.n ? o.n : 1);
    if (!heap) return 3;
    memcpy(heap, o.b, o.n);
    run_all(heap, o.n);
    free(heap);
  }
  printf("fuzzed %ld inputs (seed %llu, sink %llu)\n", count, (unsigned long long)seed, (unsigned long long)(sink & 0xff));
  return 0;
}

/* The last decoded input; replaced (and freed) by the next, freed by main. */
static uint8_t *g_input;
static size_t unhex(const char *s, uint8_t **out) {
  size_t n = strlen(s) / 2;
  free(g_input);
  *out = g_input = malloc(n ? n : 1);
  for (size_t i = 0; i < n; i++) {
    unsigned v;
    if (sscanf(s + 2 * i, "%2x", &v) != 1) exit(2);
    (*out)[i] = (uint8_t)v;
  }
  return n;
}

static int parse_one(int argc, char **argv) {
  const char *kind = argv[0];
  uint8_t *b;
  size_t n;
  int r;
  if (!strcmp(kind, "greeting") && argc == 2) {
    uint16_t f;
    n = unhex(argv[1], &b);
    if ((r = nbdp_parse_greeting(b, n, &f))) return printf("err %d\n", r), 0;
    printf("ok flags=%u\n", f);
  } else if (!strcmp(kind, "opt-reply") && argc == 3) {
    struct nbdp_opt_reply o;
    n = unhex(argv[2], &b);
    if ((r = nbdp_parse_opt_reply_header(b, n, (uint32_t)strtoul(argv[1], NULL, 0), &o))) return printf("err %d\n", r), 0;
    printf("ok type=%u length=%u\n", o.type, o.length);
  } else if (!strcmp(kind, "export") && argc >= 2) {
    struct nbdp_export ex = {0};
    for (int i = 1; i < argc; i++) {
      n = unhex(argv[i], &b);
      r = nbdp_parse_info(b, n, &ex);
      if (r) return printf("err %d\n", r), 0;
    }
    uint32_t bs;
    if ((r = nbdp_finish_export(&ex, &bs))) return printf("err %d\n", r), 0;
    printf("ok size=%llu flags=%u block=%u\n", (unsigned long long)ex.size, ex.flags, bs);
    return 0;
  } else if ((!strcmp(kind, "link-dead") && argc == 3) || (!strcmp(kind, "family") && argc == 3) ||
             (!strcmp(kind, "status") && argc == 4)) {
    n = unhex(argv[argc - 1], &b);
    size_t off = 0;
    const uint8_t *msg;
    size_t mlen;
    struct nlp_msg m;
    if ((r = nlp_next_msg(b, n, &off, &msg, &mlen)) != 1) return printf("err %d\n", r ? r : NBDP_ESHORT), 0;
    if ((r = nlp_parse_msg(msg, mlen, &m))) return printf("err %d\n", r), 0;
    if (kind[0] == 'l') {
      uint32_t idx;
      if ((r = nlp_parse_link_dead(&m, (uint16_t)atoi(argv[1]), &idx))) return printf("err %d\n", r), 0;
      printf("ok index=%u\n", idx);
    } else if (kind[0] == 'f') {
      uint16_t fam;
      uint32_t grp;
      if ((r = nlp_parse_family(&m, &fam, argv[1], &grp))) return printf("err %d\n", r), 0;
      printf("ok family=%u group=%u\n", fam, grp);
    } else {
      int c;
      if ((r = nlp_parse_status(&m, (uint16_t)atoi(argv[1]), (uint32_t)atoi(argv[2]), &c))) return printf("err %d\n", r), 0;
      printf("ok connected=%d\n", c);
    }
  } else {
    fprintf(stderr, "unknown parse kind or arguments\n");
    return 2;
  }
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 4 && !strcmp(argv[1], "fuzz")) return fuzz(strtoull(argv[2], NULL, 10), strtol(argv[3], NULL, 10));
  if (argc >= 3 && !strcmp(argv[1], "parse")) {
    int r = parse_one(argc - 2, argv + 2);
    free(g_input);
    return r;
  }
  fprintf(stderr, "usage: fuzz_parse fuzz SEED COUNT | fuzz_parse parse KIND HEX...\n");
  return 2;
}
