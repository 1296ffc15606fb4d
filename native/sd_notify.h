// The systemd readiness protocol (sd_notify(3)) without libsystemd: one
// datagram to $NOTIFY_SOCKET, which may be a path or an abstract socket ("@name").
#pragma once

#include <string>

namespace xdevice {

// Returns 0 when sent, 1 when no socket is configured (not under systemd), or
// a positive errno. `syscall` names the call that failed. Never blocks.
int SdNotify(const std::string& state, const std::string& socket_path, const char** syscall);

}  // namespace xdevice
