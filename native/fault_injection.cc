#include "fault_injection.h"

#include <atomic>
#include <mutex>

namespace xdevice {

namespace {

std::atomic<bool> g_active{false};  // keeps the disarmed fast path lock-free
std::mutex g_mutex;
FaultSpec g_spec;
int64_t g_remaining = 0;

}  // namespace

void SetFaultInjection(const FaultSpec* spec) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (spec == nullptr) {
    g_spec = FaultSpec{};
    g_remaining = 0;
    g_active.store(false, std::memory_order_release);
    return;
  }
  g_spec = *spec;
  g_remaining = spec->afterCalls;
  g_active.store(true, std::memory_order_release);
}

int InjectedFault(FaultSite site, int fd) {
  if (!g_active.load(std::memory_order_acquire)) return 0;
  std::lock_guard<std::mutex> lock(g_mutex);
  const int err = site == FaultSite::kWrite ? g_spec.writeErrno : g_spec.fdatasyncErrno;
  if (err == 0) return 0;
  if (g_spec.fd >= 0 && g_spec.fd != fd) return 0;
  if (g_remaining > 0) {
    g_remaining--;
    return 0;
  }
  return err;
}

}  // namespace xdevice
