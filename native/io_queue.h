// What a file's operations are handed to: its own I/O thread (file_queue.h)
// or the environment's io_uring (uring.h). Either way the operations of one
// file run and settle in submission order.
#pragma once

namespace xdevice {

struct Op;

class IoQueue {
 public:
  virtual ~IoQueue() = default;
  virtual void Submit(Op* op) = 0;  // JS thread
  // Environment teardown: queued ops are dropped (their promises can no
  // longer be settled) and the descriptor is closed unless already closed.
  virtual void Abandon() = 0;
};

}  // namespace xdevice
