/*
 * nbd_parse.h — pure parsers (no I/O) for xdevice-nbd-attach: the NBD
 * fixed-newstyle handshake replies and the generic-netlink messages the kernel
 * sends. Every function takes a byte buffer and its length, validates every
 * length and field, and never reads outside the buffer; fuzz_parse.c calls
 * each of them with random and mutated input under ASan/UBSan.
 *
 * Return convention: 0 = parsed, negative = rejected (one of NBDP_E*); the
 * out-structures are only meaningful on 0.
 */
#ifndef XDEVICE_NBD_PARSE_H
#define XDEVICE_NBD_PARSE_H

#include <stddef.h>
#include <stdint.h>

/* ---- NBD protocol values (see /work/shared/reference/nbd-proto.md, "Values") */
#define NBD_MAGIC_INIT UINT64_C(0x4e42444d41474943)     /* "NBDMAGIC" */
#define NBD_MAGIC_IHAVEOPT UINT64_C(0x49484156454F5054) /* "IHAVEOPT" */
#define NBD_MAGIC_REPLY UINT64_C(0x0003e889045565a9)    /* option reply magic */

#define NBD_HS_FLAG_FIXED_NEWSTYLE 0x0001u
#define NBD_HS_FLAG_NO_ZEROES 0x0002u
#define NBD_CL_FLAG_FIXED_NEWSTYLE 0x00000001u
#define NBD_CL_FLAG_NO_ZEROES 0x00000002u

#define NBD_OPT_ABORT_ 2u
#define NBD_OPT_GO_ 7u
#define NBD_REP_ACK_ 1u
#define NBD_REP_INFO_ 3u
#define NBD_REP_FLAG_ERROR_ 0x80000000u
#define NBD_INFO_EXPORT_ 0u
#define NBD_INFO_NAME_ 1u
#define NBD_INFO_DESCRIPTION_ 2u
#define NBD_INFO_BLOCK_SIZE_ 3u

#define NBD_TFLAG_HAS_FLAGS 0x0001u
#define NBD_TFLAG_READ_ONLY 0x0002u
#define NBD_TFLAG_CAN_MULTI_CONN 0x0100u

/* The longest option reply payload we accept: an NBD_REP_INFO is at most
 * 2 + 4096 bytes (name/description), an error message at most 4096 bytes. */
#define NBDP_MAX_REPLY_PAYLOAD 8192u
#define NBDP_GREETING_LEN 18u   /* NBDMAGIC, IHAVEOPT, 16-bit handshake flags */
#define NBDP_OPT_REPLY_HDR_LEN 20u

enum {
  NBDP_OK = 0,
  NBDP_ESHORT = -1,    /* fewer bytes than the structure needs */
  NBDP_EMAGIC = -2,    /* a magic number is wrong */
  NBDP_ELENGTH = -3,   /* a length field disagrees with the data or is too big */
  NBDP_EPROTO = -4,    /* a value the protocol forbids (e.g. no FIXED_NEWSTYLE) */
  NBDP_EVALUE = -5,    /* a well-formed value we cannot use (e.g. block size) */
  NBDP_ENOTFOUND = -6, /* a required attribute/part is missing */
};

const char *nbdp_strerror(int err);

/* Big-endian helpers (buffers must hold the bytes: callers check lengths). */
uint16_t nbdp_be16(const uint8_t *p);
uint32_t nbdp_be32(const uint8_t *p);
uint64_t nbdp_be64(const uint8_t *p);
void nbdp_put_be16(uint8_t *p, uint16_t v);
void nbdp_put_be32(uint8_t *p, uint32_t v);
void nbdp_put_be64(uint8_t *p, uint64_t v);

/* The server's first 18 bytes. Requires FIXED_NEWSTYLE. */
int nbdp_parse_greeting(const uint8_t *buf, size_t len, uint16_t *hs_flags);

/* An option reply header (20 bytes): magic, option, type, payload length. The
 * length must not exceed NBDP_MAX_REPLY_PAYLOAD; `expect_opt` must match. */
struct nbdp_opt_reply {
  uint32_t option;
  uint32_t type;
  uint32_t length;
};
int nbdp_parse_opt_reply_header(const uint8_t *buf, size_t len, uint32_t expect_opt, struct nbdp_opt_reply *out);

/* What NBD_OPT_GO's NBD_REP_INFO replies told us. */
struct nbdp_export {
  int have_export;     /* NBD_INFO_EXPORT seen (mandatory before the ACK) */
  uint64_t size;
  uint16_t flags;      /* transmission flags */
  int have_block_size; /* NBD_INFO_BLOCK_SIZE seen */
  uint32_t min_block, preferred_block, max_block;
};

/* One NBD_REP_INFO payload (the bytes after the header); updates `ex`.
 * Unknown info types are ignored; known ones must have their exact length
 * and sane values (block sizes powers of two, min <= preferred <= max). */
int nbdp_parse_info(const uint8_t *payload, size_t len, struct nbdp_export *ex);

/* Final check after NBD_REP_ACK: INFO_EXPORT present, HAS_FLAGS set, size a
 * multiple of 512 and nonzero; picks the kernel block size (a power of two in
 * [512, 4096] that honours the server's minimum, preferring its preferred,
 * and divides the size). */
int nbdp_finish_export(const struct nbdp_export *ex, uint32_t *kernel_block_size);

/* Builds the NBD_OPT_GO request (header + payload) asking for
 * NBD_INFO_EXPORT and NBD_INFO_BLOCK_SIZE; returns its length or a negative
 * value if the name is longer than 4096 bytes or `cap` is too small. */
long nbdp_build_opt_go(uint8_t *out, size_t cap, const char *name, size_t name_len);

/* ---- generic netlink ------------------------------------------------------ */

/* One attribute found by nlp_parse_attrs: payload pointer and length. */
struct nlp_attr {
  const uint8_t *data;
  uint16_t len;
  int present;
};
#define NLP_MAX_ATTR 16

/* Parses a run of netlink attributes (struct nlattr, 4-byte aligned) into
 * tb[0..max]; types above max are skipped; a truncated or overlong
 * attribute rejects the whole run. The NESTED/BYTEORDER bits are masked. */
int nlp_parse_attrs(const uint8_t *buf, size_t len, struct nlp_attr *tb, int max);

/* Iterates the netlink messages of one recv() buffer: on success sets *msg and
 * *msg_len to the current message (header included) and advances *off. Returns
 * 1 for a message, 0 at the end, negative on a malformed header. */
int nlp_next_msg(const uint8_t *buf, size_t len, size_t *off, const uint8_t **msg, size_t *msg_len);

/* The header fields of one message. */
struct nlp_msg {
  uint16_t type;
  uint16_t flags;
  uint32_t seq;
  uint32_t pid;
  const uint8_t *payload; /* after struct nlmsghdr */
  size_t payload_len;
};
int nlp_parse_msg(const uint8_t *msg, size_t len, struct nlp_msg *out);

/* NLMSG_ERROR: *error is 0 for an ACK, else a negative errno. */
int nlp_parse_error(const struct nlp_msg *m, int *error);

/* A generic netlink message of family `family`: the command and the
 * attributes after struct genlmsghdr (parsed into tb[0..max]). */
int nlp_parse_genl(const struct nlp_msg *m, uint16_t family, uint8_t *cmd, struct nlp_attr *tb, int max);

/* CTRL_CMD_NEWFAMILY (the reply to CTRL_CMD_GETFAMILY): the family id and the
 * id of the multicast group named `group` (0 if the family has no such group). */
int nlp_parse_family(const struct nlp_msg *m, uint16_t *family_id, const char *group, uint32_t *group_id);

/* An NBD_CMD_LINK_DEAD notification from family `family`: *index is the
 * device index. NBDP_ENOTFOUND for any other (well-formed) message. */
int nlp_parse_link_dead(const struct nlp_msg *m, uint16_t family, uint32_t *index);

/* The reply to NBD_CMD_CONNECT: the index the kernel gave the device. */
int nlp_parse_connect_reply(const struct nlp_msg *m, uint16_t family, uint32_t *index);

/* The reply to NBD_CMD_STATUS for one index: *connected 1/0. */
int nlp_parse_status(const struct nlp_msg *m, uint16_t family, uint32_t index, int *connected);

#endif
