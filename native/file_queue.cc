#include "file_queue.h"

#include <unistd.h>

#include "completions.h"

namespace xdevice {

FileQueue::FileQueue(int fd, Completions* completions)
    : fd_(fd), completions_(completions), thread_(&FileQueue::Run, this) {}

FileQueue::~FileQueue() {
  if (thread_.joinable()) thread_.join();
}

void FileQueue::Submit(Op* op) {
  bool wake;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    queue_.push_back(op);
    wake = sleeping_;
    sleeping_ = false;
  }
  if (wake) wake_.notify_one();
}

void FileQueue::Abandon() {
  bool close_fd;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
    close_fd = !closed_;
  }
  wake_.notify_one();
  if (thread_.joinable()) thread_.join();
  // Only reached at environment teardown: the queued ops and their napi
  // handles are deliberately leaked, since nothing can settle them any more.
  if (close_fd) close(fd_);
}

void FileQueue::Run() {
  for (;;) {
    Op* op;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      while (queue_.empty() && !stop_) {
        sleeping_ = true;
        wake_.wait(lock);
      }
      if (stop_) return;
      sleeping_ = false;
      op = queue_.front();
      queue_.pop_front();
    }
    Execute(op);
    if (op->kind == OpKind::kClose) {
      {
        std::lock_guard<std::mutex> lock(mutex_);
        closed_ = true;
      }
      // After posting, the JS thread may delete this queue at any moment.
      completions_->Post(op);
      return;
    }
    completions_->Post(op);
  }
}

}  // namespace xdevice
