// The io_uring path: every file of an environment shares one ring, driven
// from the JS thread. Ops queued during a loop turn go to the kernel in one
// io_uring_enter just before the loop waits (a uv_prepare), each file's ops
// as a chain of linked SQEs (IOSQE_IO_LINK), so a pwrite and the fdatasync
// queued behind it are one submission and the sync starts only once the
// write has fully succeeded. Opt-in (XDEVICE_IO=uring): see kDefaultIoPath
// in addon.cc for why it is not the default. Completions come back through an eventfd
// registered with the ring and watched by a uv_poll on the same loop: no
// thread of ours and no thread hop between the kernel and the promise.
//
// Ordering per file is what the thread path gives: a file has at most one
// chain in flight and its ops run in submission order. The kernel breaks a
// chain at the first failure or short transfer (the rest complete with
// -ECANCELED); a short write or read is continued from where it stopped and
// the cancelled ops are submitted again behind it. The one exception is an
// fdatasync queued directly behind a write that failed: it fails too
// (ECANCELED), since what it was to make durable was never written.
//
// Raw syscalls and <linux/io_uring.h> only (no liburing), and the whole path
// compiles out on headers too old for it; Uring::Create then refuses and the
// addon keeps the thread queue.
#pragma once

#include <napi.h>
#include <uv.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "io_op.h"
#include "io_queue.h"

namespace xdevice {

class Completions;
class Uring;
class UringFile;

// One SQE's worth of an op: a pwrite, one write of a pwriteBatch, up to
// IOV_MAX buffers of a pwritev, a read, a sync, a fallocate or a close.
struct Unit {
  UringFile* file;
  Op* op;
  size_t sub;           // pwriteBatch: the write; pwritev: the first buffer
  size_t count;         // pwritev: buffers in this unit
  uint64_t expected;    // bytes the op still wanted from this unit (a shorter result is a short transfer)
  uint64_t limit;       // the short-write hook's cap on this SQE's length (0: none)
  int32_t res;          // the CQE's result, or a verdict decided without the kernel
  bool submitted;       // false: no SQE (an injected fault, or nothing left to transfer)
  uint32_t sqeBytes;    // what the SQE asked to transfer: its result when its CQE was skipped
};

class UringFile : public IoQueue {
 public:
  UringFile(int fd, Uring* ring) : fd_(fd), ring_(ring) { units_.reserve(72); }
  ~UringFile() override = default;
  void Submit(Op* op) override;
  void Abandon() override;

 private:
  friend class Uring;
  // Submits the next chain, or settles what needs no kernel (fstat, injected
  // faults) into `settled`, until a chain is in flight, a fault delay holds
  // the head, or nothing is queued. `room`: SQEs the ring can still take.
  void Pump(std::vector<Op*>& settled, size_t& room);
  // Builds the chain into units_; false when a fault delay must pass first.
  bool BuildChain(size_t room);
  // All units of the chain are back: settle what finished, keep the rest queued.
  void ChainDone(std::vector<Op*>& settled);
  void Fail(Op* op, int err, std::vector<Op*>& settled);

  const int fd_;
  Uring* const ring_;
  std::deque<Op*> queue_;
  std::vector<Unit> units_;  // the chain in flight; not resized while it is
  size_t outstanding_ = 0;   // its SQEs not yet completed
  bool ready_ = false;       // listed in the ring's ready list
  bool closed_ = false;      // the close op ran
  // Fault-injection delay of the head unit (test hook).
  bool delaying_ = false;
  bool delayServed_ = false;
  uint64_t delayUntilNs_ = 0;
  uint64_t delayGeneration_ = 0;
};

class Uring {
 public:
  // The ring, or nullptr with the reason in *why (ENOSYS, EPERM, disabled by
  // sysctl, an old kernel without an op we need, or the test hook
  // XDEVICE_IO_URING_SETUP_ERRNO=<errno name or number> pretending setup failed).
  static std::unique_ptr<Uring> Create(Napi::Env env, Completions* completions, std::string* why);
  ~Uring();
  Uring(const Uring&) = delete;
  Uring& operator=(const Uring&) = delete;

  UringFile* Adopt(int fd) { return new UringFile(fd, this); }

  // Counters for benchmarks and tests: io_uring_enter calls that submitted,
  // SQEs submitted, and units submitted again after a short transfer or a
  // broken chain.
  uint64_t enters() const { return enters_; }
  uint64_t sqes() const { return sqes_; }
  uint64_t resubmits() const { return resubmits_; }
  bool cqeSkip() const { return cqe_skip_; }

 private:
  friend class UringFile;
  Uring(Napi::Env env, Completions* completions);
  bool Init(std::string* why);

  void MarkReady(UringFile* file);
  void StartDelay(UringFile* file);
  // Fills SQEs for every ready file, enters the kernel once, settles.
  void Flush();
  void Reap();
  void Enter();
  void ArmPrepare();
  bool QueueSqe(Unit* unit, bool link);
  void SettleAndFlush(std::vector<Op*>& settled);

  static void OnPrepare(uv_prepare_t* handle);
  static void OnPoll(uv_poll_t* handle, int status, int events);
  static void OnDelayTick(uv_timer_t* handle);

  Completions* const completions_;
  int ring_fd_ = -1;
  int event_fd_ = -1;
  unsigned entries_ = 0;
  void* sq_ptr_ = nullptr;
  size_t sq_bytes_ = 0;
  void* cq_ptr_ = nullptr;
  size_t cq_bytes_ = 0;
  void* sqes_ptr_ = nullptr;
  size_t sqes_bytes_ = 0;
  // Ring fields (pointers into the shared mappings).
  unsigned* sq_head_ = nullptr;
  unsigned* sq_tail_ = nullptr;
  unsigned sq_mask_ = 0;
  unsigned* sq_array_ = nullptr;
  unsigned* cq_head_ = nullptr;
  unsigned* cq_tail_ = nullptr;
  unsigned cq_mask_ = 0;
  void* cqes_ = nullptr;

  // XDEVICE_IO_URING_CQE_SKIP=1 (5.17+): IOSQE_CQE_SKIP_SUCCESS on every
  // SQE of a chain but its last, so a chain posts one CQE, the last one's or
  // the first failure's (the kernel then skips the CQEs of the ones it
  // cancels). Off by default: measured, it halved QD1 commits/s and added
  // ~100 µs CPU per commit instead of saving a wake-up.
  bool cqe_skip_ = false;
  unsigned to_submit_ = 0;  // SQEs filled but not yet taken by the kernel
  size_t in_flight_ = 0;    // SQEs submitted and not yet reaped
  bool flushing_ = false;
  std::vector<UringFile*> ready_;
  std::vector<UringFile*> ready_swap_;
  std::vector<UringFile*> delaying_;
  std::vector<Op*> settled_;

  uv_prepare_t* prepare_ = nullptr;
  uv_poll_t* poll_ = nullptr;
  uv_timer_t* delay_timer_ = nullptr;
  bool prepare_active_ = false;
  bool timer_active_ = false;

  uint64_t enters_ = 0;
  uint64_t sqes_ = 0;
  uint64_t resubmits_ = 0;
};

}  // namespace xdevice
