{
  "targets": [
    {
      "target_name": "xdevice",
      "sources": [
        "native/addon.cc",
        "native/completions.cc",
        "native/crc32c.cc",
        "native/errors.cc",
        "native/fault_injection.cc",
        "native/file_queue.cc",
        "native/io_op.cc",
        "native/sd_notify.cc",
        "native/uring.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++1y", "-std=gnu++14"],
      "cflags_cc": ["-std=gnu++17", "-fexceptions", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]
    },
    {
      "target_name": "xdevice-nbd-attach",
      "type": "executable",
      "sources": [
        "native/attach/xdevice-nbd-attach.c",
        "native/attach/nbd_handshake.c",
        "native/attach/nbd_netlink.c",
        "native/attach/nbd_parse.c"
      ],
      "cflags": ["-std=gnu11", "-O2", "-Wall", "-Wextra"]
    }
  ]
}
