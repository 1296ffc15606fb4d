// errno -> Node error, shaped like the errors of node:fs (code, errno, syscall),
// so callers can switch on err.code the same way for both.
#pragma once

#include <napi.h>

namespace xdevice {

// `err` is a positive errno value. The resulting error carries `code`
// ("EIO"), `errno` (negative, as node:fs does), `syscall` and, when given, `path`.
Napi::Error ErrnoError(Napi::Env env, int err, const char* syscall, const char* path = nullptr);

}  // namespace xdevice
