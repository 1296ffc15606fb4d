// The io_uring path (uring.h). Over 500 lines because the ring (setup,
// submission, reaping) and the per-file chains it drives (building a chain,
// settling it, continuing short transfers, fault-hook verdicts) are one
// state machine: split, each half would reach into the other's fields.
#include "uring.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "completions.h"
#include "fault_injection.h"

#if defined(__has_include)
#if __has_include(<linux/io_uring.h>)
#include <linux/io_uring.h>
#endif
#endif

// IORING_FEAT_FAST_POLL came with 5.7: a header that has it also has every
// op used here (WRITE, READ, FALLOCATE and CLOSE are 5.6) and the probe.
#if defined(IORING_FEAT_FAST_POLL) && defined(__NR_io_uring_setup) && defined(__NR_io_uring_enter) && \
    defined(__NR_io_uring_register)
#define XDEVICE_HAVE_URING 1
#include <sys/eventfd.h>
#include <sys/mman.h>
#endif

namespace xdevice {

#ifndef XDEVICE_HAVE_URING

std::unique_ptr<Uring> Uring::Create(Napi::Env, Completions*, std::string* why) {
  *why = "built without io_uring support (linux/io_uring.h missing or older than Linux 5.7)";
  return nullptr;
}
Uring::~Uring() = default;
void UringFile::Submit(Op*) { std::abort(); }
void UringFile::Abandon() {}

#else

namespace {

// SQ entries; the CQ gets twice as many, and at most this many SQEs are in
// flight, so the CQ can never overflow.
constexpr unsigned kEntries = 256;
// The most SQEs one file links into a chain (a long chain only delays the
// next file's ops behind its own tail in the same submission).
constexpr size_t kChainMax = 64;
// A unit's result before its CQE (no CQE carries it: results are >= -4095).
constexpr int32_t kNoCqe = INT32_MIN;

int SysSetup(unsigned entries, io_uring_params* p) {
  return static_cast<int>(syscall(__NR_io_uring_setup, entries, p));
}
int SysEnter(int fd, unsigned to_submit) {
  return static_cast<int>(syscall(__NR_io_uring_enter, fd, to_submit, 0, 0, nullptr, 0));
}
int SysRegister(int fd, unsigned op, void* arg, unsigned nr) {
  return static_cast<int>(syscall(__NR_io_uring_register, fd, op, arg, nr));
}

std::string ErrnoText(int err) { return std::string(uv_err_name(-err)) + " (" + uv_strerror(-err) + ")"; }

// XDEVICE_IO_URING_SETUP_ERRNO: a test hook making setup fail as a kernel,
// a seccomp filter or a sysctl would. A number or one of a few names.
int RefusalFromEnv() {
  const char* v = std::getenv("XDEVICE_IO_URING_SETUP_ERRNO");
  if (v == nullptr || *v == '\0') return 0;
  if (std::strcmp(v, "ENOSYS") == 0) return ENOSYS;
  if (std::strcmp(v, "EPERM") == 0) return EPERM;
  if (std::strcmp(v, "ENOMEM") == 0) return ENOMEM;
  if (std::strcmp(v, "EINVAL") == 0) return EINVAL;
  const int n = std::atoi(v);
  return n > 0 ? n : EPERM;
}

// An SQE's length is 32 bits: a larger buffer goes in parts, each part
// ending short of what the op still wants, which continues it.
// The kernel takes such a part as a whole success, so nothing may be linked
// behind one.
constexpr uint64_t kSqeBytesMax = 1u << 30;
uint32_t SqeLength(uint64_t len) { return len > kSqeBytesMax ? static_cast<uint32_t>(kSqeBytesMax) : static_cast<uint32_t>(len); }

bool IsWrite(OpKind k) { return k == OpKind::kPwrite || k == OpKind::kPwritev || k == OpKind::kPwriteBatch; }

// Consumes `n` bytes from iov starting at *first (skipping emptied buffers).
void Advance(std::vector<iovec>& iov, size_t* first, uint64_t n) {
  while (*first < iov.size()) {
    iovec& v = iov[*first];
    if (n < v.iov_len) {
      v.iov_base = static_cast<char*>(v.iov_base) + n;
      v.iov_len -= n;
      return;
    }
    n -= v.iov_len;
    v.iov_len = 0;
    (*first)++;
    if (n == 0) {
      while (*first < iov.size() && iov[*first].iov_len == 0) (*first)++;
      return;
    }
  }
}

}  // namespace

Uring::Uring(Napi::Env env, Completions* completions) : completions_(completions) {}

std::unique_ptr<Uring> Uring::Create(Napi::Env env, Completions* completions, std::string* why) {
  if (int refused = RefusalFromEnv()) {
    *why = "io_uring_setup: " + ErrnoText(refused) + " (XDEVICE_IO_URING_SETUP_ERRNO)";
    return nullptr;
  }
  if (FILE* f = std::fopen("/proc/sys/kernel/io_uring_disabled", "r")) {
    int disabled = 0;
    const bool read = std::fscanf(f, "%d", &disabled) == 1;
    std::fclose(f);
    if (read && disabled != 0) {
      *why = "io_uring disabled by sysctl kernel.io_uring_disabled=" + std::to_string(disabled);
      return nullptr;
    }
  }
  std::unique_ptr<Uring> ring(new Uring(env, completions));
  if (!ring->Init(why)) return nullptr;
  uv_loop_t* loop = nullptr;
  NAPI_THROW_IF_FAILED(env, napi_get_uv_event_loop(env, &loop), nullptr);
  ring->prepare_ = new uv_prepare_t;
  uv_prepare_init(loop, ring->prepare_);
  ring->prepare_->data = ring.get();
  uv_unref(reinterpret_cast<uv_handle_t*>(ring->prepare_));
  ring->delay_timer_ = new uv_timer_t;
  uv_timer_init(loop, ring->delay_timer_);
  ring->delay_timer_->data = ring.get();
  uv_unref(reinterpret_cast<uv_handle_t*>(ring->delay_timer_));
  // Unreferenced: Completions keeps the loop alive while any op is pending.
  ring->poll_ = new uv_poll_t;
  uv_poll_init(loop, ring->poll_, ring->event_fd_);
  ring->poll_->data = ring.get();
  uv_unref(reinterpret_cast<uv_handle_t*>(ring->poll_));
  uv_poll_start(ring->poll_, UV_READABLE, &Uring::OnPoll);
  return ring;
}

bool Uring::Init(std::string* why) {
  io_uring_params p;
  std::memset(&p, 0, sizeof p);
  ring_fd_ = SysSetup(kEntries, &p);
  if (ring_fd_ < 0) {
    *why = "io_uring_setup: " + ErrnoText(errno);
    return false;
  }
  if (!(p.features & IORING_FEAT_SINGLE_MMAP) || !(p.features & IORING_FEAT_NODROP)) {
    *why = "io_uring: kernel older than 5.5 (no IORING_FEAT_SINGLE_MMAP/NODROP)";
    return false;
  }
  entries_ = p.sq_entries;
#ifdef IORING_FEAT_CQE_SKIP
  const char* skip = std::getenv("XDEVICE_IO_URING_CQE_SKIP");
  cqe_skip_ = (p.features & IORING_FEAT_CQE_SKIP) != 0 && skip != nullptr && std::strcmp(skip, "1") == 0;
#endif
  sq_bytes_ = p.sq_off.array + p.sq_entries * sizeof(unsigned);
  cq_bytes_ = p.cq_off.cqes + p.cq_entries * sizeof(io_uring_cqe);
  if (cq_bytes_ > sq_bytes_) sq_bytes_ = cq_bytes_;
  sq_ptr_ = mmap(nullptr, sq_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring_fd_, IORING_OFF_SQ_RING);
  if (sq_ptr_ == MAP_FAILED) {
    sq_ptr_ = nullptr;
    *why = "io_uring: mmap of the rings: " + ErrnoText(errno);
    return false;
  }
  cq_ptr_ = sq_ptr_;  // one mapping holds both rings
  sqes_bytes_ = p.sq_entries * sizeof(io_uring_sqe);
  sqes_ptr_ = mmap(nullptr, sqes_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring_fd_, IORING_OFF_SQES);
  if (sqes_ptr_ == MAP_FAILED) {
    sqes_ptr_ = nullptr;
    *why = "io_uring: mmap of the SQEs: " + ErrnoText(errno);
    return false;
  }
  char* sq = static_cast<char*>(sq_ptr_);
  sq_head_ = reinterpret_cast<unsigned*>(sq + p.sq_off.head);
  sq_tail_ = reinterpret_cast<unsigned*>(sq + p.sq_off.tail);
  sq_mask_ = *reinterpret_cast<unsigned*>(sq + p.sq_off.ring_mask);
  sq_array_ = reinterpret_cast<unsigned*>(sq + p.sq_off.array);
  for (unsigned i = 0; i < p.sq_entries; i++) sq_array_[i] = i;  // SQE i always sits in slot i
  char* cq = static_cast<char*>(cq_ptr_);
  cq_head_ = reinterpret_cast<unsigned*>(cq + p.cq_off.head);
  cq_tail_ = reinterpret_cast<unsigned*>(cq + p.cq_off.tail);
  cq_mask_ = *reinterpret_cast<unsigned*>(cq + p.cq_off.ring_mask);
  cqes_ = cq + p.cq_off.cqes;

  // Every op this path submits must be there (an old kernel falls back whole).
  const size_t probe_bytes = sizeof(io_uring_probe) + 256 * sizeof(io_uring_probe_op);
  auto* probe = static_cast<io_uring_probe*>(std::calloc(1, probe_bytes));
  if (probe == nullptr || SysRegister(ring_fd_, IORING_REGISTER_PROBE, probe, 256) < 0) {
    const int err = errno;
    std::free(probe);
    *why = "io_uring: IORING_REGISTER_PROBE: " + ErrnoText(err);
    return false;
  }
  const int needed[] = {IORING_OP_WRITE, IORING_OP_WRITEV, IORING_OP_READ, IORING_OP_FSYNC, IORING_OP_FALLOCATE, IORING_OP_CLOSE};
  for (int op : needed) {
    if (op > probe->last_op || !(probe->ops[op].flags & IO_URING_OP_SUPPORTED)) {
      std::free(probe);
      *why = "io_uring: the kernel lacks op " + std::to_string(op);
      return false;
    }
  }
  std::free(probe);

  event_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (event_fd_ < 0) {
    *why = "eventfd: " + ErrnoText(errno);
    return false;
  }
  if (SysRegister(ring_fd_, IORING_REGISTER_EVENTFD, &event_fd_, 1) < 0) {
    *why = "io_uring: IORING_REGISTER_EVENTFD: " + ErrnoText(errno);
    return false;
  }
  return true;
}

Uring::~Uring() {
  if (poll_ != nullptr) {
    poll_->data = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(poll_), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
  }
  if (prepare_ != nullptr) {
    prepare_->data = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(prepare_), [](uv_handle_t* h) { delete reinterpret_cast<uv_prepare_t*>(h); });
  }
  if (delay_timer_ != nullptr) {
    delay_timer_->data = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(delay_timer_), [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
  }
  if (sqes_ptr_ != nullptr) munmap(sqes_ptr_, sqes_bytes_);
  if (sq_ptr_ != nullptr) munmap(sq_ptr_, sq_bytes_);
  // Closing the ring cancels whatever is still in flight (environment teardown only).
  if (ring_fd_ >= 0) close(ring_fd_);
  if (event_fd_ >= 0) close(event_fd_);
}

void Uring::MarkReady(UringFile* file) {
  if (!file->ready_) {
    file->ready_ = true;
    ready_.push_back(file);
  }
  if (!prepare_active_) {
    prepare_active_ = true;
    uv_prepare_start(prepare_, &Uring::OnPrepare);
  }
}

void Uring::StartDelay(UringFile* file) {
  delaying_.push_back(file);
  if (!timer_active_) {
    timer_active_ = true;
    uv_timer_start(delay_timer_, &Uring::OnDelayTick, 1, 1);
  }
}

void Uring::OnPrepare(uv_prepare_t* handle) {
  auto* self = static_cast<Uring*>(handle->data);
  if (self != nullptr) self->Flush();
}

void Uring::OnPoll(uv_poll_t* handle, int status, int events) {
  auto* self = static_cast<Uring*>(handle->data);
  if (self == nullptr) return;
  uint64_t count;
  while (read(self->event_fd_, &count, sizeof count) < 0 && errno == EINTR) {
  }
  self->Reap();
}

// A test hook's slow disk: re-examined every millisecond, so that a new
// spec (or none) ends a wait at once, as it wakes a sleeping I/O thread.
void Uring::OnDelayTick(uv_timer_t* handle) {
  auto* self = static_cast<Uring*>(handle->data);
  if (self == nullptr) return;
  const uint64_t now = uv_hrtime();
  const uint64_t generation = FaultGeneration();
  size_t kept = 0;
  for (UringFile* f : self->delaying_) {
    if (generation != f->delayGeneration_) {
      f->delaying_ = false;
      f->delayServed_ = false;  // judge the call by the new spec, delay included
    } else if (now >= f->delayUntilNs_) {
      f->delaying_ = false;
      f->delayServed_ = true;
    } else {
      self->delaying_[kept++] = f;
      continue;
    }
    self->MarkReady(f);
  }
  self->delaying_.resize(kept);
  if (kept == 0) {
    self->timer_active_ = false;
    uv_timer_stop(handle);
  }
}

bool Uring::QueueSqe(Unit* unit, bool link) {
  const unsigned tail = *sq_tail_;
  const unsigned slot = tail & sq_mask_;
  io_uring_sqe* sqe = static_cast<io_uring_sqe*>(sqes_ptr_) + slot;
  std::memset(sqe, 0, sizeof *sqe);
  Op* op = unit->op;
  sqe->fd = op->fd;
  switch (op->kind) {
    case OpKind::kPwrite:
    case OpKind::kPwritev:
      if (unit->count == 1) {
        const iovec& v = op->iov[unit->sub];
        sqe->opcode = IORING_OP_WRITE;
        sqe->addr = reinterpret_cast<uint64_t>(v.iov_base);
        sqe->len = SqeLength(unit->limit > 0 && unit->limit < v.iov_len ? unit->limit : v.iov_len);
      } else {
        sqe->opcode = IORING_OP_WRITEV;
        sqe->addr = reinterpret_cast<uint64_t>(&op->iov[unit->sub]);
        sqe->len = static_cast<uint32_t>(unit->count);
      }
      sqe->off = static_cast<uint64_t>(op->position);
      break;
    case OpKind::kPwriteBatch: {
      const iovec& v = op->iov[unit->sub];
      sqe->opcode = IORING_OP_WRITE;
      sqe->addr = reinterpret_cast<uint64_t>(v.iov_base);
      sqe->len = SqeLength(unit->limit > 0 && unit->limit < v.iov_len ? unit->limit : v.iov_len);
      sqe->off = static_cast<uint64_t>(op->positions[unit->sub]);
      break;
    }
    case OpKind::kPread:
      sqe->opcode = IORING_OP_READ;
      sqe->addr = reinterpret_cast<uint64_t>(op->iov[0].iov_base);
      sqe->len = SqeLength(op->iov[0].iov_len);
      sqe->off = static_cast<uint64_t>(op->position);
      break;
    case OpKind::kFdatasync:
      sqe->opcode = IORING_OP_FSYNC;
      sqe->fsync_flags = IORING_FSYNC_DATASYNC;
      break;
    case OpKind::kFallocate:
    case OpKind::kPunchHole:
      sqe->opcode = IORING_OP_FALLOCATE;
      sqe->off = static_cast<uint64_t>(op->position);
      sqe->addr = static_cast<uint64_t>(op->length);
      sqe->len = static_cast<uint32_t>(op->mode);
      break;
    case OpKind::kClose:
      sqe->opcode = IORING_OP_CLOSE;
      break;
    case OpKind::kFstat:
      std::abort();  // runs inline (UringFile::Pump)
  }
  sqe->flags = link ? IOSQE_IO_LINK : 0;
#ifdef IORING_FEAT_CQE_SKIP
  if (link && cqe_skip_) sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
#endif
  switch (op->kind) {
    case OpKind::kPwrite:
    case OpKind::kPwritev:
      unit->sqeBytes = sqe->opcode == IORING_OP_WRITEV ? static_cast<uint32_t>(unit->expected) : sqe->len;
      break;
    case OpKind::kPwriteBatch:
    case OpKind::kPread:
      unit->sqeBytes = sqe->len;
      break;
    default:
      unit->sqeBytes = 0;
  }
  unit->res = kNoCqe;
  sqe->user_data = reinterpret_cast<uint64_t>(unit);
  __atomic_store_n(sq_tail_, tail + 1, __ATOMIC_RELEASE);
  to_submit_++;
  in_flight_++;
  return true;
}

void Uring::Enter() {
  while (to_submit_ > 0) {
    const int n = SysEnter(ring_fd_, to_submit_);
    if (n < 0) {
      if (errno == EINTR) continue;
      // Out of kernel resources for now: the SQEs stay queued and go with the
      // next submission (the prepare handle stays armed to make one).
      if (errno == EAGAIN || errno == EBUSY) {
        ArmPrepare();
        return;
      }
      std::fprintf(stderr, "xdevice: io_uring_enter failed: %s\n", std::strerror(errno));
      std::abort();  // a bad ring or argument: a broken invariant, not an I/O outcome
    }
    enters_++;
    sqes_ += static_cast<uint64_t>(n);
    to_submit_ -= static_cast<unsigned>(n);
    if (n == 0) {
      ArmPrepare();
      return;
    }
  }
}

void Uring::ArmPrepare() {
  if (!prepare_active_) {
    prepare_active_ = true;
    uv_prepare_start(prepare_, &Uring::OnPrepare);
  }
}

void Uring::Flush() {
  if (flushing_) return;
  flushing_ = true;
  // Bounded: each round settles ops, whose continuations may queue more.
  for (int round = 0; round < 64; round++) {
    ready_swap_.clear();
    ready_swap_.swap(ready_);
    size_t room = entries_ - in_flight_;
    for (UringFile* f : ready_swap_) {
      f->ready_ = false;
      f->Pump(settled_, room);
      // Out of room: try again once completions free some.
      if (f->outstanding_ == 0 && !f->delaying_ && !f->queue_.empty()) MarkReady(f);
    }
    Enter();
    if (settled_.empty()) break;
    completions_->SettleNow(settled_);
    if (ready_.empty() || in_flight_ >= entries_) break;
  }
  flushing_ = false;
  if (ready_.empty() && to_submit_ == 0 && prepare_active_) {
    prepare_active_ = false;
    uv_prepare_stop(prepare_);
  }
}

void Uring::Reap() {
  unsigned head = *cq_head_;
  const unsigned tail = __atomic_load_n(cq_tail_, __ATOMIC_ACQUIRE);
  auto* cqes = static_cast<io_uring_cqe*>(cqes_);
  while (head != tail) {
    const io_uring_cqe& cqe = cqes[head & cq_mask_];
    auto* unit = reinterpret_cast<Unit*>(cqe.user_data);
    unit->res = cqe.res;
    head++;
    in_flight_--;
    UringFile* f = unit->file;
    if (--f->outstanding_ == 0) {
      f->ChainDone(settled_);
      if (!f->queue_.empty() && !f->delaying_) MarkReady(f);
    }
  }
  __atomic_store_n(cq_head_, head, __ATOMIC_RELEASE);
  Flush();
  // Flush bails out when re-entered; make sure what was reaped is settled.
  if (!settled_.empty()) completions_->SettleNow(settled_);
}

void UringFile::Submit(Op* op) {
  queue_.push_back(op);
  if (outstanding_ == 0 && !delaying_) ring_->MarkReady(this);
}

void UringFile::Abandon() {
  if (!closed_) close(fd_);
}

void UringFile::Fail(Op* op, int err, std::vector<Op*>& settled) {
  op->err = err;
  op->syscall = SyscallOf(op->kind);
  op->finished = true;
}

void UringFile::Pump(std::vector<Op*>& settled, size_t& room) {
  while (outstanding_ == 0 && !delaying_ && !queue_.empty()) {
    Op* head = queue_.front();
    if (head->kind == OpKind::kFstat) {
      // No wait worth a trip to the kernel's workers: run it in place, in order.
      head->syscall = "fstat";
      if (fstat(fd_, &head->st) != 0) head->err = errno;
      head->finished = true;
      settled.push_back(head);
      queue_.pop_front();
      continue;
    }
    if (room == 0) return;
    if (!BuildChain(room) || units_.empty()) return;  // a fault delay holds the head
    size_t last_real = units_.size();
    for (size_t i = 0; i < units_.size(); i++) {
      if (units_[i].submitted) last_real = i;
    }
    for (size_t i = 0; i < units_.size(); i++) {
      if (!units_[i].submitted) continue;
      ring_->QueueSqe(&units_[i], i != last_real);
      outstanding_++;
      room--;
    }
    if (outstanding_ > 0 && ring_->cqe_skip_) outstanding_ = 1;  // one CQE per chain
    if (outstanding_ > 0) return;
    ChainDone(settled);  // decided without the kernel (faults, empty transfers)
  }
}

bool UringFile::BuildChain(size_t room) {
  units_.clear();
  const size_t cap = room < kChainMax ? room : kChainMax;
  auto add = [&](Op* op, size_t sub, size_t count, uint64_t expected) -> Unit& {
    units_.push_back(Unit{this, op, sub, count, expected, 0, 0, true, 0});
    return units_.back();
  };
  // The fault hook's verdict for the next call at a fault site: 0 go on,
  // 1 stop the chain before it (it needs its own delay first), 2 the delay
  // has started (nothing more this time).
  auto delay_gate = [&]() -> int {
    uint64_t generation = 0;
    const int64_t delay_us = InjectedDelayUs(fd_, &generation);
    if (delay_us <= 0) return 0;
    if (delayServed_ && delayGeneration_ == generation) {
      delayServed_ = false;
      return 0;
    }
    delayServed_ = false;
    if (!units_.empty()) return 1;
    delaying_ = true;
    delayGeneration_ = generation;
    delayUntilNs_ = uv_hrtime() + static_cast<uint64_t>(delay_us) * 1000;
    ring_->StartDelay(this);
    return 2;
  };
  for (size_t qi = 0; qi < queue_.size() && units_.size() < cap; qi++) {
    Op* op = queue_[qi];
    switch (op->kind) {
      case OpKind::kFstat:
        return true;  // runs once everything before it settled
      case OpKind::kClose:
        // Alone: a close must never be run twice, as a resubmitted link could be.
        if (qi == 0) add(op, 0, 0, 0);
        return true;
      case OpKind::kPwrite:
      case OpKind::kPwritev: {
        uint64_t limit = 0;
        if (op->judged == 0) {
          if (int gate = delay_gate()) return gate == 1;
          op->judged = 1;
          if (int err = InjectedErrno(FaultSite::kWrite, fd_)) {
            add(op, 0, 0, 0).res = -err;
            units_.back().submitted = false;
            return true;
          }
          limit = static_cast<uint64_t>(InjectedShortWriteBytes(fd_));
        }
        std::vector<iovec>& iov = op->iov;
        while (op->iovFirst < iov.size() && iov[op->iovFirst].iov_len == 0) op->iovFirst++;
        if (op->iovFirst == iov.size()) {
          add(op, 0, 0, 0).submitted = false;  // nothing to write: done at once
          continue;
        }
        const size_t remaining = iov.size() - op->iovFirst;
        const size_t count = limit > 0 ? 1 : (remaining < IOV_MAX ? remaining : IOV_MAX);
        uint64_t expected = 0;
        for (size_t i = op->iovFirst; i < op->iovFirst + count; i++) expected += iov[i].iov_len;
        add(op, op->iovFirst, count, expected).limit = limit;
        // The rest of this op (and everything behind it) waits for this part.
        if (count < remaining || limit > 0 || expected > kSqeBytesMax) return true;
        continue;
      }
      case OpKind::kPwriteBatch: {
        bool whole = true;
        for (size_t i = op->iovFirst; i < op->iov.size(); i++) {
          if (units_.size() >= cap) {
            whole = false;
            break;
          }
          uint64_t limit = 0;
          if (i >= op->judged) {
            if (int gate = delay_gate()) return gate == 1;
            op->judged = i + 1;
            if (int err = InjectedErrno(FaultSite::kWrite, fd_)) {
              add(op, i, 1, 0).res = -err;
              units_.back().submitted = false;
              return true;
            }
            limit = static_cast<uint64_t>(InjectedShortWriteBytes(fd_));
          }
          const uint64_t len = op->iov[i].iov_len;
          if (len == 0) {
            add(op, i, 1, 0).submitted = false;
            continue;
          }
          add(op, i, 1, len).limit = limit;
          if ((limit > 0 && limit < len) || len > kSqeBytesMax) return true;
        }
        if (op->iovFirst == op->iov.size()) add(op, 0, 0, 0).submitted = false;  // an empty batch
        if (!whole) return true;
        continue;
      }
      case OpKind::kPread:
        if (op->iov[0].iov_len == 0) {
          add(op, 0, 1, 0).submitted = false;
          continue;
        }
        add(op, 0, 1, op->iov[0].iov_len);
        if (op->iov[0].iov_len > kSqeBytesMax) return true;
        continue;
      case OpKind::kFdatasync:
        if (op->judged == 0) {
          if (int gate = delay_gate()) return gate == 1;
          op->judged = 1;
          if (int err = InjectedErrno(FaultSite::kFdatasync, fd_)) {
            add(op, 0, 0, 0).res = -err;
            units_.back().submitted = false;
            return true;
          }
        }
        add(op, 0, 0, 0);
        continue;
      case OpKind::kFallocate:
      case OpKind::kPunchHole:
        add(op, 0, 0, 0);
        continue;
    }
  }
  return true;
}

void UringFile::ChainDone(std::vector<Op*>& settled) {
  if (ring_->cqe_skip_) {
    // One CQE came back: the SQEs before it succeeded whole, those after it
    // were cancelled by the kernel with their CQEs skipped.
    bool seen = false;
    for (Unit& u : units_) {
      if (!u.submitted) continue;
      if (u.res != kNoCqe) {
        seen = true;
      } else {
        u.res = seen ? -ECANCELED : static_cast<int32_t>(u.sqeBytes);
        ring_->in_flight_--;  // done, though no CQE said so
      }
    }
  }
  bool broken = false;
  auto finish = [](Op* op) { op->finished = true; };
  // A write that failed takes the fdatasync queued right behind it down too.
  auto fail_write = [&](Op* op, int err) {
    Fail(op, err, settled);
    broken = true;
    if (!IsWrite(op->kind)) return;
    for (size_t k = 0; k + 1 < queue_.size(); k++) {
      if (queue_[k] != op) continue;
      Op* next = queue_[k + 1];
      if (next->kind == OpKind::kFdatasync && !next->finished) Fail(next, ECANCELED, settled);
      break;
    }
  };
  for (Unit& u : units_) {
    Op* op = u.op;
    if (op->finished || broken) continue;  // a broken chain's rest goes again
    const int res = u.res;
    if (res < 0) {
      fail_write(op, -res);
      continue;
    }
    const uint64_t n = static_cast<uint64_t>(res);
    switch (op->kind) {
      case OpKind::kPwrite:
      case OpKind::kPwritev:
        if (u.expected > 0 && n == 0) {
          fail_write(op, ENOSPC);  // no progress on a regular file: nothing else explains it
          continue;
        }
        Advance(op->iov, &op->iovFirst, n);
        op->position += static_cast<int64_t>(n);
        op->result += static_cast<int64_t>(n);
        if (n < u.expected) {
          broken = true;  // the kernel cancelled what was linked behind: all of it goes again
          ring_->resubmits_++;
          continue;
        }
        while (op->iovFirst < op->iov.size() && op->iov[op->iovFirst].iov_len == 0) op->iovFirst++;
        if (op->iovFirst == op->iov.size()) finish(op);
        continue;
      case OpKind::kPwriteBatch:
        if (u.count == 0) {  // an empty batch
          finish(op);
          continue;
        }
        if (u.expected > 0 && n == 0) {
          fail_write(op, ENOSPC);
          continue;
        }
        if (u.expected > 0) {
          iovec& v = op->iov[u.sub];
          v.iov_base = static_cast<char*>(v.iov_base) + n;
          v.iov_len -= n;
          op->positions[u.sub] += static_cast<int64_t>(n);
          op->result += static_cast<int64_t>(n);
          if (n < u.expected) {
            broken = true;
            ring_->resubmits_++;
            continue;
          }
        }
        op->iovFirst = u.sub + 1;
        if (op->iovFirst == op->iov.size()) finish(op);
        continue;
      case OpKind::kPread:
        if (u.expected == 0 || n == 0) {  // nothing asked, or end of file
          finish(op);
          continue;
        }
        op->iov[0].iov_base = static_cast<char*>(op->iov[0].iov_base) + n;
        op->iov[0].iov_len -= n;
        op->position += static_cast<int64_t>(n);
        op->result += static_cast<int64_t>(n);
        if (n < u.expected) {
          broken = true;  // read on until full or end of file
          ring_->resubmits_++;
          continue;
        }
        finish(op);
        continue;
      case OpKind::kClose:
        closed_ = true;
        finish(op);
        continue;
      default:
        finish(op);
        continue;
    }
  }
  if (broken) {
    for (const Unit& u : units_) {
      if (u.submitted && u.res == -ECANCELED && !u.op->finished) ring_->resubmits_++;
    }
  }
  units_.clear();
  while (!queue_.empty() && queue_.front()->finished) {
    settled.push_back(queue_.front());
    queue_.pop_front();
  }
}

#endif  // XDEVICE_HAVE_URING

}  // namespace xdevice
