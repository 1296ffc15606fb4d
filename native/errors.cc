#include "errors.h"

#include <uv.h>

#include <string>

namespace xdevice {

Napi::Error ErrnoError(Napi::Env env, int err, const char* syscall, const char* path) {
  // libuv's error codes on Unix are negated errno values, which gives us the
  // same names and messages node:fs uses without a table of our own.
  const char* code = uv_err_name(-err);
  std::string message = std::string(code) + ": " + uv_strerror(-err) + ", " + syscall;
  if (path != nullptr) message += std::string(" '") + path + "'";
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("code", Napi::String::New(env, code));
  error.Set("errno", Napi::Number::New(env, -err));
  error.Set("syscall", Napi::String::New(env, syscall));
  if (path != nullptr) error.Set("path", Napi::String::New(env, path));
  return error;
}

}  // namespace xdevice
