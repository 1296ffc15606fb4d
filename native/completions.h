// The way back from the I/O threads to the JS thread: one uv_async per
// environment, one queue of finished ops. Finished ops are settled in the
// order their threads posted them, which keeps each file's submission order.
#pragma once

#include <napi.h>
#include <uv.h>

#include <mutex>
#include <vector>

#include "io_op.h"

namespace xdevice {

class Completions {
 public:
  explicit Completions(Napi::Env env);
  ~Completions();
  Completions(const Completions&) = delete;
  Completions& operator=(const Completions&) = delete;

  // JS thread: an op was handed to an I/O thread; keep the loop alive for it.
  void Started();
  // Any thread.
  void Post(Op* op);
  // JS thread, outside any JS callback: settles `ops` now, in order, and
  // empties it (the io_uring path reaps on the JS thread and needs no hop).
  void SettleNow(std::vector<Op*>& ops);

 private:
  static void OnAsync(uv_async_t* handle);
  void Drain();
  void Settle(Op* op);

  napi_env env_;
  uv_async_t* async_;
  Napi::ObjectReference resource_;
  napi_async_context context_ = nullptr;
  size_t pending_ = 0;  // JS thread only

  std::mutex mutex_;
  std::vector<Op*> done_;
  std::vector<Op*> draining_;  // reused to avoid an allocation per wake-up
};

}  // namespace xdevice
