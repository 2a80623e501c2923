// swalp::quantize_ste: the Quantizer's rounding with its backward, all in C++ (see
// swalp/nn/quantizer.py). Forward: y = quantize(x, kind, p, f, rounding, keys). Backward: the
// gradient is rounded to (bkind, bp, bf). Each stochastic rounding draws its seed from
// torch's global generator when it runs, exactly as swalp.quantize(..., seed=None) draws
// it in Python (int(torch.randint(0, 2**62, ()))), and hashes it to keys with SplitMix64
// (swalp/_rng.py seed_keys). Why C++: for small models the Python autograd.Function
// and its seed draws cost more per training step than the rounding kernels.

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <cstdint>
#include <utility>

namespace swalp {
uint64_t splitmix64(uint64_t z);  // quantize.cpp
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor quantize(const at::Tensor& x, int64_t kind, at::IntArrayRef p, at::ArrayRef<double> f, int64_t rounding,
                    int64_t k0, int64_t k1) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("swalp::quantize", "")
                       .typed<at::Tensor(const at::Tensor&, int64_t, at::IntArrayRef, at::ArrayRef<double>, int64_t,
                                         int64_t, int64_t)>();
  return op.call(x, kind, p, f, rounding, k0, k1);
}


// (k0, k1) of a fresh seed, or (0, 0) for nearest rounding.
std::pair<int64_t, int64_t> draw_keys(int64_t rounding) {
  if (rounding != 1) return {0, 0};
  thread_local at::Tensor* s = new at::Tensor(at::empty({}, at::kLong));  // never freed: no exit-order issue
  s->random_(0, int64_t(1) << 62);  // the draw of torch.randint(0, 2**62, ())
  const uint64_t z = swalp::splitmix64(static_cast<uint64_t>(*s->const_data_ptr<int64_t>()));
  return {static_cast<int64_t>(z & 0xffffffffull), static_cast<int64_t>(z >> 32)};
}

struct STE : public torch::autograd::Function<STE> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t kind, at::IntArrayRef p,
                            at::ArrayRef<double> f, int64_t bkind, at::IntArrayRef bp, at::ArrayRef<double> bf,
                            int64_t rounding) {
    ctx->saved_data["bkind"] = bkind;
    ctx->saved_data["bp"] = bp.vec();
    ctx->saved_data["bf"] = bf.vec();
    ctx->saved_data["rounding"] = rounding;
    const auto [k0, k1] = draw_keys(rounding);
    return quantize(x, kind, p, f, rounding, k0, k1);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(8);
    const at::Tensor& g = grads[0];
    if (!g.defined()) return out;
    const int64_t rounding = ctx->saved_data["rounding"].toInt();
    const auto [k0, k1] = draw_keys(rounding);
    at::AutoDispatchBelowADInplaceOrView guard;  // no gradient of the rounding itself
    out[0] = quantize(g, ctx->saved_data["bkind"].toInt(), ctx->saved_data["bp"].toIntVector(),
                      ctx->saved_data["bf"].toDoubleVector(), rounding, k0, k1);
    return out;
  }
};

at::Tensor ste_autograd(const at::Tensor& x, int64_t kind, at::IntArrayRef p, at::ArrayRef<double> f, int64_t bkind,
                        at::IntArrayRef bp, at::ArrayRef<double> bf, int64_t rounding) {
  return STE::apply(x, kind, p, f, bkind, bp, bf, rounding);
}

// Below autograd (inference mode, or no tensor that needs a gradient): the forward only.
at::Tensor ste_forward(const at::Tensor& x, int64_t kind, at::IntArrayRef p, at::ArrayRef<double> f, int64_t bkind,
                       at::IntArrayRef bp, at::ArrayRef<double> bf, int64_t rounding) {
  const auto [k0, k1] = draw_keys(rounding);
  return quantize(x, kind, p, f, rounding, k0, k1);
}

}  // namespace

TORCH_LIBRARY_IMPL(swalp, Autograd, m) { m.impl("quantize_ste", &ste_autograd); }
TORCH_LIBRARY_IMPL(swalp, CompositeExplicitAutograd, m) { m.impl("quantize_ste", &ste_forward); }
