// One I/O thread per open file. A dedicated thread (rather than libuv's shared
// pool) gives submission order per file for free and costs one wake-up per
// burst: ops submitted while the thread is busy are picked up without any
// signalling.
#pragma once

#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "io_op.h"
#include "io_queue.h"

namespace xdevice {

class Completions;

class FileQueue : public IoQueue {
 public:
  FileQueue(int fd, Completions* completions);
  ~FileQueue() override;  // joins the thread; call after the close op settled, or Abandon() first
  FileQueue(const FileQueue&) = delete;
  FileQueue& operator=(const FileQueue&) = delete;

  void Submit(Op* op) override;  // JS thread
  // Environment teardown: stop after the current op; queued ops are dropped
  // (their promises can no longer be settled) and the descriptor is closed.
  void Abandon() override;
  int fd() const { return fd_; }

 private:
  void Run();

  const int fd_;
  Completions* const completions_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Op*> queue_;
  bool sleeping_ = false;
  bool stop_ = false;
  bool closed_ = false;  // the close op ran: the thread is exiting on its own
  std::thread thread_;
};

}  // namespace xdevice
