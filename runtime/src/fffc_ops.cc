// The shim's only entry point: ONNX Runtime calls RegisterCustomOps when the library is
// registered on a session (SessionOptions.register_custom_ops_library in Python).
#include <dlfcn.h>

#include <exception>
#include <mutex>
#include <string>

#include "cpu/ops.h"
#ifndef FFFC_WITHOUT_CUDA  // runtime/CMakeLists.txt with FFFC_CUDA off: no src/cuda/
#include "cuda/ops.h"
#endif
#include "ort_api.h"
#include "tvm_backend.h"

namespace {

// Keeps this library loaded until the process exits once it is registered. ONNX Runtime
// unloads it with the last SessionOptions holding it, and each load runs the static
// initializers again while an unload does not return all they allocated: a session created
// and destroyed without a run grew the process by ~72 KB each time (measured; about the size
// of the statically linked libstdc++'s emergency exception pool, plus the op domain below).
void StayLoaded() {
  static std::once_flag once;
  std::call_once(once, [] {
    static const char self = 0;  // any address inside this library
    Dl_info info;
    if (dladdr(&self, &info) != 0 && info.dli_fname != nullptr)
      dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);  // never closed
  });
}

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* base) {
  const OrtApi* api = base->GetApi(fffc::contract::kOrtApiVersion);
  if (api == nullptr) {
    // A runtime older than the shim's API version. Every version's OrtApi starts with
    // CreateStatus, so version 1 can still say why instead of failing later, unexplained.
    const OrtApi* v1 = base->GetApi(1);
    if (v1 == nullptr) return nullptr;
    const std::string why = std::string("fffc: this shim needs ONNX Runtime ") +
                            fffc::contract::kOrtMinRelease + " or newer";
    return v1->CreateStatus(ORT_FAIL, why.c_str());
  }
  StayLoaded();
  try {
    fffc::InstallTvmBackend();
    static std::mutex m;
    static OrtCustomOpDomain* domain = nullptr;  // shared by every session, never released
    std::lock_guard<std::mutex> lock(m);
    if (domain == nullptr) {
      if (OrtStatus* st = api->CreateCustomOpDomain(fffc::contract::kDomain, &domain)) return st;
#ifndef FFFC_TEST_CUDA_ON_CPU  // tests: the CUDA kernels take the CPU EP (cuda/launch.h)
      if (OrtStatus* st = fffc::cpu::RegisterOps(api, domain)) return st;
#endif
#ifndef FFFC_WITHOUT_CUDA
      if (OrtStatus* st = fffc::cuda::RegisterOps(api, domain)) return st;
#endif
    }
    return api->AddCustomOpDomain(options, domain);
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_FAIL, e.what());
  }
}
