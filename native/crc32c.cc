#include "crc32c.h"

#include <array>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <nmmintrin.h>
#define XDEVICE_X86 1
#endif

namespace xdevice {

namespace {

// The slicing loads words in host order; the tables assume little-endian.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "crc32c slicing-by-8 needs a little-endian host");

constexpr uint32_t kPolyReflected = 0x82F63B78u;

// Slicing-by-8 tables: table[k][b] is the CRC of byte b followed by k zero bytes.
struct Tables {
  std::array<std::array<uint32_t, 256>, 8> t{};
  constexpr Tables() {
    for (uint32_t b = 0; b < 256; b++) {
      uint32_t c = b;
      for (int i = 0; i < 8; i++) c = (c >> 1) ^ ((c & 1u) ? kPolyReflected : 0u);
      t[0][b] = c;
    }
    for (uint32_t b = 0; b < 256; b++) {
      for (size_t k = 1; k < 8; k++) t[k][b] = (t[k - 1][b] >> 8) ^ t[0][t[k - 1][b] & 0xFFu];
    }
  }
};

constexpr Tables kTables{};

}  // namespace

uint32_t Crc32cSoftware(uint32_t crc, const uint8_t* p, size_t n) {
  const auto& t = kTables.t;
  uint32_t c = ~crc;
  while (n > 0 && (reinterpret_cast<uintptr_t>(p) & 7u) != 0) {
    c = t[0][(c ^ *p++) & 0xFFu] ^ (c >> 8);
    n--;
  }
  while (n >= 8) {
    uint32_t lo;
    uint32_t hi;
    std::memcpy(&lo, p, 4);
    std::memcpy(&hi, p + 4, 4);
    lo ^= c;
    c = t[7][lo & 0xFFu] ^ t[6][(lo >> 8) & 0xFFu] ^ t[5][(lo >> 16) & 0xFFu] ^ t[4][lo >> 24] ^
        t[3][hi & 0xFFu] ^ t[2][(hi >> 8) & 0xFFu] ^ t[1][(hi >> 16) & 0xFFu] ^ t[0][hi >> 24];
    p += 8;
    n -= 8;
  }
  while (n-- > 0) c = t[0][(c ^ *p++) & 0xFFu] ^ (c >> 8);
  return ~c;
}

#ifdef XDEVICE_X86

namespace {

// Large buffers run as three interleaved streams of kStripe bytes each: the
// crc32 instruction has a latency of 3 cycles and a throughput of 1, so one
// dependent chain uses a third of the unit. The streams are joined by
// linearity: for the raw register, crc(c, A || B) = shift(crc(c, A)) ^
// crc(0, B), where shift appends kStripe zero bytes; shift is linear in the
// 32-bit register, so four 256-entry tables hold it.
constexpr size_t kStripe = 4096;

struct ShiftTables {
  uint32_t t[4][256];
};

__attribute__((target("sse4.2"))) uint32_t AppendZeros(uint32_t c) {
  uint64_t r = c;
  for (size_t i = 0; i < kStripe / 8; i++) r = _mm_crc32_u64(r, 0);
  return static_cast<uint32_t>(r);
}

const ShiftTables& Shift() {
  static const ShiftTables tables = [] {
    ShiftTables s{};
    for (int k = 0; k < 4; k++) {
      for (uint32_t b = 0; b < 256; b++) s.t[k][b] = AppendZeros(b << (8 * k));
    }
    return s;
  }();
  return tables;
}

inline uint32_t ShiftStripe(const ShiftTables& s, uint32_t c) {
  return s.t[0][c & 0xFFu] ^ s.t[1][(c >> 8) & 0xFFu] ^ s.t[2][(c >> 16) & 0xFFu] ^ s.t[3][c >> 24];
}

}  // namespace

namespace {

// One pass for both jobs when kCopy: every word loaded for the CRC is also
// stored at `out` (the WAL copies a payload into its staging block and checks
// it; reading it once instead of twice halves that memory traffic).
template <bool kCopy>
__attribute__((target("sse4.2"))) uint32_t HardwarePass(uint32_t crc, const uint8_t* p, uint8_t* out, size_t n) {
  uint64_t c = static_cast<uint32_t>(~crc);
  while (n > 0 && (reinterpret_cast<uintptr_t>(p) & 7u) != 0) {
    if constexpr (kCopy) *out++ = *p;
    c = _mm_crc32_u8(static_cast<uint32_t>(c), *p++);
    n--;
  }
  if (n >= 3 * kStripe) {
    const ShiftTables& s = Shift();
    while (n >= 3 * kStripe) {
      uint64_t b = 0;
      uint64_t d = 0;
      const uint8_t* q = p + kStripe;
      const uint8_t* r = p + 2 * kStripe;
      for (size_t i = 0; i < kStripe; i += 8) {
        uint64_t x, y, z;
        std::memcpy(&x, p + i, 8);
        std::memcpy(&y, q + i, 8);
        std::memcpy(&z, r + i, 8);
        if constexpr (kCopy) {
          std::memcpy(out + i, &x, 8);
          std::memcpy(out + kStripe + i, &y, 8);
          std::memcpy(out + 2 * kStripe + i, &z, 8);
        }
        c = _mm_crc32_u64(c, x);
        b = _mm_crc32_u64(b, y);
        d = _mm_crc32_u64(d, z);
      }
      c = ShiftStripe(s, ShiftStripe(s, static_cast<uint32_t>(c)) ^ static_cast<uint32_t>(b)) ^ static_cast<uint32_t>(d);
      p += 3 * kStripe;
      if constexpr (kCopy) out += 3 * kStripe;
      n -= 3 * kStripe;
    }
  }
  while (n >= 32) {
    uint64_t v[4];
    std::memcpy(v, p, 32);
    if constexpr (kCopy) {
      std::memcpy(out, v, 32);
      out += 32;
    }
    c = _mm_crc32_u64(c, v[0]);
    c = _mm_crc32_u64(c, v[1]);
    c = _mm_crc32_u64(c, v[2]);
    c = _mm_crc32_u64(c, v[3]);
    p += 32;
    n -= 32;
  }
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    if constexpr (kCopy) {
      std::memcpy(out, &v, 8);
      out += 8;
    }
    c = _mm_crc32_u64(c, v);
    p += 8;
    n -= 8;
  }
  while (n-- > 0) {
    if constexpr (kCopy) *out++ = *p;
    c = _mm_crc32_u8(static_cast<uint32_t>(c), *p++);
  }
  return ~static_cast<uint32_t>(c);
}

}  // namespace

uint32_t Crc32cHardware(uint32_t crc, const uint8_t* p, size_t n) { return HardwarePass<false>(crc, p, nullptr, n); }

bool Crc32cHardwareAvailable() {
  static const bool available = __builtin_cpu_supports("sse4.2");
  return available;
}

#else

uint32_t Crc32cHardware(uint32_t crc, const uint8_t* p, size_t n) { return Crc32cSoftware(crc, p, n); }
bool Crc32cHardwareAvailable() { return false; }

#endif

uint32_t Crc32c(uint32_t crc, const uint8_t* data, size_t length) {
  return Crc32cHardwareAvailable() ? Crc32cHardware(crc, data, length) : Crc32cSoftware(crc, data, length);
}

uint32_t Crc32cCopy(uint32_t crc, uint8_t* out, const uint8_t* data, size_t length) {
#ifdef XDEVICE_X86
  if (Crc32cHardwareAvailable()) return HardwarePass<true>(crc, data, out, length);
#endif
  std::memcpy(out, data, length);
  return Crc32cSoftware(crc, data, length);
}

}  // namespace xdevice
