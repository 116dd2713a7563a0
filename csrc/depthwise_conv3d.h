// Depthwise 3D convolution (groups = channels) shared by the CPU (depthwise_conv3d.cpp) and CUDA
// (depthwise_conv3d_cuda.cu) kernels: the geometry of one call and its argument checks.
//
// Tensors are NCDHW: input (B, C, X, Y, Z), weight (C, 1, KX, KY, KZ), bias (C,), output
// (B, C, OX, OY, OZ) with O = (N + 2P - K) / S + 1. Kernels run on contiguous tensors.
#pragma once

#include <torch/library.h>
#include <ATen/ATen.h>

#include <array>
#include <cstdint>

namespace bsynth {

struct DwGeometry {
  int64_t batch, channels;
  std::array<int64_t, 3> in, out, kernel, stride, padding;

  int64_t in_numel() const { return in[0] * in[1] * in[2]; }     // voxels of one (b, c) input plane
  int64_t out_numel() const { return out[0] * out[1] * out[2]; }  // voxels of one (b, c) output plane
  int64_t kernel_numel() const { return kernel[0] * kernel[1] * kernel[2]; }
};

inline std::array<int64_t, 3> dw_triple(at::IntArrayRef values, const char* name) {
  TORCH_CHECK(values.size() == 3, "depthwise_conv3d: ", name, " needs 3 values, got ", values.size());
  return {values[0], values[1], values[2]};
}

// Geometry from input sizes (B, C, X, Y, Z), kernel sizes, stride and padding; checks everything.
inline DwGeometry dw_geometry(int64_t batch, int64_t channels, at::IntArrayRef in, at::IntArrayRef kernel,
                              at::IntArrayRef stride, at::IntArrayRef padding) {
  DwGeometry g{batch, channels, dw_triple(in, "input size"), {}, dw_triple(kernel, "kernel size"),
               dw_triple(stride, "stride"), dw_triple(padding, "padding")};
  for (int d = 0; d < 3; ++d) {
    TORCH_CHECK(g.kernel[d] >= 1 && g.stride[d] >= 1 && g.padding[d] >= 0,
                "depthwise_conv3d: kernel and stride must be >= 1 and padding >= 0");
    g.out[d] = (g.in[d] + 2 * g.padding[d] - g.kernel[d]) / g.stride[d] + 1;
    TORCH_CHECK(g.in[d] + 2 * g.padding[d] >= g.kernel[d] && g.out[d] >= 1,
                "depthwise_conv3d: input size ", g.in[d], " with kernel ", g.kernel[d], " and padding ",
                g.padding[d], " gives an empty output");
  }
  return g;
}

inline void dw_check_weight(const at::Tensor& weight, int64_t channels) {
  TORCH_CHECK(weight.dim() == 5 && weight.size(0) == channels && weight.size(1) == 1,
              "depthwise_conv3d: weight must be (C, 1, kx, ky, kz) with C = ", channels, ", got ", weight.sizes());
}

inline void dw_check_same(const at::Tensor& a, const at::Tensor& b, const char* what) {
  TORCH_CHECK(a.device() == b.device() && a.scalar_type() == b.scalar_type(),
              "depthwise_conv3d: ", what, " must share device and dtype (", a.device(), " ", a.scalar_type(),
              " vs ", b.device(), " ", b.scalar_type(), ")");
}

// Geometry of a forward call (also used by the backward ops through their explicit sizes).
inline DwGeometry dw_forward_geometry(const at::Tensor& input, const at::Tensor& weight,
                                      const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                      at::IntArrayRef padding) {
  TORCH_CHECK(input.dim() == 5, "depthwise_conv3d: input must be (B, C, X, Y, Z), got ", input.sizes());
  dw_check_weight(weight, input.size(1));
  dw_check_same(input, weight, "input and weight");
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == input.size(1), "depthwise_conv3d: bias must be (C,)");
    dw_check_same(input, *bias, "input and bias");
  }
  return dw_geometry(input.size(0), input.size(1), input.sizes().slice(2), weight.sizes().slice(2), stride, padding);
}

}  // namespace bsynth
