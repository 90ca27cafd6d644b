// IEEE binary16 and bfloat16 <-> float32, for weights stored in 16 bits (op_common.cc's
// float32 copies of them, cpu/screen.cc's float16 screen).
#ifndef FFFC_HALF_H_
#define FFFC_HALF_H_

#include <cmath>
#include <cstdint>
#include <cstring>

namespace fffc {

inline float HalfToFloat(uint16_t h) {
  const uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ff;
  const float mag = e == 0 ? std::ldexp(static_cast<float>(m), -24)
                    : e == 31 ? (m ? NAN : INFINITY)
                              : std::ldexp(static_cast<float>(m | 0x400), static_cast<int>(e) - 25);
  return (h & 0x8000) ? -mag : mag;
}

inline float Bfloat16ToFloat(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// x rounded to nearest even (overflow: infinity; NaN stays NaN).
inline uint16_t FloatToHalf(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  const uint16_t sign = static_cast<uint16_t>((b >> 16) & 0x8000u);
  const uint32_t abs = b & 0x7fffffffu;
  if (abs >= 0x7f800000u) return sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0u);  // inf, NaN
  if (abs >= 0x477ff000u) return sign | 0x7c00u;  // rounds past 65504
  if (abs < 0x38800000u) {  // below float16's smallest normal: a subnormal (or zero)
    if (abs < 0x33000000u) return sign;  // below half the smallest subnormal
    const uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
    const int shift = 126 - static_cast<int>(abs >> 23);  // 14 .. 24
    uint32_t h = mant >> shift;
    const uint32_t rest = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rest > half || (rest == half && (h & 1u))) ++h;
    return sign | static_cast<uint16_t>(h);
  }
  uint32_t h = ((abs >> 13) - (112u << 10));  // rebias 127 -> 15
  const uint32_t rest = abs & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
  return sign | static_cast<uint16_t>(h);
}

}  // namespace fffc

#endif  // FFFC_HALF_H_
