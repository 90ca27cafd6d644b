#include "screen.h"

#include "../half.h"

#include <cmath>

namespace fffc::cpu {

std::unique_ptr<Screen> MakeScreen(const float* w1, const float* b1, int64_t d_in, int64_t d_ff) {
  auto s = std::make_unique<Screen>();
  s->ws.resize(static_cast<size_t>(d_in * d_ff));
  s->w1t.resize(static_cast<size_t>(d_in * d_ff));
  s->e.resize(static_cast<size_t>(2 * d_ff));
  std::vector<double> delta2(d_ff, 0.0), stored2(d_ff, 0.0);
  for (int64_t k = 0; k < d_in; ++k) {
    for (int64_t j = 0; j < d_ff; ++j) {
      const float w = w1[k * d_ff + j];
      const uint16_t h = FloatToHalf(w);
      const double v = HalfToFloat(h), d = static_cast<double>(w) - v;
      s->ws[k * d_ff + j] = h;
      s->w1t[j * d_in + k] = w;
      delta2[j] += d * d;
      stored2[j] += v * v;
    }
  }
  // as exact_screened.gamma and MARGIN: n = 2·d_in + 128 terms, margin 1 + 2^-8
  const double u = std::ldexp(1.0, -24), n = 2.0 * static_cast<double>(d_in) + 128.0;
  const double gamma = n * u / (1 - n * u), margin = 1 + std::ldexp(1.0, -8);
  for (int64_t j = 0; j < d_ff; ++j) {
    double e0 = (std::sqrt(delta2[j]) + gamma * std::sqrt(stored2[j])) * margin;
    double e1 = b1 ? gamma * std::fabs(static_cast<double>(b1[j])) * margin : 0.0;
    if (!std::isfinite(e0)) e0 = INFINITY;  // a weight beyond float16's range
    if (!std::isfinite(e1)) e1 = INFINITY;
    s->e[j] = static_cast<float>(e0);
    s->e[d_ff + j] = static_cast<float>(e1);
  }
  s->ws_dims[0] = d_in, s->ws_dims[1] = d_ff;
  s->w1t_dims[0] = d_ff, s->w1t_dims[1] = d_in;
  s->e_dims[0] = 2, s->e_dims[1] = d_ff;
  return s;
}

const Screen& Screens::Get(const float* w1, const float* b1, int64_t d_in, int64_t d_ff) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto& slot = screens_[{w1, b1}];
  if (!slot) slot = MakeScreen(w1, b1, d_in, d_ff);
  return *slot;
}

bool ScreenPolicy::Use() {
  const uint64_t n = calls_.fetch_add(1, std::memory_order_relaxed);
  return n % kProbeEvery == 0 || active_.load(std::memory_order_relaxed) <= kMaxActive;
}

void ScreenPolicy::Observe(int32_t listed, int64_t d_ff) {
  const float frac = d_ff > 0 ? static_cast<float>(listed) / static_cast<float>(d_ff) : 0.f;
  active_.store(frac, std::memory_order_relaxed);
}

}  // namespace fffc::cpu
