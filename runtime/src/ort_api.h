// ONNX Runtime's C API and the ai.fffc contract (fffc/contract.h, generated from fffc/contract/ops.py):
// the API is asked for at contract::kOrtApiVersion, the oldest the shim needs, so that the
// library loads in older runtimes too (OrtCustomOp::version is set to the same value).
#ifndef FFFC_ORT_API_H_
#define FFFC_ORT_API_H_

#include <onnxruntime_c_api.h>

#include <fffc/contract.h>

#endif  // FFFC_ORT_API_H_
