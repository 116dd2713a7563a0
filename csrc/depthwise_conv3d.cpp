// Depthwise 3D convolution as PyTorch custom ops: the operator schemas (TORCH_LIBRARY(bsynth)) and the
// CPU kernels (C++, parallel over batch x channel planes with at::parallel_for, i.e. OpenMP).
//
//   bsynth::depthwise_conv3d                 out = conv3d(input, weight, bias, stride, padding, groups=C)
//   bsynth::depthwise_conv3d_backward_input  d loss / d input  from grad_output and weight
//   bsynth::depthwise_conv3d_backward_weight d loss / d weight, d loss / d bias from grad_output and input
//
// Fake (meta) kernels and the autograd formulas are registered from Python (bsynth_hpc/ops/depthwise_ext.py);
// the CUDA kernels are in depthwise_conv3d_cuda.cu. Every kernel walks one (b, c) plane: for each output row
// (ox, oy) and each kernel tap (kx, ky, kz) it runs a contiguous loop over the valid oz range, so the
// innermost loop vectorises for stride 1 and needs no bounds test.
#include "depthwise_conv3d.h"

#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <vector>

namespace bsynth {
namespace {

// Valid output indices [lo, hi] along one dimension for kernel tap k: 0 <= o * s - p + k < n.
struct Range {
  int64_t lo, hi;
};

inline Range valid_range(int64_t n, int64_t out, int64_t k, int64_t s, int64_t p) {
  const int64_t first = p - k;           // o * s >= p - k
  const int64_t last = n - 1 + p - k;    // o * s <= n - 1 + p - k
  const int64_t lo = first <= 0 ? 0 : (first + s - 1) / s;
  const int64_t hi = last < 0 ? -1 : std::min(out - 1, last / s);
  return {lo, hi};
}

// Calls body(ox, ix, oy, iy, kx, ky, kz, z_range, iz0) for every output row and kernel tap that touches the
// input, where input z index = oz * sz + iz0 for oz in z_range.
template <typename Body>
inline void for_each_row_tap(const DwGeometry& g, Body&& body) {
  for (int64_t ox = 0; ox < g.out[0]; ++ox) {
    for (int64_t oy = 0; oy < g.out[1]; ++oy) {
      for (int64_t kx = 0; kx < g.kernel[0]; ++kx) {
        const int64_t ix = ox * g.stride[0] - g.padding[0] + kx;
        if (ix < 0 || ix >= g.in[0]) continue;
        for (int64_t ky = 0; ky < g.kernel[1]; ++ky) {
          const int64_t iy = oy * g.stride[1] - g.padding[1] + ky;
          if (iy < 0 || iy >= g.in[1]) continue;
          for (int64_t kz = 0; kz < g.kernel[2]; ++kz) {
            const Range rz = valid_range(g.in[2], g.out[2], kz, g.stride[2], g.padding[2]);
            if (rz.lo > rz.hi) continue;
            body(ox, ix, oy, iy, kx, ky, kz, rz, kz - g.padding[2]);
          }
        }
      }
    }
  }
}

template <typename scalar_t>
void forward_plane(const DwGeometry& g, const scalar_t* in, const scalar_t* w, scalar_t b, scalar_t* out) {
  std::fill(out, out + g.out_numel(), b);
  const int64_t sz = g.stride[2];
  for_each_row_tap(g, [&](int64_t ox, int64_t ix, int64_t oy, int64_t iy, int64_t kx, int64_t ky, int64_t kz,
                          Range rz, int64_t iz0) {
    const scalar_t wv = w[(kx * g.kernel[1] + ky) * g.kernel[2] + kz];
    scalar_t* orow = out + (ox * g.out[1] + oy) * g.out[2];
    const scalar_t* irow = in + (ix * g.in[1] + iy) * g.in[2] + iz0;
    for (int64_t oz = rz.lo; oz <= rz.hi; ++oz) orow[oz] += wv * irow[oz * sz];
  });
}

template <typename scalar_t>
void backward_input_plane(const DwGeometry& g, const scalar_t* grad, const scalar_t* w, scalar_t* gin) {
  std::fill(gin, gin + g.in_numel(), scalar_t(0));
  const int64_t sz = g.stride[2];
  for_each_row_tap(g, [&](int64_t ox, int64_t ix, int64_t oy, int64_t iy, int64_t kx, int64_t ky, int64_t kz,
                          Range rz, int64_t iz0) {
    const scalar_t wv = w[(kx * g.kernel[1] + ky) * g.kernel[2] + kz];
    const scalar_t* grow = grad + (ox * g.out[1] + oy) * g.out[2];
    scalar_t* irow = gin + (ix * g.in[1] + iy) * g.in[2] + iz0;
    for (int64_t oz = rz.lo; oz <= rz.hi; ++oz) irow[oz * sz] += wv * grow[oz];
  });
}

// Partial weight gradient of one plane into acc[0 .. K) and the bias gradient into acc[K].
template <typename scalar_t, typename acc_t>
void backward_weight_plane(const DwGeometry& g, const scalar_t* grad, const scalar_t* in, acc_t* acc) {
  const int64_t sz = g.stride[2];
  for_each_row_tap(g, [&](int64_t ox, int64_t ix, int64_t oy, int64_t iy, int64_t kx, int64_t ky, int64_t kz,
                          Range rz, int64_t iz0) {
    const scalar_t* grow = grad + (ox * g.out[1] + oy) * g.out[2];
    const scalar_t* irow = in + (ix * g.in[1] + iy) * g.in[2] + iz0;
    acc_t sum = 0;
    for (int64_t oz = rz.lo; oz <= rz.hi; ++oz) sum += static_cast<acc_t>(grow[oz]) * irow[oz * sz];
    acc[(kx * g.kernel[1] + ky) * g.kernel[2] + kz] += sum;
  });
  acc_t bias = 0;
  for (int64_t i = 0; i < g.out_numel(); ++i) bias += grad[i];
  acc[g.kernel_numel()] += bias;
}

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "depthwise_conv3d (CPU kernel): ", name, " must be a CPU tensor");
}

void check_grad_shape(const at::Tensor& grad, const DwGeometry& g) {
  TORCH_CHECK(grad.dim() == 5 && grad.size(0) == g.batch && grad.size(1) == g.channels &&
                  grad.size(2) == g.out[0] && grad.size(3) == g.out[1] && grad.size(4) == g.out[2],
              "depthwise_conv3d: grad_output has shape ", grad.sizes(), ", expected (", g.batch, ", ", g.channels,
              ", ", g.out[0], ", ", g.out[1], ", ", g.out[2], ")");
}

at::Tensor forward_cpu(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                       at::IntArrayRef stride, at::IntArrayRef padding) {
  check_cpu(input, "input");
  const DwGeometry g = dw_forward_geometry(input, weight, bias, stride, padding);
  const at::Tensor x = input.contiguous(), w = weight.contiguous();
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor b = has_bias ? bias->contiguous() : at::zeros({g.channels}, input.options());
  at::Tensor out = at::empty({g.batch, g.channels, g.out[0], g.out[1], g.out[2]}, input.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bsynth_depthwise_conv3d_cpu", [&] {
    const scalar_t *xp = x.data_ptr<scalar_t>(), *wp = w.data_ptr<scalar_t>(), *bp = b.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, g.batch * g.channels, 1, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const int64_t c = plane % g.channels;
        forward_plane(g, xp + plane * g.in_numel(), wp + c * g.kernel_numel(), bp[c], op + plane * g.out_numel());
      }
    });
  });
  return out;
}

at::Tensor backward_input_cpu(const at::Tensor& grad_output, const at::Tensor& weight, at::IntArrayRef input_size,
                              at::IntArrayRef stride, at::IntArrayRef padding) {
  check_cpu(grad_output, "grad_output");
  TORCH_CHECK(grad_output.dim() == 5, "depthwise_conv3d: grad_output must be 5-D");
  dw_check_weight(weight, grad_output.size(1));
  dw_check_same(grad_output, weight, "grad_output and weight");
  const DwGeometry g = dw_geometry(grad_output.size(0), grad_output.size(1), input_size, weight.sizes().slice(2),
                                   stride, padding);
  check_grad_shape(grad_output, g);
  const at::Tensor go = grad_output.contiguous(), w = weight.contiguous();
  at::Tensor gin = at::empty({g.batch, g.channels, g.in[0], g.in[1], g.in[2]}, grad_output.options());
  AT_DISPATCH_FLOATING_TYPES(go.scalar_type(), "bsynth_depthwise_conv3d_backward_input_cpu", [&] {
    const scalar_t *gp = go.data_ptr<scalar_t>(), *wp = w.data_ptr<scalar_t>();
    scalar_t* ip = gin.data_ptr<scalar_t>();
    at::parallel_for(0, g.batch * g.channels, 1, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const int64_t c = plane % g.channels;
        backward_input_plane(g, gp + plane * g.out_numel(), wp + c * g.kernel_numel(), ip + plane * g.in_numel());
      }
    });
  });
  return gin;
}

std::tuple<at::Tensor, at::Tensor> backward_weight_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                                       at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                                       at::IntArrayRef padding) {
  check_cpu(grad_output, "grad_output");
  TORCH_CHECK(input.dim() == 5, "depthwise_conv3d: input must be (B, C, X, Y, Z)");
  dw_check_same(grad_output, input, "grad_output and input");
  const DwGeometry g = dw_geometry(input.size(0), input.size(1), input.sizes().slice(2), kernel_size, stride,
                                   padding);
  check_grad_shape(grad_output, g);
  const at::Tensor go = grad_output.contiguous(), x = input.contiguous();
  const int64_t slots = g.kernel_numel() + 1;  // K weight taps + the bias
  at::Tensor grad_weight, grad_bias;
  AT_DISPATCH_FLOATING_TYPES(go.scalar_type(), "bsynth_depthwise_conv3d_backward_weight_cpu", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/false>;
    // One partial sum per (b, c) plane, reduced over the batch afterwards: parallel and deterministic.
    std::vector<acc_t> partial(static_cast<size_t>(g.batch * g.channels * slots), acc_t(0));
    const scalar_t *gp = go.data_ptr<scalar_t>(), *xp = x.data_ptr<scalar_t>();
    at::parallel_for(0, g.batch * g.channels, 1, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        backward_weight_plane(g, gp + plane * g.out_numel(), xp + plane * g.in_numel(), partial.data() + plane * slots);
      }
    });
    grad_weight = at::empty({g.channels, 1, g.kernel[0], g.kernel[1], g.kernel[2]}, input.options());
    grad_bias = at::empty({g.channels}, input.options());
    scalar_t *gw = grad_weight.data_ptr<scalar_t>(), *gb = grad_bias.data_ptr<scalar_t>();
    for (int64_t c = 0; c < g.channels; ++c) {
      for (int64_t s = 0; s < slots; ++s) {
        acc_t total = 0;
        for (int64_t n = 0; n < g.batch; ++n) total += partial[(n * g.channels + c) * slots + s];
        if (s < g.kernel_numel()) gw[c * g.kernel_numel() + s] = static_cast<scalar_t>(total);
        else gb[c] = static_cast<scalar_t>(total);
      }
    }
  });
  return {grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY(bsynth, m) {
  m.def("depthwise_conv3d(Tensor input, Tensor weight, Tensor? bias, int[3] stride, int[3] padding) -> Tensor");
  m.def("depthwise_conv3d_backward_input(Tensor grad_output, Tensor weight, int[3] input_size, int[3] stride, "
        "int[3] padding) -> Tensor");
  m.def("depthwise_conv3d_backward_weight(Tensor grad_output, Tensor input, int[3] kernel_size, int[3] stride, "
        "int[3] padding) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(bsynth, CPU, m) {
  m.impl("depthwise_conv3d", &forward_cpu);
  m.impl("depthwise_conv3d_backward_input", &backward_input_cpu);
  m.impl("depthwise_conv3d_backward_weight", &backward_weight_cpu);
}

}  // namespace bsynth

// A Python module, so `import bsynth_hpc._C` loads the library and runs the registrations above.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "bsynth_hpc custom ops (torch.ops.bsynth.*); see csrc/README.md";
}
