#include "io_op.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>

#include "fault_injection.h"

namespace xdevice {

namespace {

// Writes every byte or fails: a short write to a regular file means the
// device or filesystem ran out of something, and the caller needs to know
// which errno, not to resubmit a remainder.
void WriteAll(Op* op) {
  op->syscall = op->kind == OpKind::kPwrite ? "pwrite" : "pwritev";
  if (int injected = InjectedFault(FaultSite::kWrite, op->fd)) {
    op->err = injected;
    return;
  }
  std::vector<iovec>& iov = op->iov;
  size_t first = 0;
  int64_t offset = op->position;
  int64_t total = 0;
  int64_t short_cap = InjectedShortWriteBytes(op->fd);
  while (first < iov.size()) {
    if (iov[first].iov_len == 0) {
      first++;
      continue;
    }
    const int count = static_cast<int>(std::min<size_t>(iov.size() - first, IOV_MAX));
    ssize_t n;
    if (short_cap > 0) {
      n = pwrite(op->fd, iov[first].iov_base, std::min<size_t>(iov[first].iov_len, static_cast<size_t>(short_cap)), offset);
      short_cap = 0;
    } else {
      n = count == 1 ? pwrite(op->fd, iov[first].iov_base, iov[first].iov_len, offset)
                     : pwritev(op->fd, &iov[first], count, offset);
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      op->err = errno;
      return;
    }
    if (n == 0) {
      op->err = ENOSPC;  // no progress on a regular file: nothing else explains it
      return;
    }
    total += n;
    offset += n;
    size_t advance = static_cast<size_t>(n);
    while (advance > 0 && first < iov.size()) {
      if (advance >= iov[first].iov_len) {
        advance -= iov[first].iov_len;
        first++;
      } else {
        iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + advance;
        iov[first].iov_len -= advance;
        advance = 0;
      }
    }
  }
  op->result = total;
}

// Several independent writes in one trip to the I/O thread (one thread wake
// instead of one per write), done in order, each complete or the batch fails
// at the first error. Each counts as one call for fault injection, like
// separate pwrites would.
void WriteBatch(Op* op) {
  op->syscall = "pwrite";
  int64_t total = 0;
  for (size_t i = 0; i < op->iov.size(); i++) {
    if (int injected = InjectedFault(FaultSite::kWrite, op->fd)) {
      op->err = injected;
      return;
    }
    char* base = static_cast<char*>(op->iov[i].iov_base);
    const size_t want = op->iov[i].iov_len;
    size_t done = 0;
    int64_t short_cap = InjectedShortWriteBytes(op->fd);
    while (done < want) {
      size_t len = want - done;
      if (short_cap > 0) {
        len = std::min<size_t>(len, static_cast<size_t>(short_cap));
        short_cap = 0;
      }
      ssize_t n = pwrite(op->fd, base + done, len, op->positions[i] + static_cast<int64_t>(done));
      if (n < 0) {
        if (errno == EINTR) continue;
        op->err = errno;
        return;
      }
      if (n == 0) {
        op->err = ENOSPC;
        return;
      }
      done += static_cast<size_t>(n);
    }
    total += static_cast<int64_t>(want);
  }
  op->result = total;
}

// Reads until the buffer is full or end of file.
void ReadAll(Op* op) {
  op->syscall = "pread";
  char* base = static_cast<char*>(op->iov[0].iov_base);
  size_t want = op->iov[0].iov_len;
  size_t done = 0;
  while (done < want) {
    ssize_t n = pread(op->fd, base + done, want - done, op->position + static_cast<int64_t>(done));
    if (n < 0) {
      if (errno == EINTR) continue;
      op->err = errno;
      return;
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  op->result = static_cast<int64_t>(done);
}

}  // namespace

const char* SyscallOf(OpKind kind) {
  switch (kind) {
    case OpKind::kPwrite: return "pwrite";
    case OpKind::kPwritev: return "pwritev";
    case OpKind::kPwriteBatch: return "pwrite";
    case OpKind::kPread: return "pread";
    case OpKind::kFdatasync: return "fdatasync";
    case OpKind::kFallocate:
    case OpKind::kPunchHole: return "fallocate";
    case OpKind::kFstat: return "fstat";
    case OpKind::kClose: return "close";
  }
  return "unknown";
}

void Execute(Op* op) {
  switch (op->kind) {
    case OpKind::kPwrite:
    case OpKind::kPwritev:
      WriteAll(op);
      return;
    case OpKind::kPwriteBatch:
      WriteBatch(op);
      return;
    case OpKind::kPread:
      ReadAll(op);
      return;
    case OpKind::kFdatasync:
      op->syscall = "fdatasync";
      if (int injected = InjectedFault(FaultSite::kFdatasync, op->fd)) {
        op->err = injected;
        return;
      }
      if (fdatasync(op->fd) != 0) op->err = errno;
      return;
    case OpKind::kFallocate:
    case OpKind::kPunchHole:
      op->syscall = "fallocate";
      while (fallocate(op->fd, op->mode, op->position, op->length) != 0) {
        if (errno == EINTR) continue;
        op->err = errno;
        return;
      }
      return;
    case OpKind::kFstat:
      op->syscall = "fstat";
      if (fstat(op->fd, &op->st) != 0) op->err = errno;
      return;
    case OpKind::kClose:
      op->syscall = "close";
      // Linux releases the descriptor even when close reports EINTR: never retry.
      if (close(op->fd) != 0 && errno != EINTR) op->err = errno;
      return;
  }
}

}  // namespace xdevice
