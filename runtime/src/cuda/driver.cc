#include "driver.h"

#include <dlfcn.h>

#include <mutex>

namespace fffc::cuda {

const Driver* GetDriver(std::string* why) {
  static std::once_flag once;
  static Driver driver;
  static const Driver* loaded = nullptr;
  static std::string error;
  std::call_once(once, [] {
    void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) {
      error = "libcuda.so.1 not found (no NVIDIA driver on this machine)";
      return;
    }
    bool ok = true;
    auto sym = [&](const char* name) {
      void* p = dlsym(lib, name);
      ok = ok && p != nullptr;
      if (p == nullptr) error = std::string("libcuda.so.1 lacks ") + name;
      return p;
    };
    driver.cuInit = reinterpret_cast<decltype(driver.cuInit)>(sym("cuInit"));
    driver.cuCtxGetCurrent = reinterpret_cast<decltype(driver.cuCtxGetCurrent)>(sym("cuCtxGetCurrent"));
    driver.cuModuleLoadData = reinterpret_cast<decltype(driver.cuModuleLoadData)>(sym("cuModuleLoadData"));
    driver.cuModuleGetFunction =
        reinterpret_cast<decltype(driver.cuModuleGetFunction)>(sym("cuModuleGetFunction"));
    driver.cuLaunchKernel = reinterpret_cast<decltype(driver.cuLaunchKernel)>(sym("cuLaunchKernel"));
    driver.cuMemAlloc = reinterpret_cast<decltype(driver.cuMemAlloc)>(sym("cuMemAlloc_v2"));
    driver.cuMemFree = reinterpret_cast<decltype(driver.cuMemFree)>(sym("cuMemFree_v2"));
    driver.cuMemcpyHtoD = reinterpret_cast<decltype(driver.cuMemcpyHtoD)>(sym("cuMemcpyHtoD_v2"));
    driver.cuGetErrorString = reinterpret_cast<decltype(driver.cuGetErrorString)>(sym("cuGetErrorString"));
    if (!ok) return;
    if (CUresult r = driver.cuInit(0); r != 0) {
      error = Error(&driver, "cuInit", r);
      return;
    }
    loaded = &driver;
  });
  if (loaded == nullptr && why != nullptr) *why = error;
  return loaded;
}

std::string Error(const Driver* d, const char* call, CUresult r) {
  const char* text = nullptr;
  if (d != nullptr && d->cuGetErrorString != nullptr) d->cuGetErrorString(r, &text);
  return std::string(call) + ": " + (text ? text : "CUDA error") + " (" + std::to_string(r) + ")";
}

}  // namespace fffc::cuda
