// One I/O request: filled in on the JS thread, executed on a file's I/O
// thread, settled back on the JS thread. Napi handles are touched only on the
// JS thread; the I/O thread sees plain data.
#pragma once

#include <napi.h>
#include <sys/stat.h>
#include <sys/uio.h>

#include <cstdint>
#include <vector>

namespace xdevice {

class IoQueue;

enum class OpKind { kPwrite, kPwritev, kPwriteBatch, kPread, kFdatasync, kFallocate, kPunchHole, kFstat, kClose };

struct Op {
  explicit Op(Napi::Env env, OpKind k, int file) : kind(k), fd(file), deferred(Napi::Promise::Deferred::New(env)) {}

  const OpKind kind;
  const int fd;
  std::vector<iovec> iov;  // pwrite/pread use iov[0]
  int64_t position = 0;    // pwrite/pread offset, fallocate offset
  std::vector<int64_t> positions;  // kPwriteBatch: where iov[i] goes
  int64_t length = 0;      // fallocate/punch length
  int mode = 0;            // fallocate mode

  // Results, written by the I/O thread before the op is posted back.
  int64_t result = 0;
  int err = 0;
  const char* syscall = nullptr;
  struct stat st {};

  // io_uring path only (JS thread): progress through iov (transfers advance
  // it in place; a pwriteBatch's next write), how many of its writes the
  // fault hook has judged (each is judged once, when first submitted), and
  // whether it is settled.
  size_t iovFirst = 0;
  size_t judged = 0;
  bool finished = false;

  // JS-thread only.
  Napi::Promise::Deferred deferred;
  Napi::Reference<Napi::Value> keepAlive;  // the buffer (or array of buffers) under I/O
  IoQueue* queue = nullptr;                // kClose: the queue to delete once settled
};

// Runs the syscall(s) of `op` on the calling (I/O) thread.
void Execute(Op* op);
// The syscall an op of this kind runs (errors name it).
const char* SyscallOf(OpKind kind);

}  // namespace xdevice
