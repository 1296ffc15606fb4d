// CRC32C (Castagnoli, iSCSI polynomial 0x1EDC6F41, RFC 3720 appendix B.4).
#pragma once

#include <cstddef>
#include <cstdint>

namespace xdevice {

// Each function extends a finished CRC: Extend(Extend(0, a), b) == Extend(0, a ++ b).
uint32_t Crc32cSoftware(uint32_t crc, const uint8_t* data, size_t length);
// Only valid when Crc32cHardwareAvailable() is true.
uint32_t Crc32cHardware(uint32_t crc, const uint8_t* data, size_t length);
bool Crc32cHardwareAvailable();
// The fastest available implementation.
uint32_t Crc32c(uint32_t crc, const uint8_t* data, size_t length);
// Crc32c(crc, data, length), copying data to out as it goes (no overlap).
uint32_t Crc32cCopy(uint32_t crc, uint8_t* out, const uint8_t* data, size_t length);

}  // namespace xdevice
