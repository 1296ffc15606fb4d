/*
 * xdevice-nbd-attach — attach an NBD export to a kernel /dev/nbdN over the
 * kernel's generic-netlink interface and keep it attached: when a connection
 * dies (the kernel multicasts NBD_CMD_LINK_DEAD), negotiate a new one with
 * the endpoints in turn, backing off, for as long as it takes, and hand it
 * over with NBD_CMD_RECONFIGURE. Meanwhile the kernel holds I/O for up to
 * --dead-conn-timeout seconds, so a server restart is a pause, not EIO.
 *
 * Parsing: nbd_parse.c; the handshake: nbd_handshake.c; netlink:
 * nbd_netlink.c. One line per event on stderr.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "nbd_handshake.h"
#include "nbd_netlink.h"
#include "nbd_parse.h"

#define MAX_ENDPOINTS 16
#define MAX_CONNECTIONS 16
#define PID_DIR "/run"
#define STATUS_EVERY_MS 5000

static const char *USAGE =
    "usage: xdevice-nbd-attach --device /dev/nbdN --export NAME --endpoint HOST:PORT [--endpoint ...]\n"
    "                          [--connections N] [--timeout S] [--dead-conn-timeout S] [--foreground]\n"
    "                          [--pid-file PATH]\n"
    "       xdevice-nbd-attach --disconnect /dev/nbdN [--pid-file PATH]\n"
    "       xdevice-nbd-attach --status /dev/nbdN\n"
    "       xdevice-nbd-attach --probe --export NAME --endpoint HOST:PORT [--endpoint ...] [--connections N]\n"
    "\n"
    "Attaches the export to the kernel NBD device (generic netlink), then stays running: when\n"
    "a connection dies it reconnects to the endpoints in turn (with backoff, for as long as it\n"
    "takes) and gives the kernel the new connection. The kernel queues I/O meanwhile for up to\n"
    "--dead-conn-timeout seconds (default 120), so a server restart is a pause, not an I/O error.\n"
    "\n"
    "  --device D            /dev/nbdN or N\n"
    "  --export NAME         export name (NBD_OPT_GO)\n"
    "  --endpoint H:P        numeric IPv4 HOST:PORT or [IPv6]:PORT; repeat for fallbacks\n"
    "  --connections N       connections (1-16, default 1); more than 1 only if the server\n"
    "                        sets NBD_FLAG_CAN_MULTI_CONN\n"
    "  --timeout S           seconds before the kernel retries a request on another or a new\n"
    "                        connection (NBD_ATTR_TIMEOUT, default 30; 0 = none, then a request\n"
    "                        sent on a connection that died is never retried)\n"
    "  --dead-conn-timeout S seconds the kernel holds I/O while every connection is dead\n"
    "                        (NBD_ATTR_DEAD_CONN_TIMEOUT, default 120; 0 = fail it at once)\n"
    "  --foreground          do not go to the background once attached\n"
    "  --pid-file PATH       default " PID_DIR "/xdevice-nbd-attach.nbdN.pid\n"
    "  --disconnect D        stop the daemon of D (its pid file) and detach D (NBD_CMD_DISCONNECT)\n"
    "  --status D            print whether D is attached (exit 0 attached, 3 not)\n"
    "  --probe               negotiate with every endpoint, print what it exports, attach nothing\n"
    "\n"
    "SIGTERM/SIGINT stop the daemon and leave the device attached (without a daemon a dead\n"
    "connection is not replaced); --disconnect detaches. TLS is not supported.\n"
    "Exit: 0 attached (or detached), 1 failed, 2 usage, 3 --status: not attached, 5 the kernel has no nbd (module not loaded).\n";

static const char *g_dev = "nbd?";

static void logf_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logf_(const char *fmt, ...) {
  char line[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  fprintf(stderr, "xdevice-nbd-attach: %s: %s\n", g_dev, line);
}

static volatile sig_atomic_t g_stop;
static int g_sigpipe[2] = {-1, -1};
static void on_signal(int sig) {
  g_stop = sig;
  int saved = errno;
  if (g_sigpipe[1] >= 0) (void)!write(g_sigpipe[1], "x", 1);
  errno = saved;
}

struct opts {
  uint32_t index;
  char device[32];
  const char *export_name;
  struct nbd_endpoint endpoints[MAX_ENDPOINTS];
  int n_endpoints;
  int connections;
  long timeout_s;
  long dead_conn_timeout_s;
  int foreground;
  int disconnect;
  int probe;
  int status;
  char pid_file[256];
};

static int parse_index(const char *s, uint32_t *index) {
  const char *digits = strncmp(s, "/dev/nbd", 8) == 0 ? s + 8 : s;
  char *end;
  errno = 0;
  long v = strtol(digits, &end, 10);
  if (errno || *digits == 0 || *end != 0 || v < 0 || v > 1000000) return -1;
  *index = (uint32_t)v;
  return 0;
}

static int parse_num(const char *s, long lo, long hi, long *out) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || *s == 0 || *end != 0 || v < lo || v > hi) return -1;
  *out = v;
  return 0;
}

static int parse_opts(int argc, char **argv, struct opts *o) {
  static const struct option longs[] = {
      {"device", required_argument, 0, 'd'},     {"export", required_argument, 0, 'e'},
      {"endpoint", required_argument, 0, 'p'},   {"connections", required_argument, 0, 'c'},
      {"timeout", required_argument, 0, 't'},    {"dead-conn-timeout", required_argument, 0, 'D'},
      {"foreground", no_argument, 0, 'f'},       {"disconnect", required_argument, 0, 'x'},
      {"pid-file", required_argument, 0, 'P'},   {"help", no_argument, 0, 'h'},
      {"probe", no_argument, 0, 'R'},            {"status", required_argument, 0, 'S'},
      {0, 0, 0, 0}};
  memset(o, 0, sizeof *o);
  o->connections = 1;
  o->timeout_s = 30;
  o->dead_conn_timeout_s = 120;
  const char *device = NULL;
  long v;
  int c;
  while ((c = getopt_long(argc, argv, "", longs, NULL)) != -1) {
    switch (c) {
      case 'd': device = optarg; break;
      case 'x': device = optarg; o->disconnect = 1; break;
      case 'e': o->export_name = optarg; break;
      case 'p':
        if (o->n_endpoints == MAX_ENDPOINTS) return fprintf(stderr, "at most %d endpoints\n", MAX_ENDPOINTS), -1;
        if (nbd_endpoint_parse(optarg, &o->endpoints[o->n_endpoints]))
          return fprintf(stderr, "--endpoint %s: want a numeric IPv4 HOST:PORT or [IPv6]:PORT\n", optarg), -1;
        o->n_endpoints++;
        break;
      case 'c':
        if (parse_num(optarg, 1, MAX_CONNECTIONS, &v)) return fprintf(stderr, "--connections: 1 to %d\n", MAX_CONNECTIONS), -1;
        o->connections = (int)v;
        break;
      case 't':
        if (parse_num(optarg, 0, 86400, &o->timeout_s)) return fprintf(stderr, "--timeout: 0 to 86400 seconds\n"), -1;
        break;
      case 'D':
        if (parse_num(optarg, 0, 86400 * 30, &o->dead_conn_timeout_s)) return fprintf(stderr, "--dead-conn-timeout: 0 to 2592000 seconds\n"), -1;
        break;
      case 'f': o->foreground = 1; break;
      case 'R': o->probe = 1; break;
      case 'S': device = optarg; o->status = 1; break;
      case 'P':
        if (strlen(optarg) >= sizeof o->pid_file) return fprintf(stderr, "--pid-file too long\n"), -1;
        strcpy(o->pid_file, optarg);
        break;
      case 'h': fputs(USAGE, stdout); exit(0);
      default: return -1;
    }
  }
  if (optind != argc) return fprintf(stderr, "unexpected argument %s\n", argv[optind]), -1;
  if (o->probe) {
    if (!o->export_name || o->n_endpoints == 0) return fprintf(stderr, "--probe needs --export and --endpoint\n"), -1;
    return 0;
  }
  if (!device || parse_index(device, &o->index)) return fprintf(stderr, "--device: /dev/nbdN or N\n"), -1;
  snprintf(o->device, sizeof o->device, "nbd%u", o->index);
  if (!o->pid_file[0]) snprintf(o->pid_file, sizeof o->pid_file, PID_DIR "/xdevice-nbd-attach.%s.pid", o->device);
  if (o->disconnect || o->status) return 0;
  if (!o->export_name) return fprintf(stderr, "--export is required\n"), -1;
  if (o->n_endpoints == 0) return fprintf(stderr, "give at least one --endpoint\n"), -1;
  return 0;
}

/* Negotiates `n` connections with one endpoint; all must agree on size and
 * flags. Returns how many were made (0 on failure, with the reason logged). */
static int dial_endpoint(const struct opts *o, const struct nbd_endpoint *ep, int n, int *fds, struct nbdp_export *ex, uint32_t *bs) {
  char err[256];
  int timeout = o->timeout_s > 0 && o->timeout_s < 10 ? (int)o->timeout_s : 10;
  for (int i = 0; i < n; i++) {
    struct nbdp_export e;
    uint32_t b;
    int fd = nbd_dial(ep, o->export_name, timeout, &e, &b, err, sizeof err);
    if (fd < 0) {
      logf_("%s: %s", ep->text, err);
      for (int j = 0; j < i; j++) close(fds[j]);
      return 0;
    }
    if (i == 0) {
      *ex = e;
      *bs = b;
    } else if (e.size != ex->size || e.flags != ex->flags) {
      logf_("%s: connection %d reports a different size or flags; dropped", ep->text, i + 1);
      close(fd);
      for (int j = 0; j < i; j++) close(fds[j]);
      return 0;
    }
    fds[i] = fd;
    if (i == 0 && n > 1 && !(e.flags & NBD_TFLAG_CAN_MULTI_CONN)) {
      logf_("%s: the server does not set NBD_FLAG_CAN_MULTI_CONN: using 1 connection", ep->text);
      return 1;
    }
  }
  return n;
}

/* Sleeps up to ms, waking early on a signal. */
static void nap(int ms) {
  struct pollfd p = {g_sigpipe[0], POLLIN, 0};
  if (!g_stop) poll(&p, 1, ms);
}

static int write_pid_file(const struct opts *o, pid_t pid) {
  char tmp[300];
  snprintf(tmp, sizeof tmp, "%s.tmp", o->pid_file);
  FILE *f = fopen(tmp, "w");
  if (!f) return -errno;
  fprintf(f, "%ld\n", (long)pid);
  if (fclose(f) != 0 || rename(tmp, o->pid_file) != 0) return -errno;
  return 0;
}

/* Stops the daemon named by the pid file, if it is one of ours and alive. */
static void stop_daemon(const struct opts *o) {
  FILE *f = fopen(o->pid_file, "r");
  if (!f) return;
  long pid = 0;
  int ok = fscanf(f, "%ld", &pid) == 1;
  fclose(f);
  if (!ok || pid <= 1 || pid == getpid()) return;
  char path[64], comm[64] = {0};
  snprintf(path, sizeof path, "/proc/%ld/comm", pid);
  FILE *c = fopen(path, "r");
  if (!c) return;
  ok = fgets(comm, sizeof comm, c) != NULL;
  fclose(c);
  if (!ok || strncmp(comm, "xdevice-nbd-att", 15) != 0) return;
  if (kill((pid_t)pid, SIGTERM) == 0) {
    for (int i = 0; i < 50 && kill((pid_t)pid, 0) == 0; i++) usleep(100 * 1000);
    logf_("stopped the daemon (pid %ld)", pid);
  }
}

static int open_netlink(struct nbd_nl *nl) {
  int r = nbd_nl_open(nl);
  if (r == -ENOENT) {
    logf_("the kernel has no \"nbd\" generic-netlink family: load the nbd module (modprobe nbd)");
    return 5;
  }
  if (r) {
    logf_("netlink: %s", strerror(-r));
    return 1;
  }
  return 0;
}

/* --probe: the handshake with every endpoint, on stdout one line each. */
static int do_probe(const struct opts *o) {
  int bad = 0;
  for (int i = 0; i < o->n_endpoints; i++) {
    int fds[MAX_CONNECTIONS];
    struct nbdp_export ex;
    uint32_t bs;
    int n = dial_endpoint(o, &o->endpoints[i], o->connections, fds, &ex, &bs);
    for (int j = 0; j < n; j++) close(fds[j]);
    if (n == 0) {
      printf("%s: failed\n", o->endpoints[i].text);
      bad = 1;
      continue;
    }
    printf("%s: export \"%s\" size %llu block %u flags 0x%x connections %d\n", o->endpoints[i].text, o->export_name,
           (unsigned long long)ex.size, bs, ex.flags, n);
  }
  return bad;
}

static int do_status(const struct opts *o) {
  struct nbd_nl nl;
  int rc = open_netlink(&nl);
  if (rc) return rc;
  int connected = 0;
  int r = nbd_nl_status(&nl, o->index, &connected);
  nbd_nl_close(&nl);
  if (r) {
    logf_("status: %s", strerror(-r));
    return 1;
  }
  printf("/dev/%s: %s\n", o->device, connected ? "attached" : "not attached");
  return connected ? 0 : 3;
}

static int do_disconnect(const struct opts *o) {
  struct nbd_nl nl;
  int rc = open_netlink(&nl);
  if (rc) return rc;
  stop_daemon(o);
  int r = nbd_nl_disconnect(&nl, o->index);
  nbd_nl_close(&nl);
  unlink(o->pid_file);
  if (r) {
    logf_("disconnect: %s", strerror(-r));
    return 1;
  }
  logf_("disconnected");
  return 0;
}

/* Replaces `dead` of the `total` connections: endpoints in turn, backing off
 * from 200 ms to 5 s, until one answers or we are told to stop. Connections
 * reported dead meanwhile (each has its own LINK_DEAD) join the same round.
 * 0, or -1 on a stop or when the device is no longer attached. */
static int reconnect(const struct opts *o, struct nbd_nl *nl, int dead, int total, const struct nbdp_export *want, int *next_ep) {
  int backoff = 200;
  for (long attempt = 1; !g_stop; attempt++) {
    int more = nbd_nl_drain_link_dead(nl, o->index);
    if (more > 0) {
      dead = dead + more > total ? total : dead + more;
      logf_("%d connection%s dead now", dead, dead == 1 ? "" : "s");
    }
    const struct nbd_endpoint *ep = &o->endpoints[*next_ep];
    int fds[MAX_CONNECTIONS];
    struct nbdp_export ex;
    uint32_t bs;
    int n = dial_endpoint(o, ep, dead, fds, &ex, &bs);
    if (n > 0 && (ex.size != want->size || ex.flags != want->flags)) {
      logf_("%s: export changed (size %llu flags 0x%x, attached with %llu 0x%x): not used", ep->text, (unsigned long long)ex.size,
            ex.flags, (unsigned long long)want->size, want->flags);
      for (int i = 0; i < n; i++) close(fds[i]);
      n = 0;
    }
    if (n > 0) {
      struct nbd_nl_config c = {.index = o->index, .fds = fds, .nfds = n};
      int r = nbd_nl_reconfigure(nl, &c);
      for (int i = 0; i < n; i++) close(fds[i]); /* the kernel holds its own reference */
      if (r == 0) {
        logf_("reconnected %d connection%s to %s (attempt %ld)", n, n == 1 ? "" : "s", ep->text, attempt);
        return 0;
      }
      logf_("NBD_CMD_RECONFIGURE: %s", strerror(-r));
    }
    /* Detached meanwhile (no daemon was told): stop trying. */
    int connected = 1;
    if ((n > 0 || attempt % 5 == 0) && nbd_nl_status(nl, o->index, &connected) == 0 && !connected) {
      logf_("the device is no longer attached; exiting");
      return -1;
    }
    *next_ep = (*next_ep + 1) % o->n_endpoints;
    nap(backoff);
    if (backoff < 5000) backoff = backoff * 2 > 5000 ? 5000 : backoff * 2;
  }
  return -1;
}

static int run(const struct opts *o) {
  struct nbd_nl nl;
  int rc = open_netlink(&nl);
  if (rc) return rc;
  int r = nbd_nl_subscribe(&nl);
  if (r) {
    logf_("subscribing to %s: %s", "nbd_mc_group", strerror(-r));
    return 1;
  }
  int fds[MAX_CONNECTIONS], n = 0, ep_i = 0;
  struct nbdp_export ex;
  uint32_t bs = 0;
  for (; ep_i < o->n_endpoints && n == 0; ep_i++) n = dial_endpoint(o, &o->endpoints[ep_i], o->connections, fds, &ex, &bs);
  if (n == 0) {
    logf_("no endpoint could be negotiated; not attached");
    return 1;
  }
  ep_i--;
  struct nbd_nl_config c = {.index = o->index, .fds = fds, .nfds = n, .size_bytes = ex.size, .block_size = bs,
                            .server_flags = ex.flags, .timeout_s = (uint64_t)o->timeout_s,
                            .dead_conn_timeout_s = (uint64_t)o->dead_conn_timeout_s};
  uint32_t index = o->index;
  r = nbd_nl_connect(&nl, &c, &index);
  for (int i = 0; i < n; i++) close(fds[i]);
  if (r) {
    logf_("NBD_CMD_CONNECT: %s%s", strerror(-r), r == -EBUSY ? " (the device is in use: detach it first)" : "");
    return 1;
  }
  logf_("attached export \"%s\" at %s: %llu bytes, block size %u, flags 0x%x, %d connection%s, timeout %ld s, dead-conn-timeout %ld s",
        o->export_name, o->endpoints[ep_i].text, (unsigned long long)ex.size, bs, ex.flags, n, n == 1 ? "" : "s", o->timeout_s,
        o->dead_conn_timeout_s);

  int daemonised = 0;
  if (!o->foreground) {
    /* The parent reports success once the device is attached; the child keeps it
     * so. The parent writes the child's pid file before it exits, so whoever
     * waited for it (xdevice-cli, systemd) finds the file. */
    pid_t pid = fork();
    if (pid < 0) {
      logf_("fork: %s (staying in the foreground)", strerror(errno));
    } else if (pid > 0) {
      r = write_pid_file(o, pid);
      if (r) logf_("pid file %s: %s (--disconnect will not stop the daemon)", o->pid_file, strerror(-r));
      _exit(0);
    } else {
      daemonised = 1;
      setsid();
      if (chdir("/") != 0) logf_("chdir /: %s", strerror(errno));
      int null = open("/dev/null", O_RDWR);
      if (null >= 0) {
        dup2(null, 0);
        dup2(null, 1);
        if (null > 2) close(null);
      }
    }
  }
  if (!daemonised) {
    r = write_pid_file(o, getpid());
    if (r) logf_("pid file %s: %s (--disconnect will not stop this daemon)", o->pid_file, strerror(-r));
  }
  logf_("watching for dead connections (pid %ld)", (long)getpid());

  int ret = 0;
  while (!g_stop) {
    struct pollfd p[2] = {{nl.ev_fd, POLLIN, 0}, {g_sigpipe[0], POLLIN, 0}};
    int pr = poll(p, 2, STATUS_EVERY_MS);
    if (pr < 0) {
      if (errno == EINTR) continue;
      logf_("poll: %s", strerror(errno));
      ret = 1;
      break;
    }
    if (pr == 0) {
      /* Detached behind our back (nbd-client -d, another NBD_CMD_DISCONNECT): no
       * notification says so, hence the look now and then. */
      int connected = 1;
      if (nbd_nl_status(&nl, o->index, &connected) == 0 && !connected) {
        logf_("the device is no longer attached; exiting");
        break;
      }
      continue;
    }
    if (!(p[0].revents & POLLIN)) continue;
    int dead = nbd_nl_drain_link_dead(&nl, o->index);
    if (dead < 0) {
      logf_("reading notifications: %s", strerror(-dead));
      ret = 1;
      break;
    }
    if (dead == 0) continue;
    if (dead > n) dead = n;
    logf_("%d connection%s dead (NBD_CMD_LINK_DEAD): reconnecting", dead, dead == 1 ? "" : "s");
    if (reconnect(o, &nl, dead, n, &ex, &ep_i)) {
      if (!g_stop) ret = 1;
      break;
    }
  }
  if (g_stop) logf_("signal %d: exiting; the device stays attached (xdevice-nbd-attach --disconnect /dev/%s detaches it)", (int)g_stop, o->device);
  nbd_nl_close(&nl);
  /* Remove the pid file only if it is still ours. */
  FILE *f = fopen(o->pid_file, "r");
  long pid = 0;
  if (f) {
    if (fscanf(f, "%ld", &pid) == 1 && pid == (long)getpid()) unlink(o->pid_file);
    fclose(f);
  }
  return ret;
}

int main(int argc, char **argv) {
  struct opts o;
  if (parse_opts(argc, argv, &o)) {
    fputs(USAGE, stderr);
    return 2;
  }
  g_dev = o.probe ? "probe" : o.device;
  if (pipe2(g_sigpipe, O_CLOEXEC | O_NONBLOCK) < 0) return perror("pipe2"), 1;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);
  if (o.probe) return do_probe(&o);
  if (o.status) return do_status(&o);
  return o.disconnect ? do_disconnect(&o) : run(&o);
}
