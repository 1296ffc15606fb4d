#include "sd_notify.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstring>

namespace xdevice {

int SdNotify(const std::string& state, const std::string& socket_path, const char** syscall) {
  *syscall = "sendto";
  if (socket_path.empty()) return 1;
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  // systemd also accepts vsock: addresses; XDevice runs on the host itself.
  if (socket_path[0] != '/' && socket_path[0] != '@') return EAFNOSUPPORT;
  if (socket_path.size() > sizeof(address.sun_path)) return ENAMETOOLONG;
  std::memcpy(address.sun_path, socket_path.data(), socket_path.size());
  socklen_t length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + socket_path.size());
  if (socket_path[0] == '@') {
    address.sun_path[0] = '\0';  // abstract namespace: the length, not a NUL, ends the name
  } else if (socket_path.size() < sizeof(address.sun_path)) {
    length += 1;  // include the terminating NUL of a path name
  }
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *syscall = "socket";
    return errno;
  }
  int err = 0;
  ssize_t sent;
  do {
    sent = sendto(fd, state.data(), state.size(), MSG_NOSIGNAL | MSG_DONTWAIT,
                  reinterpret_cast<const sockaddr*>(&address), length);
  } while (sent < 0 && errno == EINTR);
  if (sent < 0) err = errno;
  close(fd);
  return err;
}

}  // namespace xdevice
