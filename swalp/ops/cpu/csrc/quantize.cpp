// The swalp ops that round to grid values on the CPU: swalp::quantize, its seeded form for
// torch.compile, and swalp::quantize_many_ for the optimizer's many small tensors. The
// kernels are in quant.h (read its comment first); pack.cpp rounds into packed form.

#include "quant.h"

namespace swalp {
// One step of SplitMix64 (swalp/_rng.py splitmix64): a seed to the hash keys (k0, k1).
uint64_t splitmix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
}  // namespace swalp

namespace {

// p: a Param vector; f: a Bound vector (swalp/ops/_schema.py).
at::Tensor quantize_cpu(const at::Tensor& x, int64_t kind, at::IntArrayRef p, at::ArrayRef<double> f,
                        int64_t rounding, int64_t k0, int64_t k1) {
  const Spec s = spec_of(kind, p, f, rounding, k0, k1);
  TORCH_CHECK(s.block == WHOLE || x.dim() == 0 || (s.axis >= 0 && s.axis < x.dim()), "swalp::quantize: bad axis");
  TORCH_CHECK(s.block != PER_GROUP || s.size >= 1, "swalp::quantize: bad group size");
  const at::Tensor xc = x.contiguous();
  at::Tensor y = swalp::empty_output(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "swalp_quantize", [&] {
    Quant<scalar_t>{s}.run(xc.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), xc.sizes());
  });
  return y;
}

// The seed as a tensor (one int64 on the CPU), so that torch.compile can trace a seed drawn
// by torch.randint into the graph: keys = splitmix64(seed), as swalp/_rng.py seed_keys.
at::Tensor quantize_seeded_cpu(const at::Tensor& x, int64_t kind, at::IntArrayRef p, at::ArrayRef<double> f,
                               int64_t rounding, const at::Tensor& seed) {
  TORCH_CHECK(seed.numel() == 1 && seed.scalar_type() == at::kLong && seed.is_cpu(),
              "swalp::quantize_seeded: seed must be one int64 on the CPU");
  const uint64_t z = swalp::splitmix64(static_cast<uint64_t>(seed.item<int64_t>()));
  return quantize_cpu(x, kind, p, f, rounding, static_cast<int64_t>(z & 0xffffffffull), static_cast<int64_t>(z >> 32));
}

// In place, for many small tensors in one call (the optimizer's gradients, weights and
// state: dozens of tensors of a few thousand elements, where a call per tensor costs more
// than its kernel): xs[t] = quantize(xs[t], kind[t], p[N_PARAMS t, N_PARAMS (t + 1)),
// f[N_BOUNDS t, N_BOUNDS (t + 1)), rounding, k0[t], k1[t]).
void quantize_many_cpu(at::TensorList xs, at::IntArrayRef kind, at::IntArrayRef p, at::ArrayRef<double> f,
                       int64_t rounding, at::IntArrayRef k0, at::IntArrayRef k1) {
  const size_t n = xs.size();
  TORCH_CHECK(kind.size() == n && p.size() == N_PARAMS * n && f.size() == N_BOUNDS * n && k0.size() == n &&
                  k1.size() == n,
              "swalp::quantize_many_: bad parameter lists");
  for (size_t t = 0; t < n; ++t) {
    const at::Tensor& x = xs[t];
    if (x.numel() == 0) continue;
    const at::Tensor y = quantize_cpu(x, kind[t], p.slice(N_PARAMS * t, N_PARAMS), f.slice(N_BOUNDS * t, N_BOUNDS),
                                      rounding, k0[t], k1[t]);
    if (x.is_contiguous() && x.numel() <= GRAIN) std::memcpy(x.data_ptr(), y.const_data_ptr(), x.nbytes());
    else x.copy_(y);  // strided, or large enough for copy_'s threads
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(swalp, CPU, m) {
  m.impl("quantize", &quantize_cpu);
  m.impl("quantize_seeded", &quantize_seeded_cpu);
  m.impl("quantize_many_", &quantize_many_cpu);
}
