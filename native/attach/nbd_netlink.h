/*
 * nbd_netlink.h — talking to the kernel's "nbd" generic-netlink family over
 * raw AF_NETLINK/NETLINK_GENERIC sockets (no libnl). Parsing is nbd_parse.c's.
 */
#ifndef XDEVICE_NBD_NETLINK_H
#define XDEVICE_NBD_NETLINK_H

#include <stddef.h>
#include <stdint.h>

struct nbd_nl {
  int fd;          /* requests and their replies */
  int ev_fd;       /* the multicast group (LINK_DEAD); -1 until subscribed */
  uint32_t seq;
  uint16_t family; /* resolved with CTRL_CMD_GETFAMILY */
  uint32_t mcgrp;  /* id of NBD_GENL_MCAST_GROUP_NAME */
};

/* Opens the request socket and resolves the family and its multicast group.
 * Returns 0 or a negative errno (-ENOENT: no nbd family, i.e. no nbd module). */
int nbd_nl_open(struct nbd_nl *nl);
/* Opens a second socket subscribed to the multicast group. */
int nbd_nl_subscribe(struct nbd_nl *nl);
void nbd_nl_close(struct nbd_nl *nl);

/* What a CONNECT/RECONFIGURE carries; zero fields are left out. */
struct nbd_nl_config {
  uint32_t index;
  const int *fds;
  int nfds;
  uint64_t size_bytes;
  uint64_t block_size;
  uint64_t server_flags;
  uint64_t timeout_s;
  uint64_t dead_conn_timeout_s;
};

/* Each returns 0 or a negative errno from the kernel's reply. */
int nbd_nl_connect(struct nbd_nl *nl, const struct nbd_nl_config *c, uint32_t *index_out);
int nbd_nl_reconfigure(struct nbd_nl *nl, const struct nbd_nl_config *c);
int nbd_nl_disconnect(struct nbd_nl *nl, uint32_t index);
/* *connected = 1 if the device has a live configuration. */
int nbd_nl_status(struct nbd_nl *nl, uint32_t index, int *connected);

/* Reads what is pending on ev_fd without blocking and counts the LINK_DEAD
 * notifications for `index`. Returns the count, or a negative errno. */
int nbd_nl_drain_link_dead(struct nbd_nl *nl, uint32_t index);

#endif
