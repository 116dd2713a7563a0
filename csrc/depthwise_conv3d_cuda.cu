// CUDA kernels of the depthwise 3D convolution ops (schemas in depthwise_conv3d.cpp), registered for the
// CUDA dispatch key. Straightforward and correct rather than tuned:
//   forward          one thread per output voxel (grid-stride), taps read through the read-only cache;
//   backward input   one thread per input voxel, gathering the output voxels it fed (no atomics);
//   backward weight  one block per (channel, tap or bias, chunk of voxels): a block reduction over the
//                    chunk, partial sums of all chunks added afterwards (deterministic, no atomics).
// float32, float64, float16 and bfloat16; accumulation in float (double for float64). Only c10/ATen core
// headers are included (not ATen/cuda/CUDAContext.h, which needs the cuBLAS/cuSPARSE headers that a bare
// nvcc toolkit lacks).
#include "depthwise_conv3d.h"

#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

namespace bsynth {
namespace {

constexpr int kThreads = 256;

// Geometry passed by value to the kernels (all int64: 128^3 volumes with hundreds of channels pass 2^31).
struct KGeom {
  int64_t channels, in[3], out[3], kernel[3], stride[3], padding[3];
};

KGeom kgeom(const DwGeometry& g) {
  KGeom k{};
  k.channels = g.channels;
  for (int d = 0; d < 3; ++d) {
    k.in[d] = g.in[d];
    k.out[d] = g.out[d];
    k.kernel[d] = g.kernel[d];
    k.stride[d] = g.stride[d];
    k.padding[d] = g.padding[d];
  }
  return k;
}

template <typename T>
__device__ __forceinline__ T load_ro(const T* p) {
  return __ldg(p);  // float, double: the read-only data cache
}
template <>
__device__ __forceinline__ at::Half load_ro(const at::Half* p) {
  return *p;
}
template <>
__device__ __forceinline__ at::BFloat16 load_ro(const at::BFloat16* p) {
  return *p;
}

int blocks_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<int>(std::min<int64_t>(std::max<int64_t>(blocks, 1), 65535LL * 8));
}

template <typename scalar_t, typename acc_t>
__global__ void forward_kernel(const scalar_t* __restrict__ in, const scalar_t* __restrict__ w,
                               const scalar_t* __restrict__ bias, scalar_t* __restrict__ out, KGeom g,
                               int64_t total) {
  const int64_t ktaps = g.kernel[0] * g.kernel[1] * g.kernel[2];
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t oz = idx % g.out[2];
    const int64_t oy = (idx / g.out[2]) % g.out[1];
    const int64_t ox = (idx / (g.out[2] * g.out[1])) % g.out[0];
    const int64_t plane = idx / (g.out[2] * g.out[1] * g.out[0]);
    const int64_t c = plane % g.channels;
    const scalar_t* x = in + plane * g.in[0] * g.in[1] * g.in[2];
    const scalar_t* wc = w + c * ktaps;
    acc_t acc = bias != nullptr ? static_cast<acc_t>(load_ro(bias + c)) : acc_t(0);
    for (int64_t kx = 0; kx < g.kernel[0]; ++kx) {
      const int64_t ix = ox * g.stride[0] - g.padding[0] + kx;
      if (ix < 0 || ix >= g.in[0]) continue;
      for (int64_t ky = 0; ky < g.kernel[1]; ++ky) {
        const int64_t iy = oy * g.stride[1] - g.padding[1] + ky;
        if (iy < 0 || iy >= g.in[1]) continue;
        const scalar_t* row = x + (ix * g.in[1] + iy) * g.in[2];
        const scalar_t* wrow = wc + (kx * g.kernel[1] + ky) * g.kernel[2];
        for (int64_t kz = 0; kz < g.kernel[2]; ++kz) {
          const int64_t iz = oz * g.stride[2] - g.padding[2] + kz;
          if (iz < 0 || iz >= g.in[2]) continue;
          acc += static_cast<acc_t>(load_ro(wrow + kz)) * static_cast<acc_t>(load_ro(row + iz));
        }
      }
    }
    out[idx] = static_cast<scalar_t>(acc);
  }
}

// Output index o along one dimension that input index i meets through tap k, or -1 (stride does not divide).
__device__ __forceinline__ int64_t source_index(int64_t i, int64_t k, int64_t s, int64_t p, int64_t n_out) {
  const int64_t t = i + p - k;
  if (t < 0 || t % s != 0) return -1;
  const int64_t o = t / s;
  return o < n_out ? o : -1;
}

template <typename scalar_t, typename acc_t>
__global__ void backward_input_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ w,
                                      scalar_t* __restrict__ gin, KGeom g, int64_t total) {
  const int64_t ktaps = g.kernel[0] * g.kernel[1] * g.kernel[2];
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t iz = idx % g.in[2];
    const int64_t iy = (idx / g.in[2]) % g.in[1];
    const int64_t ix = (idx / (g.in[2] * g.in[1])) % g.in[0];
    const int64_t plane = idx / (g.in[2] * g.in[1] * g.in[0]);
    const int64_t c = plane % g.channels;
    const scalar_t* go = grad + plane * g.out[0] * g.out[1] * g.out[2];
    const scalar_t* wc = w + c * ktaps;
    acc_t acc = 0;
    for (int64_t kx = 0; kx < g.kernel[0]; ++kx) {
      const int64_t ox = source_index(ix, kx, g.stride[0], g.padding[0], g.out[0]);
      if (ox < 0) continue;
      for (int64_t ky = 0; ky < g.kernel[1]; ++ky) {
        const int64_t oy = source_index(iy, ky, g.stride[1], g.padding[1], g.out[1]);
        if (oy < 0) continue;
        const scalar_t* row = go + (ox * g.out[1] + oy) * g.out[2];
        const scalar_t* wrow = wc + (kx * g.kernel[1] + ky) * g.kernel[2];
        for (int64_t kz = 0; kz < g.kernel[2]; ++kz) {
          const int64_t oz = source_index(iz, kz, g.stride[2], g.padding[2], g.out[2]);
          if (oz < 0) continue;
          acc += static_cast<acc_t>(load_ro(wrow + kz)) * static_cast<acc_t>(load_ro(row + oz));
        }
      }
    }
    gin[idx] = static_cast<scalar_t>(acc);
  }
}

// Block-wide sum of one value per thread (blockDim.x == kThreads); the result is valid in thread 0.
template <typename acc_t>
__device__ acc_t block_sum(acc_t value) {
  __shared__ acc_t warp_sums[kThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_down_sync(0xffffffffu, value, offset);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = value;
  __syncthreads();
  value = threadIdx.x < kThreads / 32 ? warp_sums[threadIdx.x] : acc_t(0);
  if (warp == 0) {
    for (int offset = 16; offset > 0; offset /= 2) value += __shfl_down_sync(0xffffffffu, value, offset);
  }
  return value;
}

// grid (channels, taps + 1, chunks): blockIdx.y < taps is a weight tap, == taps the bias. Each block sums
// grad * input (or grad) over its chunk of the batch x output voxels of one channel into partial[c, slot, chunk].
template <typename scalar_t, typename acc_t>
__global__ void backward_weight_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ in,
                                       acc_t* __restrict__ partial, KGeom g, int64_t batch, int64_t chunk) {
  const int64_t c = blockIdx.x, slot = blockIdx.y, taps = g.kernel[0] * g.kernel[1] * g.kernel[2];
  const int64_t kx = slot / (g.kernel[1] * g.kernel[2]), ky = (slot / g.kernel[2]) % g.kernel[1];
  const int64_t kz = slot % g.kernel[2];
  const int64_t out_plane = g.out[0] * g.out[1] * g.out[2], in_plane = g.in[0] * g.in[1] * g.in[2];
  const int64_t total = batch * out_plane;
  const int64_t begin = blockIdx.z * chunk, end = begin + chunk < total ? begin + chunk : total;
  acc_t acc = 0;
  for (int64_t j = begin + threadIdx.x; j < end; j += blockDim.x) {
    const int64_t n = j / out_plane, o = j % out_plane;
    const int64_t plane = n * g.channels + c;
    const acc_t gv = static_cast<acc_t>(load_ro(grad + plane * out_plane + o));
    if (slot == taps) {
      acc += gv;
      continue;
    }
    const int64_t oz = o % g.out[2], oy = (o / g.out[2]) % g.out[1], ox = o / (g.out[2] * g.out[1]);
    const int64_t ix = ox * g.stride[0] - g.padding[0] + kx, iy = oy * g.stride[1] - g.padding[1] + ky;
    const int64_t iz = oz * g.stride[2] - g.padding[2] + kz;
    if (ix < 0 || ix >= g.in[0] || iy < 0 || iy >= g.in[1] || iz < 0 || iz >= g.in[2]) continue;
    acc += gv * static_cast<acc_t>(load_ro(in + plane * in_plane + (ix * g.in[1] + iy) * g.in[2] + iz));
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) partial[(c * (taps + 1) + slot) * gridDim.z + blockIdx.z] = acc;
}

void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), "depthwise_conv3d (CUDA kernel): ", name, " must be a CUDA tensor");
}

void check_grad_shape(const at::Tensor& grad, const DwGeometry& g) {
  TORCH_CHECK(grad.dim() == 5 && grad.size(0) == g.batch && grad.size(1) == g.channels &&
                  grad.size(2) == g.out[0] && grad.size(3) == g.out[1] && grad.size(4) == g.out[2],
              "depthwise_conv3d: grad_output has shape ", grad.sizes(), ", which does not match the geometry");
}

at::Tensor forward_cuda(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                        at::IntArrayRef stride, at::IntArrayRef padding) {
  check_cuda(input, "input");
  const DwGeometry g = dw_forward_geometry(input, weight, bias, stride, padding);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous(), w = weight.contiguous();
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor b = has_bias ? bias->contiguous() : at::Tensor();
  at::Tensor out = at::empty({g.batch, g.channels, g.out[0], g.out[1], g.out[2]}, input.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bsynth_depthwise_conv3d_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
    forward_kernel<scalar_t, acc_t><<<blocks_for(total), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), has_bias ? b.data_ptr<scalar_t>() : nullptr,
        out.data_ptr<scalar_t>(), kgeom(g), total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor backward_input_cuda(const at::Tensor& grad_output, const at::Tensor& weight, at::IntArrayRef input_size,
                               at::IntArrayRef stride, at::IntArrayRef padding) {
  check_cuda(grad_output, "grad_output");
  TORCH_CHECK(grad_output.dim() == 5, "depthwise_conv3d: grad_output must be 5-D");
  dw_check_weight(weight, grad_output.size(1));
  dw_check_same(grad_output, weight, "grad_output and weight");
  const DwGeometry g = dw_geometry(grad_output.size(0), grad_output.size(1), input_size, weight.sizes().slice(2),
                                   stride, padding);
  check_grad_shape(grad_output, g);
  const c10::cuda::CUDAGuard guard(grad_output.device());
  const at::Tensor go = grad_output.contiguous(), w = weight.contiguous();
  at::Tensor gin = at::empty({g.batch, g.channels, g.in[0], g.in[1], g.in[2]}, grad_output.options());
  const int64_t total = gin.numel();
  if (total == 0) return gin;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, go.scalar_type(),
                                  "bsynth_depthwise_conv3d_backward_input_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
    backward_input_kernel<scalar_t, acc_t><<<blocks_for(total), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        go.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), gin.data_ptr<scalar_t>(), kgeom(g), total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return gin;
}

std::tuple<at::Tensor, at::Tensor> backward_weight_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                                        at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                                        at::IntArrayRef padding) {
  check_cuda(grad_output, "grad_output");
  TORCH_CHECK(input.dim() == 5, "depthwise_conv3d: input must be (B, C, X, Y, Z)");
  dw_check_same(grad_output, input, "grad_output and input");
  const DwGeometry g = dw_geometry(input.size(0), input.size(1), input.sizes().slice(2), kernel_size, stride,
                                   padding);
  check_grad_shape(grad_output, g);
  TORCH_CHECK(g.channels <= 2147483647LL && g.kernel_numel() < 65535, "depthwise_conv3d: too many channels/taps");
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor go = grad_output.contiguous(), x = input.contiguous();
  const int64_t taps = g.kernel_numel(), total = g.batch * g.out_numel();
  // Chunks of at least 64 voxels per thread, at most 64 chunks: enough blocks to fill the GPU for small C.
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(64, total / (kThreads * 64)));
  const int64_t chunk = (total + chunks - 1) / chunks;
  const auto acc_dtype = go.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor partial = at::empty({g.channels, taps + 1, chunks}, go.options().dtype(acc_dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, go.scalar_type(),
                                  "bsynth_depthwise_conv3d_backward_weight_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
    const dim3 grid(static_cast<unsigned>(g.channels), static_cast<unsigned>(taps + 1),
                    static_cast<unsigned>(chunks));
    backward_weight_kernel<scalar_t, acc_t><<<grid, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        go.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), partial.data_ptr<acc_t>(), kgeom(g), g.batch, chunk);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const at::Tensor sums = partial.sum(2).to(go.scalar_type());  // (C, taps + 1)
  at::Tensor grad_weight = sums.narrow(1, 0, taps).reshape({g.channels, 1, g.kernel[0], g.kernel[1], g.kernel[2]});
  at::Tensor grad_bias = sums.select(1, taps).contiguous();
  return {grad_weight.contiguous(), grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(bsynth, CUDA, m) {
  m.impl("depthwise_conv3d", &forward_cuda);
  m.impl("depthwise_conv3d_backward_input", &backward_input_cuda);
  m.impl("depthwise_conv3d_backward_weight", &backward_weight_cuda);
}

}  // namespace bsynth
