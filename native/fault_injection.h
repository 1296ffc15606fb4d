// A test hook: make data-path syscalls fail with a chosen errno, or slow them
// down, so tests can prove that callers fail closed (or keep their promises
// under a slow disk) without needing broken hardware. Process-wide; off unless
// a test turns it on.
#pragma once

#include <cstdint>

namespace xdevice {

enum class FaultSite { kWrite, kFdatasync };

struct FaultSpec {
  int fdatasyncErrno = 0;
  int writeErrno = 0;
  // Matching calls that still succeed before failures start; once failing,
  // every matching call fails until the spec is cleared (a dead disk stays dead).
  int64_t afterCalls = 0;
  // Restrict to one descriptor; -1 matches every descriptor.
  int fd = -1;
  // Sleep this long on the I/O thread before every matching pwrite, pwritev
  // and fdatasync (a slow disk). Independent of afterCalls: it starts at once.
  int64_t delayUs = 0;
  // A short write: the first write syscall of each matching write (each
  // write of a pwriteBatch) moves at most this many bytes, as a kernel may;
  // the rest must follow. 0 leaves writes whole. Independent of afterCalls.
  int64_t shortWriteBytes = 0;
};

void SetFaultInjection(const FaultSpec* spec);  // nullptr clears
// Called on the I/O thread just before the syscall. Sleeps for the injected
// delay (cut short when the spec is replaced or cleared), then returns 0 when
// the call should proceed, otherwise the errno to fail it with.
int InjectedFault(FaultSite site, int fd);

// The same hook taken apart, for the io_uring path, whose submissions run on
// the JS thread and must never sleep there: the delay a matching call should
// wait first (0 for none) and the generation of the spec it came from (a
// new spec ends a wait early), then the errno verdict, judged without
// sleeping once the wait is over. InjectedFault == sleep(InjectedDelayUs)
// then InjectedErrno.
int64_t InjectedDelayUs(int fd, uint64_t* generation);
uint64_t FaultGeneration();
int InjectedErrno(FaultSite site, int fd);
// The cap on the next write syscall of a matching write (0: none).
int64_t InjectedShortWriteBytes(int fd);

}  // namespace xdevice
