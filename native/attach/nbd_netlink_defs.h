/*
 * nbd_netlink_defs.h — the kernel's NBD generic-netlink interface. The UAPI
 * header <linux/nbd-netlink.h> (linux-libc-dev) is used when present; else the
 * values below, copied by value from that UAPI (they are kernel ABI and never
 * change meaning), stand in.
 */
#ifndef XDEVICE_NBD_NETLINK_DEFS_H
#define XDEVICE_NBD_NETLINK_DEFS_H

#if defined(__has_include)
#if __has_include(<linux/nbd-netlink.h>)
#include <linux/nbd-netlink.h>
#define XDEVICE_HAVE_NBD_NETLINK_H 1
#endif
#endif

#ifndef XDEVICE_HAVE_NBD_NETLINK_H
#define NBD_GENL_FAMILY_NAME "nbd"
#define NBD_GENL_VERSION 0x1
#define NBD_GENL_MCAST_GROUP_NAME "nbd_mc_group"
enum { NBD_ATTR_UNSPEC, NBD_ATTR_INDEX, NBD_ATTR_SIZE_BYTES, NBD_ATTR_BLOCK_SIZE_BYTES, NBD_ATTR_TIMEOUT,
       NBD_ATTR_SERVER_FLAGS, NBD_ATTR_CLIENT_FLAGS, NBD_ATTR_SOCKETS, NBD_ATTR_DEAD_CONN_TIMEOUT,
       NBD_ATTR_DEVICE_LIST, NBD_ATTR_BACKEND_IDENTIFIER };
enum { NBD_DEVICE_ITEM_UNSPEC, NBD_DEVICE_ITEM };
enum { NBD_DEVICE_UNSPEC, NBD_DEVICE_INDEX, NBD_DEVICE_CONNECTED };
enum { NBD_SOCK_ITEM_UNSPEC, NBD_SOCK_ITEM };
enum { NBD_SOCK_UNSPEC, NBD_SOCK_FD };
enum { NBD_CMD_UNSPEC, NBD_CMD_CONNECT, NBD_CMD_DISCONNECT, NBD_CMD_RECONFIGURE, NBD_CMD_LINK_DEAD, NBD_CMD_STATUS };
#endif

#endif
