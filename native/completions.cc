#include "completions.h"

#include "errors.h"
#include "io_queue.h"

namespace xdevice {

Completions::Completions(Napi::Env env) : env_(env), async_(new uv_async_t) {
  uv_loop_t* loop = nullptr;
  NAPI_THROW_IF_FAILED_VOID(env, napi_get_uv_event_loop(env, &loop));
  uv_async_init(loop, async_, &Completions::OnAsync);
  async_->data = this;
  uv_unref(reinterpret_cast<uv_handle_t*>(async_));
  // Promises settled from a bare uv callback need a callback scope, or their
  // reactions would wait for some unrelated callback to drain microtasks.
  Napi::Object resource = Napi::Object::New(env);
  resource_ = Napi::Persistent(resource);
  NAPI_THROW_IF_FAILED_VOID(env, napi_async_init(env, resource, Napi::String::New(env, "xdevice:io"), &context_));
}

Completions::~Completions() {
  if (context_ != nullptr) napi_async_destroy(env_, context_);
  async_->data = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(async_), [](uv_handle_t* handle) {
    delete reinterpret_cast<uv_async_t*>(handle);
  });
}

void Completions::Started() {
  if (pending_++ == 0) uv_ref(reinterpret_cast<uv_handle_t*>(async_));
}

void Completions::Post(Op* op) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    done_.push_back(op);
  }
  uv_async_send(async_);  // coalesces: one wake-up drains everything posted so far
}

void Completions::OnAsync(uv_async_t* handle) {
  auto* self = static_cast<Completions*>(handle->data);
  if (self != nullptr) self->Drain();
}

void Completions::Drain() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    draining_.swap(done_);
  }
  SettleNow(draining_);
}

void Completions::SettleNow(std::vector<Op*>& ops) {
  if (ops.empty()) return;
  Napi::Env env(env_);
  Napi::HandleScope handles(env);
  {
    Napi::CallbackScope scope(env, context_);
    for (Op* op : ops) {
      Settle(op);
      IoQueue* closed = op->queue;
      delete op;
      delete closed;  // a thread queue's thread already returned after the close op: join is immediate
      pending_--;
    }
  }
  ops.clear();
  if (pending_ == 0) uv_unref(reinterpret_cast<uv_handle_t*>(async_));
}

void Completions::Settle(Op* op) {
  Napi::Env env(env_);
  if (op->err != 0) {
    op->deferred.Reject(ErrnoError(env, op->err, op->syscall).Value());
    return;
  }
  switch (op->kind) {
    case OpKind::kPwrite:
    case OpKind::kPwritev:
    case OpKind::kPwriteBatch:
    case OpKind::kPread:
      op->deferred.Resolve(Napi::Number::New(env, static_cast<double>(op->result)));
      return;
    case OpKind::kFstat: {
      Napi::Object stat = Napi::Object::New(env);
      stat.Set("size", Napi::Number::New(env, static_cast<double>(op->st.st_size)));
      stat.Set("blocks", Napi::Number::New(env, static_cast<double>(op->st.st_blocks)));
      stat.Set("blockSize", Napi::Number::New(env, static_cast<double>(op->st.st_blksize)));
      op->deferred.Resolve(stat);
      return;
    }
    default:
      op->deferred.Resolve(env.Undefined());
      return;
  }
}

}  // namespace xdevice
