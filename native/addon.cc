// The xdevice native addon: durable file I/O off the event loop, aligned
// buffers, CRC32C and sd_notify. Mechanism only; every policy (when to sync,
// what to retry, how to fall back) belongs to the TypeScript callers.
//
// Threading: XDEVICE_IO picks the I/O path once per environment, at load.
// 'threads': each file opened through openFile gets its own I/O thread
// (file_queue.h), so all operations on one descriptor run in submission order
// and a slow fdatasync on one file never delays another; results come back
// through one uv_async per environment (completions.h). 'uring': one
// io_uring per environment, submitted and reaped on the JS thread
// (uring.h), with the same per-file order; when the kernel refuses io_uring
// the thread path is used and ioPath() says why.

#include <fcntl.h>
#include <sys/file.h>
#include <linux/falloc.h>
#include <napi.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <unordered_map>

#include "completions.h"
#include "crc32c.h"
#include "errors.h"
#include "fault_injection.h"
#include "file_queue.h"
#include "io_op.h"
#include "sd_notify.h"
#include "uring.h"

namespace xdevice {

namespace {

constexpr double kMaxSafeInteger = 9007199254740991.0;

int ArgFd(const Napi::CallbackInfo& info, size_t i) {
  Napi::Env env = info.Env();
  if (i >= info.Length() || !info[i].IsNumber()) throw Napi::TypeError::New(env, "fd must be a number");
  double v = info[i].As<Napi::Number>().DoubleValue();
  if (!(v >= 0 && v <= 2147483647.0 && std::floor(v) == v)) throw Napi::RangeError::New(env, "fd must be a non-negative int32");
  return static_cast<int>(v);
}

int64_t ArgOffset(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Napi::Env env = info.Env();
  if (i >= info.Length() || !info[i].IsNumber()) throw Napi::TypeError::New(env, std::string(name) + " must be a number");
  double v = info[i].As<Napi::Number>().DoubleValue();
  if (!(v >= 0 && v <= kMaxSafeInteger && std::floor(v) == v)) {
    throw Napi::RangeError::New(env, std::string(name) + " must be a non-negative safe integer");
  }
  return static_cast<int64_t>(v);
}

iovec ArgBytes(Napi::Env env, const Napi::Value& value, const char* name) {
  if (!value.IsTypedArray() || value.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    throw Napi::TypeError::New(env, std::string(name) + " must be a Buffer or Uint8Array");
  }
  Napi::Uint8Array bytes = value.As<Napi::Uint8Array>();
  return iovec{bytes.Data(), bytes.ByteLength()};
}

bool OptBool(const Napi::Object& options, const char* key, bool fallback) {
  Napi::Value v = options.Get(key);
  return v.IsUndefined() ? fallback : v.ToBoolean().Value();
}

class Addon;

// open(2) can block (NFS, a slow directory lookup): it runs on libuv's pool.
class OpenWorker : public Napi::AsyncWorker {
 public:
  OpenWorker(Napi::Env env, Addon* addon, std::string path, int flags, mode_t mode, bool direct)
      : Napi::AsyncWorker(env, "xdevice:open"),
        addon_(addon),
        path_(std::move(path)),
        flags_(flags),
        mode_(mode),
        direct_(direct),
        deferred_(Napi::Promise::Deferred::New(env)) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    int flags = flags_ | (direct_ ? O_DIRECT : 0);
    do {
      fd_ = open(path_.c_str(), flags, mode_);
    } while (fd_ < 0 && errno == EINTR);
    if (fd_ < 0 && errno == EINVAL && direct_) {
      // tmpfs and some FUSE filesystems refuse O_DIRECT: report direct=false
      // and let the caller rely on fdatasync alone.
      direct_ = false;
      do {
        fd_ = open(path_.c_str(), flags_, mode_);
      } while (fd_ < 0 && errno == EINTR);
    }
    if (fd_ < 0) err_ = errno;
  }

  void OnOK() override;

 private:
  Addon* addon_;
  std::string path_;
  int flags_;
  mode_t mode_;
  bool direct_;
  int fd_ = -1;
  int err_ = 0;
  Napi::Promise::Deferred deferred_;
};

// The default of XDEVICE_IO. Measured with bench:wal (both paths in one run,
// on the 2-core VM the project benchmarks on), uring was no cheaper: QD1
// 4 KiB write+fdatasync commits/s and CPU µs per commit were within run-to-
// run noise of the threads path, and a little behind on average. The
// kernel still hops threads for us: fdatasync always runs on an io_uring
// worker, and an O_DIRECT write's completion is task work on the loop's
// thread. The older path stays the default until a measurement says otherwise.
constexpr const char* kDefaultIoPath = "threads";

class Addon : public Napi::Addon<Addon> {
 public:
  Addon(Napi::Env env, Napi::Object exports) : completions_(std::make_unique<Completions>(env)) {
    const char* chosen = std::getenv("XDEVICE_IO");
    requested_ = chosen != nullptr && *chosen != '\0' ? chosen : kDefaultIoPath;
    if (requested_ == "uring") {
      ring_ = Uring::Create(env, completions_.get(), &fallback_reason_);
    } else if (requested_ != "threads") {
      throw Napi::Error::New(env, "XDEVICE_IO must be 'uring' or 'threads', not '" + requested_ + "'");
    }
    DefineAddon(exports, {
        InstanceMethod("openFile", &Addon::OpenFile),
        InstanceMethod("closeFile", &Addon::CloseFile),
        InstanceMethod("pwrite", &Addon::Pwrite),
        InstanceMethod("pwritev", &Addon::Pwritev),
        InstanceMethod("pwriteBatch", &Addon::PwriteBatch),
        InstanceMethod("pread", &Addon::Pread),
        InstanceMethod("fdatasync", &Addon::Fdatasync),
        InstanceMethod("fallocate", &Addon::Fallocate),
        InstanceMethod("punchHole", &Addon::PunchHole),
        InstanceMethod("fstat", &Addon::Fstat),
        InstanceMethod("openFileCount", &Addon::OpenFileCount),
        InstanceMethod("allocAligned", &Addon::AllocAligned),
        InstanceMethod("crc32c", &Addon::Crc32cAny),
        InstanceMethod("crc32cSoftware", &Addon::Crc32cSoft),
        InstanceMethod("crc32cHardware", &Addon::Crc32cHard),
        InstanceMethod("crc32cImplementation", &Addon::Crc32cImplementation),
        InstanceMethod("crc32cCopy", &Addon::Crc32cCopyJs),
        InstanceMethod("sdNotify", &Addon::SdNotifyJs),
        InstanceMethod("lockFile", &Addon::LockFileJs),
        InstanceMethod("setFaultInjection", &Addon::SetFaultInjectionJs),
        InstanceMethod("ioPath", &Addon::IoPath),
    });
  }

  ~Addon() {
    for (auto& [fd, queue] : files_) {
      queue->Abandon();
      delete queue;
    }
    files_.clear();
  }

  void Adopt(int fd) {
    if (ring_) {
      files_[fd] = ring_->Adopt(fd);
    } else {
      files_[fd] = new FileQueue(fd, completions_.get());
    }
  }

 private:
  Napi::Value OpenFile(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "path must be a string");
    std::string path = info[0].As<Napi::String>().Utf8Value();
    bool direct = false;
    bool dsync = false;
    bool create = false;
    bool read_only = false;
    mode_t mode = 0644;
    if (info.Length() > 1 && info[1].IsObject()) {
      Napi::Object options = info[1].As<Napi::Object>();
      direct = OptBool(options, "direct", false);
      dsync = OptBool(options, "dsync", false);
      create = OptBool(options, "create", false);
      read_only = OptBool(options, "readOnly", false);
      Napi::Value m = options.Get("mode");
      if (m.IsNumber()) mode = static_cast<mode_t>(m.As<Napi::Number>().Uint32Value() & 07777);
    }
    int flags = O_CLOEXEC | (read_only ? O_RDONLY : O_RDWR);
    if (create) flags |= O_CREAT;
    if (dsync) flags |= O_DSYNC;
    auto* worker = new OpenWorker(env, this, std::move(path), flags, mode, direct);
    Napi::Promise promise = worker->Promise();
    worker->Queue();
    return promise;
  }

  // Hands an op to its file's thread, or rejects it with EBADF when the
  // descriptor was not opened through openFile (or is already closing).
  Napi::Value Submit(Napi::Env env, std::unique_ptr<Op> op) {
    Napi::Promise promise = op->deferred.Promise();
    auto it = files_.find(op->fd);
    if (it == files_.end()) {
      op->deferred.Reject(ErrnoError(env, EBADF, SyscallOf(op->kind)).Value());
      return promise;
    }
    IoQueue* queue = it->second;
    if (op->kind == OpKind::kClose) {
      files_.erase(it);
      op->queue = queue;
    }
    completions_->Started();
    queue->Submit(op.release());
    return promise;
  }

  Napi::Value CloseFile(const Napi::CallbackInfo& info) {
    return Submit(info.Env(), std::make_unique<Op>(info.Env(), OpKind::kClose, ArgFd(info, 0)));
  }

  Napi::Value Pwrite(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto op = std::make_unique<Op>(env, OpKind::kPwrite, ArgFd(info, 0));
    if (info.Length() < 2) throw Napi::TypeError::New(env, "buffer is required");
    op->iov.push_back(ArgBytes(env, info[1], "buffer"));
    op->position = ArgOffset(info, 2, "position");
    op->keepAlive = Napi::Persistent(info[1]);
    return Submit(env, std::move(op));
  }

  Napi::Value Pwritev(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto op = std::make_unique<Op>(env, OpKind::kPwritev, ArgFd(info, 0));
    if (info.Length() < 2 || !info[1].IsArray()) throw Napi::TypeError::New(env, "buffers must be an array");
    Napi::Array buffers = info[1].As<Napi::Array>();
    const uint32_t count = buffers.Length();
    op->iov.reserve(count);
    for (uint32_t i = 0; i < count; i++) op->iov.push_back(ArgBytes(env, buffers.Get(i), "buffers[i]"));
    op->position = ArgOffset(info, 2, "position");
    // The array keeps its buffers alive; callers must not edit it until the promise settles.
    op->keepAlive = Napi::Persistent(info[1]);
    return Submit(env, std::move(op));
  }

  Napi::Value PwriteBatch(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto op = std::make_unique<Op>(env, OpKind::kPwriteBatch, ArgFd(info, 0));
    if (info.Length() < 3 || !info[1].IsArray() || !info[2].IsArray()) throw Napi::TypeError::New(env, "buffers and positions must be arrays");
    Napi::Array buffers = info[1].As<Napi::Array>();
    Napi::Array positions = info[2].As<Napi::Array>();
    const uint32_t count = buffers.Length();
    if (positions.Length() != count) throw Napi::TypeError::New(env, "one position per buffer");
    op->iov.reserve(count);
    op->positions.reserve(count);
    for (uint32_t i = 0; i < count; i++) {
      op->iov.push_back(ArgBytes(env, buffers.Get(i), "buffers[i]"));
      Napi::Value p = positions.Get(i);
      if (!p.IsNumber()) throw Napi::TypeError::New(env, "positions[i] must be a number");
      const double d = p.As<Napi::Number>().DoubleValue();
      if (!(d >= 0 && d <= kMaxSafeInteger && std::floor(d) == d)) throw Napi::RangeError::New(env, "positions[i] must be a non-negative safe integer");
      op->positions.push_back(static_cast<int64_t>(d));
    }
    // The array keeps its buffers alive; callers must not edit it until the promise settles.
    op->keepAlive = Napi::Persistent(info[1]);
    return Submit(env, std::move(op));
  }

  Napi::Value Pread(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto op = std::make_unique<Op>(env, OpKind::kPread, ArgFd(info, 0));
    if (info.Length() < 2) throw Napi::TypeError::New(env, "buffer is required");
    op->iov.push_back(ArgBytes(env, info[1], "buffer"));
    op->position = ArgOffset(info, 2, "position");
    op->keepAlive = Napi::Persistent(info[1]);
    return Submit(env, std::move(op));
  }

  Napi::Value Fdatasync(const Napi::CallbackInfo& info) {
    return Submit(info.Env(), std::make_unique<Op>(info.Env(), OpKind::kFdatasync, ArgFd(info, 0)));
  }

  Napi::Value Fallocate(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto op = std::make_unique<Op>(env, OpKind::kFallocate, ArgFd(info, 0));
    op->position = ArgOffset(info, 1, "offset");
    op->length = ArgOffset(info, 2, "length");
    if (op->length == 0) throw Napi::RangeError::New(env, "length must be positive");
    const bool keep_size = info.Length() > 3 && info[3].ToBoolean().Value();
    op->mode = keep_size ? FALLOC_FL_KEEP_SIZE : 0;
    return Submit(env, std::move(op));
  }

  Napi::Value PunchHole(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto op = std::make_unique<Op>(env, OpKind::kPunchHole, ArgFd(info, 0));
    op->position = ArgOffset(info, 1, "offset");
    op->length = ArgOffset(info, 2, "length");
    if (op->length == 0) throw Napi::RangeError::New(env, "length must be positive");
    op->mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
    return Submit(env, std::move(op));
  }

  Napi::Value Fstat(const Napi::CallbackInfo& info) {
    return Submit(info.Env(), std::make_unique<Op>(info.Env(), OpKind::kFstat, ArgFd(info, 0)));
  }

  Napi::Value OpenFileCount(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), static_cast<double>(files_.size()));
  }

  Napi::Value AllocAligned(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const int64_t size = ArgOffset(info, 0, "size");
    int64_t alignment = 4096;
    if (info.Length() > 1 && !info[1].IsUndefined()) alignment = ArgOffset(info, 1, "alignment");
    if (alignment < static_cast<int64_t>(sizeof(void*)) || (alignment & (alignment - 1)) != 0) {
      throw Napi::RangeError::New(env, "alignment must be a power of two >= pointer size");
    }
    if (size > static_cast<int64_t>(SIZE_MAX / 2)) throw Napi::RangeError::New(env, "size too large");
    void* data = nullptr;
    // Never hand out uninitialised memory: padding of aligned writes ends up on disk.
    int err = posix_memalign(&data, static_cast<size_t>(alignment), size > 0 ? static_cast<size_t>(size) : 1);
    if (err != 0) throw ErrnoError(env, err, "posix_memalign");
    std::memset(data, 0, size > 0 ? static_cast<size_t>(size) : 1);
    napi_value buffer;
    napi_status status = napi_create_external_buffer(
        env, static_cast<size_t>(size), data,
        [](napi_env finalize_env, void* finalize_data, void* hint) {
          std::free(finalize_data);
          int64_t ignored;
          napi_adjust_external_memory(finalize_env, -reinterpret_cast<intptr_t>(hint), &ignored);
        },
        reinterpret_cast<void*>(static_cast<intptr_t>(size)), &buffer);
    if (status == napi_ok) {
      Napi::MemoryManagement::AdjustExternalMemory(env, size);
      return Napi::Value(env, buffer);
    }
    std::free(data);
    if (status != napi_no_external_buffers_allowed) NAPI_THROW_IF_FAILED(env, status, Napi::Value());
    // Runtimes with the V8 sandbox forbid external memory: over-allocate a
    // normal buffer (its backing store never moves) and return an aligned view.
    Napi::Buffer<uint8_t> backing = Napi::Buffer<uint8_t>::New(env, static_cast<size_t>(size + alignment));
    const uintptr_t address = reinterpret_cast<uintptr_t>(backing.Data());
    const size_t skip = static_cast<size_t>((alignment - static_cast<int64_t>(address % alignment)) % alignment);
    std::memset(backing.Data(), 0, backing.Length());
    Napi::Function subarray = backing.Get("subarray").As<Napi::Function>();
    return subarray.Call(backing, {Napi::Number::New(env, static_cast<double>(skip)),
                                   Napi::Number::New(env, static_cast<double>(skip + size))});
  }

  static uint32_t ArgInitial(const Napi::CallbackInfo& info) {
    if (info.Length() < 2 || info[1].IsUndefined()) return 0;
    if (!info[1].IsNumber()) throw Napi::TypeError::New(info.Env(), "initial must be a number");
    return info[1].As<Napi::Number>().Uint32Value();
  }

  Napi::Value Crc32cAny(const Napi::CallbackInfo& info) {
    iovec bytes = ArgBytes(info.Env(), info.Length() > 0 ? info[0] : info.Env().Undefined(), "data");
    return Napi::Number::New(info.Env(),
                             Crc32c(ArgInitial(info), static_cast<const uint8_t*>(bytes.iov_base), bytes.iov_len));
  }

  Napi::Value Crc32cSoft(const Napi::CallbackInfo& info) {
    iovec bytes = ArgBytes(info.Env(), info.Length() > 0 ? info[0] : info.Env().Undefined(), "data");
    return Napi::Number::New(
        info.Env(), Crc32cSoftware(ArgInitial(info), static_cast<const uint8_t*>(bytes.iov_base), bytes.iov_len));
  }

  Napi::Value Crc32cHard(const Napi::CallbackInfo& info) {
    if (!Crc32cHardwareAvailable()) throw Napi::Error::New(info.Env(), "this CPU has no SSE4.2 CRC32 instruction");
    iovec bytes = ArgBytes(info.Env(), info.Length() > 0 ? info[0] : info.Env().Undefined(), "data");
    return Napi::Number::New(
        info.Env(), Crc32cHardware(ArgInitial(info), static_cast<const uint8_t*>(bytes.iov_base), bytes.iov_len));
  }

  // crc32cCopy(dst, at, src, initial): copies src into dst at `at` and
  // returns crc32c(src, initial), reading src once.
  Napi::Value Crc32cCopyJs(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 4) throw Napi::TypeError::New(env, "crc32cCopy(dst, at, src, initial)");
    iovec dst = ArgBytes(env, info[0], "dst");
    int64_t at = ArgOffset(info, 1, "at");
    iovec src = ArgBytes(env, info[2], "src");
    if (!info[3].IsNumber()) throw Napi::TypeError::New(env, "initial must be a number");
    uint32_t initial = info[3].As<Napi::Number>().Uint32Value();
    if (static_cast<uint64_t>(at) > dst.iov_len || src.iov_len > dst.iov_len - static_cast<size_t>(at)) {
      throw Napi::RangeError::New(env, "src does not fit in dst at that offset");
    }
    auto* out = static_cast<uint8_t*>(dst.iov_base) + at;
    const auto* in = static_cast<const uint8_t*>(src.iov_base);
    if (src.iov_len > 0 && out < in + src.iov_len && in < out + src.iov_len) {
      throw Napi::RangeError::New(env, "src and dst overlap");
    }
    return Napi::Number::New(env, Crc32cCopy(initial, out, in, src.iov_len));
  }

  Napi::Value Crc32cImplementation(const Napi::CallbackInfo& info) {
    return Napi::String::New(info.Env(), Crc32cHardwareAvailable() ? "sse4.2" : "software");
  }

  // Opens (creating) `path` and takes an exclusive flock on it without
  // waiting. Returns the descriptor, which the caller keeps open for as long
  // as it holds the lock (the kernel drops the lock when the process exits),
  // or -1 if another open file description holds it. Synchronous: it runs
  // once, at start-up, before anything else touches the data directory.
  Napi::Value LockFileJs(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "path must be a string");
    std::string path = info[0].As<Napi::String>().Utf8Value();
    int fd;
    do {
      fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) throw ErrnoError(env, errno, "open", path.c_str());
    int rc;
    do {
      rc = flock(fd, LOCK_EX | LOCK_NB);
    } while (rc < 0 && errno == EINTR);
    if (rc < 0) {
      int err = errno;
      close(fd);
      if (err == EWOULDBLOCK) return Napi::Number::New(env, -1);
      throw ErrnoError(env, err, "flock", path.c_str());
    }
    return Napi::Number::New(env, fd);
  }

  Napi::Value SdNotifyJs(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "state must be a string");
    std::string state = info[0].As<Napi::String>().Utf8Value();
    std::string socket_path;
    if (info.Length() > 1 && info[1].IsString()) {
      socket_path = info[1].As<Napi::String>().Utf8Value();
    } else if (const char* from_env = std::getenv("NOTIFY_SOCKET")) {
      socket_path = from_env;
    }
    const char* syscall = nullptr;
    int result = SdNotify(state, socket_path, &syscall);
    if (result == 1) return Napi::Boolean::New(env, false);
    if (result != 0) throw ErrnoError(env, result, syscall, socket_path.c_str());
    return Napi::Boolean::New(env, true);
  }

  Napi::Value SetFaultInjectionJs(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || info[0].IsNull() || info[0].IsUndefined()) {
      SetFaultInjection(nullptr);
      return env.Undefined();
    }
    if (!info[0].IsObject()) throw Napi::TypeError::New(env, "spec must be an object or null");
    Napi::Object options = info[0].As<Napi::Object>();
    FaultSpec spec;
    auto number = [&](const char* key, int64_t fallback) -> int64_t {
      Napi::Value v = options.Get(key);
      return v.IsNumber() ? v.As<Napi::Number>().Int64Value() : fallback;
    };
    spec.fdatasyncErrno = static_cast<int>(number("fdatasyncErrno", 0));
    spec.writeErrno = static_cast<int>(number("pwriteErrno", 0));
    spec.afterCalls = number("afterCalls", 0);
    spec.fd = static_cast<int>(number("fd", -1));
    spec.delayUs = number("delayUs", 0);
    if (spec.delayUs < 0) throw Napi::RangeError::New(env, "delayUs must not be negative");
    spec.shortWriteBytes = number("shortWriteBytes", 0);
    if (spec.shortWriteBytes < 0) throw Napi::RangeError::New(env, "shortWriteBytes must not be negative");
    SetFaultInjection(&spec);
    return env.Undefined();
  }

  Napi::Value IoPath(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Object result = Napi::Object::New(env);
    result.Set("path", Napi::String::New(env, ring_ ? "uring" : "threads"));
    result.Set("requested", Napi::String::New(env, requested_));
    if (!fallback_reason_.empty()) result.Set("fallbackReason", Napi::String::New(env, fallback_reason_));
    if (ring_) {
      result.Set("enters", Napi::Number::New(env, static_cast<double>(ring_->enters())));
      result.Set("sqes", Napi::Number::New(env, static_cast<double>(ring_->sqes())));
      result.Set("resubmits", Napi::Number::New(env, static_cast<double>(ring_->resubmits())));
    }
    return result;
  }

  std::unique_ptr<Completions> completions_;
  // After completions_: destroyed first, while the completions still exist.
  std::unique_ptr<Uring> ring_;
  std::string requested_;
  std::string fallback_reason_;
  std::unordered_map<int, IoQueue*> files_;
};

void OpenWorker::OnOK() {
  Napi::Env env = Env();
  if (err_ != 0) {
    deferred_.Reject(ErrnoError(env, err_, "open", path_.c_str()).Value());
    return;
  }
  addon_->Adopt(fd_);
  Napi::Object result = Napi::Object::New(env);
  result.Set("fd", Napi::Number::New(env, fd_));
  result.Set("direct", Napi::Boolean::New(env, direct_));
  deferred_.Resolve(result);
}

}  // namespace

}  // namespace xdevice

// The registration macro pastes the class name into an identifier: no '::'.
using XDeviceAddon = xdevice::Addon;
NODE_API_ADDON(XDeviceAddon)
