// A stand-in libcuda.so.1 for tests on machines without a GPU: "device" memory is host
// memory and cuLaunchKernel runs the kernel in fffc's CPU emulator (fffc/codegen/cuda_emu.py
// builds the artifact's CUDA source as C++; FFFC_FAKE_CUDA_EMU names that library). With it
// the shim's whole CUDA path (table lookup, buffers, launch parameters, grids, the order of
// launches) runs and is compared with ONNX Runtime, only the silicon differs.
#include <dlfcn.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

using Emu = int (*)(void**, const unsigned*);
using Types = const char* (*)();

struct Function {
  Emu run;
  std::string types;  // per kernel parameter: "p" pointer, "i" int
  std::string name;
};

void* g_emu = nullptr;

}  // namespace

extern "C" {

int cuInit(unsigned) { return 0; }

int cuCtxGetCurrent(void** ctx) {
  *ctx = reinterpret_cast<void*>(1);
  return 0;
}

int cuModuleLoadData(void** module, const void* image) {
  std::uint32_t magic = 0;  // the shim hands over the fatbin it embeds: a fatbin's header
  std::memcpy(&magic, image, sizeof magic);
  if (magic != 0xBA55ED50u) return 200;  // CUDA_ERROR_INVALID_IMAGE
  const char* path = std::getenv("FFFC_FAKE_CUDA_EMU");
  if (path == nullptr) return 200;  // CUDA_ERROR_INVALID_IMAGE
  if (g_emu == nullptr) g_emu = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  *module = g_emu;
  return g_emu == nullptr ? 200 : 0;
}

int cuModuleGetFunction(void** f, void* module, const char* name) {
  auto run = reinterpret_cast<Emu>(dlsym(module, (std::string("emu_") + name).c_str()));
  auto types = reinterpret_cast<Types>(dlsym(module, (std::string("emu_types_") + name).c_str()));
  if (run == nullptr || types == nullptr) return 500;  // CUDA_ERROR_NOT_FOUND
  *f = new Function{run, types(), name};  // lives for the process, as a module's functions do
  return 0;
}

int cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                   unsigned bz, unsigned, void*, void** params, void**) {
  auto* fn = static_cast<Function*>(f);
  // CUDA passes a pointer to each argument; the emulator takes pointer arguments by value
  std::vector<void*> args(fn->types.size());
  for (size_t i = 0; i < args.size(); ++i)
    args[i] = fn->types[i] == 'p' ? *static_cast<void**>(params[i]) : params[i];
  const unsigned dims[6] = {gx, gy, gz, bx, by, bz};
  if (const char* log = std::getenv("FFFC_FAKE_CUDA_LOG")) {  // what ran, for the tests
    if (FILE* out = std::fopen(log, "a")) {
      std::fprintf(out, "%s %u %u %u\n", fn->name.c_str(), gx, gy, gz);
      std::fclose(out);
    }
  }
  return fn->run(args.data(), dims) == 0 ? 0 : 999;  // CUDA_ERROR_UNKNOWN
}

int cuMemAlloc_v2(unsigned long long* p, size_t bytes) {
  void* mem = std::aligned_alloc(256, (bytes + 255) / 256 * 256);
  *p = reinterpret_cast<unsigned long long>(mem);
  return mem == nullptr ? 2 : 0;  // CUDA_ERROR_OUT_OF_MEMORY
}

int cuMemFree_v2(unsigned long long p) {
  std::free(reinterpret_cast<void*>(p));
  return 0;
}

int cuMemcpyHtoD_v2(unsigned long long dst, const void* src, size_t bytes) {
  std::memcpy(reinterpret_cast<void*>(dst), src, bytes);
  return 0;
}

int cuGetErrorString(int, const char** text) {
  *text = "fake CUDA error";
  return 0;
}

}  // extern "C"
