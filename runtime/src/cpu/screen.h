// The inputs of the float16-screened exact kernel (fffc/codegen/kernels/exact_screened.py),
// derived from a SparseFFN's W1 and B1 once per weight: the artifact's model holds only W1.
#ifndef FFFC_CPU_SCREEN_H_
#define FFFC_CPU_SCREEN_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

namespace fffc::cpu {

struct Screen {
  std::vector<uint16_t> ws;  // float16 W1 [d_in, d_ff]
  std::vector<float> w1t;    // W1 neuron-major [d_ff, d_in]
  std::vector<float> e;      // the error bound's coefficients [2, d_ff]
  int64_t ws_dims[2], w1t_dims[2], e_dims[2];
};

// Derives a Screen for W1 [d_in, d_ff] (float32) and B1 [d_ff] (null: no bias): the same
// bound as exact_screened.screen_inputs, computed in double. The bound holds for whatever
// float16 values are stored (they are W1 rounded to nearest).
std::unique_ptr<Screen> MakeScreen(const float* w1, const float* b1, int64_t d_in, int64_t d_ff);

// A kernel's Screens, one per (W1, B1) buffer pair: only for weights ONNX Runtime reported
// constant when it created the kernel (initializers keep their address for the session).
class Screens {
 public:
  const Screen& Get(const float* w1, const float* b1, int64_t d_in, int64_t d_ff);

 private:
  std::mutex mutex_;
  std::map<std::pair<const void*, const void*>, std::unique_ptr<Screen>> screens_;
};

// When a kernel instance runs the screened kernel: while the last call that ran it listed
// at most kMaxActive of d_ff, and on every kProbeEvery-th call anyway, to notice when that
// changes. Past the crossover the recompute of the candidates costs more than the screen
// saves (exact_screened.py); either kernel gives the same outputs up to reassociation.
class ScreenPolicy {
 public:
  static constexpr float kMaxActive = 0.15f;  // exact_screened.SCREEN_MAX_ACTIVE
  static constexpr uint64_t kProbeEvery = 32;

  bool Use();
  void Observe(int32_t listed, int64_t d_ff);

 private:
  std::atomic<uint64_t> calls_{0};
  std::atomic<float> active_{0.f};  // of the last screened call (races: any recent one)
};

}  // namespace fffc::cpu

#endif  // FFFC_CPU_SCREEN_H_
