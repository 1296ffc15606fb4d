#include "fault_injection.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>

namespace xdevice {

namespace {

std::atomic<bool> g_active{false};  // keeps the disarmed fast path lock-free
std::mutex g_mutex;
std::condition_variable g_changed;  // wakes delayed calls when the spec changes
uint64_t g_generation = 0;
FaultSpec g_spec;
int64_t g_remaining = 0;

// With g_mutex held and the descriptor already matched.
int JudgeLocked(FaultSite site) {
  const int err = site == FaultSite::kWrite ? g_spec.writeErrno : g_spec.fdatasyncErrno;
  if (err == 0) return 0;
  if (g_remaining > 0) {
    g_remaining--;
    return 0;
  }
  return err;
}

}  // namespace

void SetFaultInjection(const FaultSpec* spec) {
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    g_generation++;
    if (spec == nullptr) {
      g_spec = FaultSpec{};
      g_remaining = 0;
      g_active.store(false, std::memory_order_release);
    } else {
      g_spec = *spec;
      g_remaining = spec->afterCalls;
      g_active.store(true, std::memory_order_release);
    }
  }
  // A test that heals a slow disk expects the heal to take effect now, not
  // after a long sleep that started under the old spec.
  g_changed.notify_all();
}

int InjectedFault(FaultSite site, int fd) {
  if (!g_active.load(std::memory_order_acquire)) return 0;
  std::unique_lock<std::mutex> lock(g_mutex);
  if (g_spec.fd >= 0 && g_spec.fd != fd) return 0;
  if (g_spec.delayUs > 0) {
    // wait_for releases the mutex while sleeping, so other files' I/O threads
    // are delayed concurrently rather than one after another.
    const uint64_t generation = g_generation;
    g_changed.wait_for(lock, std::chrono::microseconds(g_spec.delayUs),
                       [&] { return g_generation != generation; });
    if (g_generation != generation) {
      // The spec changed while we slept: judge this call by the new one.
      lock.unlock();
      return InjectedFault(site, fd);
    }
  }
  return JudgeLocked(site);
}

int64_t InjectedDelayUs(int fd, uint64_t* generation) {
  if (!g_active.load(std::memory_order_acquire)) return 0;
  std::lock_guard<std::mutex> lock(g_mutex);
  *generation = g_generation;
  if (g_spec.fd >= 0 && g_spec.fd != fd) return 0;
  return g_spec.delayUs;
}

uint64_t FaultGeneration() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_generation;
}

int InjectedErrno(FaultSite site, int fd) {
  if (!g_active.load(std::memory_order_acquire)) return 0;
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_spec.fd >= 0 && g_spec.fd != fd) return 0;
  return JudgeLocked(site);
}

int64_t InjectedShortWriteBytes(int fd) {
  if (!g_active.load(std::memory_order_acquire)) return 0;
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_spec.fd >= 0 && g_spec.fd != fd) return 0;
  return g_spec.shortWriteBytes;
}

}  // namespace xdevice
