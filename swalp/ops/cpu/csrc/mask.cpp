// swalp_cpu::relu_mask and relu_unmask: a ReLU's saved output as one bit per element
// (swalp/nn/saved.py, whose torch path is the definition): bit j % 8 of byte j / 8 is set where
// element j is not <= 0 (threshold_backward's own test, so a NaN sets it), and back to a tensor
// of zeros and ones (uint8 for swalp/nn/saved.py, or any float or integer dtype).

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

namespace {

constexpr int64_t GRAIN_BYTES = 1 << 12;  // bytes of bits (32768 elements) per parallel task, at least

at::Tensor relu_mask(const at::Tensor& t) {
  const at::Tensor tc = t.contiguous();
  const int64_t n = tc.numel();
  at::Tensor bits = at::empty({(n + 7) / 8}, at::kByte);
  uint8_t* out = bits.mutable_data_ptr<uint8_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, tc.scalar_type(), "swalp_relu_mask", [&] {
    const scalar_t* x = tc.const_data_ptr<scalar_t>();
    at::parallel_for(0, bits.numel(), GRAIN_BYTES, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        uint8_t byte = 0;
        for (int64_t q = 0; q < 8 && 8 * b + q < n; ++q) byte |= static_cast<uint8_t>(!(x[8 * b + q] <= scalar_t(0))) << q;
        out[b] = byte;
      }
    });
  });
  return bits;
}

at::Tensor relu_unmask(const at::Tensor& bits, at::IntArrayRef shape, at::ScalarType dtype) {
  TORCH_CHECK(bits.scalar_type() == at::kByte && bits.is_contiguous(), "relu_unmask: bits must be contiguous uint8");
  at::Tensor out = at::empty(shape, at::TensorOptions().dtype(dtype));
  const int64_t n = out.numel();
  TORCH_CHECK(bits.numel() == (n + 7) / 8, "relu_unmask: bits and shape differ");
  const uint8_t* in = bits.const_data_ptr<uint8_t>();
  AT_DISPATCH_ALL_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "swalp_relu_unmask", [&] {
    scalar_t* y = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, bits.numel(), GRAIN_BYTES, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b)
        for (int64_t q = 0; q < 8 && 8 * b + q < n; ++q) y[8 * b + q] = scalar_t((in[b] >> q) & 1);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(swalp_cpu, m) {
  m.def("relu_mask(Tensor t) -> Tensor", &relu_mask);
  m.def("relu_unmask(Tensor bits, int[] shape, ScalarType dtype) -> Tensor", &relu_unmask);
}
