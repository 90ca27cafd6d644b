// Test driver for runtime/src/cpu/screen.cc (tests/runtime/test_screen.py):
//   screen_harness derive IN OUT   reads d_in, d_ff (int64), W1 [d_in, d_ff], has_b1 (int64)
//                                  and B1 [d_ff] (float32); writes WS (uint16), W1T, E
//   screen_harness policy          prints the kernel choices of a ScreenPolicy fed a script
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "cpu/screen.h"

using fffc::cpu::ScreenPolicy;

static int Derive(const char* in_path, const char* out_path) {
  std::FILE* in = std::fopen(in_path, "rb");
  if (!in) return 2;
  int64_t d_in = 0, d_ff = 0, has_b1 = 0;
  if (std::fread(&d_in, 8, 1, in) != 1 || std::fread(&d_ff, 8, 1, in) != 1) return 3;
  std::vector<float> w1(d_in * d_ff), b1(d_ff);
  if (std::fread(w1.data(), 4, w1.size(), in) != w1.size()) return 3;
  if (std::fread(&has_b1, 8, 1, in) != 1) return 3;
  if (has_b1 && std::fread(b1.data(), 4, b1.size(), in) != b1.size()) return 3;
  std::fclose(in);
  auto s = fffc::cpu::MakeScreen(w1.data(), has_b1 ? b1.data() : nullptr, d_in, d_ff);
  std::FILE* out = std::fopen(out_path, "wb");
  if (!out) return 2;
  std::fwrite(s->ws.data(), 2, s->ws.size(), out);
  std::fwrite(s->w1t.data(), 4, s->w1t.size(), out);
  std::fwrite(s->e.data(), 4, s->e.size(), out);
  std::fclose(out);
  return 0;
}

// Calls 1..100 at 50% active neurons, then 101..200 at 5%: which ran screened ("S") or not.
static int Policy() {
  ScreenPolicy p;
  for (int call = 0; call < 200; ++call) {
    const bool use = p.Use();
    std::putchar(use ? 'S' : '.');
    if (use) p.Observe(call < 100 ? 500 : 50, 1000);
  }
  std::putchar('\n');
  return 0;
}

int main(int argc, char** argv) {
  if (argc == 4 && std::strcmp(argv[1], "derive") == 0) return Derive(argv[2], argv[3]);
  if (argc == 2 && std::strcmp(argv[1], "policy") == 0) return Policy();
  return 1;
}
