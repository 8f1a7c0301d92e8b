// ONNX Runtime custom-op library for d3d::DeformConv3d: shared declarations of the CPU op
// (deform_conv3d_ort.cpp) and the CUDA execution provider's op (deform_conv3d_ort_cuda.cu).
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "deform_conv3d_attrs.h"
#include "deform_conv3d_contract.h"  // kDomain, kOpType
#include "deform_conv3d_shape.h"
#include "onnxruntime_c_api.h"

namespace d3d {
namespace ort {

// The validated inputs of one KernelCompute: the problem and the tensor pointers (bias may be null).
struct Problem {
  DeformConv3dShape shape;
  const float* x = nullptr;
  const float* offset = nullptr;
  const float* weight = nullptr;
  const float* bias = nullptr;
  float* y = nullptr;
  // fp16 I/O (CPU op only): the inputs widened to fp32 here, computed in fp32, the output narrowed
  // back into y_half (y_count elements) afterwards; sampling, weights and sums stay fp32 throughout.
  std::vector<float> widened[4];
  std::vector<float> y_wide;
  void* y_half = nullptr;
  size_t y_count = 0;
};

// Scratch memory from the allocator of the execution provider that holds input X (the CPU arena, or the
// CUDA provider's stream-ordered one), which keeps the block between runs; the block is freed and the
// allocator released when this goes out of scope, also when Alloc throws (how ONNX Runtime's arena
// reports running out of memory).
class ProviderScratch {
 public:
  explicit ProviderScratch(const OrtApi* api) : api_(api) {}
  ProviderScratch(const ProviderScratch&) = delete;
  ProviderScratch& operator=(const ProviderScratch&) = delete;
  ~ProviderScratch() {
    if (ptr_ != nullptr) allocator_->Free(allocator_, ptr_);
    if (allocator_ != nullptr) api_->ReleaseAllocator(allocator_);
  }
  // Takes `bytes`: an error status, or nullptr with data() == nullptr where the allocator refused.
  OrtStatus* take(OrtKernelContext* ctx, size_t bytes) {
    const OrtValue* x = nullptr;
    if (OrtStatus* st = api_->KernelContext_GetInput(ctx, 0, &x)) return st;
    const OrtMemoryInfo* memory = nullptr;  // owned by the tensor, not released here
    if (OrtStatus* st = api_->GetTensorMemoryInfo(x, &memory)) return st;
    if (OrtStatus* st = api_->KernelContext_GetAllocator(ctx, memory, &allocator_)) return st;
    ptr_ = allocator_->Alloc(allocator_, bytes);
    return nullptr;
  }
  void* data() const { return ptr_; }

 private:
  const OrtApi* api_;
  OrtAllocator* allocator_ = nullptr;
  void* ptr_ = nullptr;
};

// Reads and checks the inputs of a DeformConv3d node and allocates its output. Returns nullptr or the
// error as an OrtStatus (ORT_INVALID_ARGUMENT for bad shapes or types).
OrtStatus* prepare(const OrtApi* api, OrtKernelContext* ctx, const DeformConv3dAttrs& attrs, Problem* p);

#ifdef D3D_ORT_WITH_CUDA
// The CUDA execution provider's forward on the provider's compute stream (deform_conv3d_ort_cuda.cu).
OrtStatus* compute_cuda(const OrtApi* api, OrtKernelContext* ctx, const Problem& p);
#endif

}  // namespace ort
}  // namespace d3d
