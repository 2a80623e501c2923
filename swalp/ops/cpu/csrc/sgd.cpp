// swalp_cpu::sgd_packed: one step of torch.optim.SGD on one parameter whose weights, gradient
// and momentum are packed (swalp/ops/packed.py), with the results rounded straight back into
// packed form. swalp/ops/sgd.py holds the definition in PyTorch (unpack, torch's own SGD
// step on the floats, pack); this is the same arithmetic in one call, bit for bit:
//
//   g = -g if maximize
//   d = g + wd * w                    (torch: grad.add(param, alpha=wd), fmadd(w, wd, g))
//   m = d on the first step, else (m * momentum) + (1 - dampening) * d   (buf.mul_().add_())
//   d = d + momentum * m if nesterov, else m
//   w = w + (-lr) * d                 (param.add_(d, alpha=-lr))
//
// torch's CPU add with alpha is one fused multiply-add (its vectorised kernel calls fmadd, and
// its scalar tail is contracted likewise), so every "x + a * y" here is std::fma(y, a, x); the
// build's -ffp-contract=off keeps everything else unfused, as torch's separate kernels are (where a
// torch build rounds twice, swalp/ops/cpu/__init__.py torch_add_is_fma says so and this is not used).
// Scalars are cast to float as torch casts a Python number for a float32 tensor.
// tests/test_packed_sgd.py checks this file against swalp/ops/sgd.py's reference.

#include "quant.h"

namespace {

struct Step {
  float lr, wd, mom, keep, sign;  // -lr, weight decay, momentum, 1 - dampening, -1 to maximize
  bool decay, heavy, has_m, nesterov;
};

// n elements: w and m in place; m may be g itself (the first step writes the buffer over g).
// Branch-free, so that the loop vectorises (g * -1 is -g exactly, g * 1 is g).
void step(float* __restrict w, const float* g, float* m, int64_t n, const Step h) {
  for (int64_t j = 0; j < n; ++j) {
    float d = g[j] * h.sign;
    d = h.decay ? std::fma(w[j], h.wd, d) : d;
    const float buf = h.has_m ? std::fma(d, h.keep, m[j] * h.mom) : d;
    m[j] = h.heavy ? buf : m[j];
    d = h.heavy ? (h.nesterov ? std::fma(buf, h.mom, d) : buf) : d;
    w[j] = std::fma(d, h.lr, w[j]);
  }
}

// One unpack's arguments in `u`, from position 4 * t: shift, block, axis, size.
at::Tensor unpack_at(const at::Tensor& codes, const at::Tensor& exps, at::IntArrayRef u, int t) {
  return swalp::unpack(codes, exps, u[4 * t], u[4 * t + 1], u[4 * t + 2], u[4 * t + 3]);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sgd_packed(
    const at::Tensor& w, const at::Tensor& we, const at::Tensor& g, const at::Tensor& ge, const at::Tensor& m,
    const at::Tensor& me, at::IntArrayRef unpack_args, at::ArrayRef<double> hyper, int64_t flags, int64_t wkind,
    at::IntArrayRef wp, at::ArrayRef<double> wf, int64_t mkind, at::IntArrayRef mp, at::ArrayRef<double> mf,
    int64_t rounding, at::IntArrayRef keys) {
  TORCH_CHECK(unpack_args.size() == 12 && hyper.size() == 4 && keys.size() == 4, "swalp_cpu::sgd_packed: bad lists");
  TORCH_CHECK(w.sizes() == g.sizes(), "swalp_cpu::sgd_packed: weight and gradient shapes differ");
  const bool nesterov = flags & 1, maximize = flags & 2, has_m = flags & 4;
  const double momentum = hyper[2];
  // Every buffer is a new float32 tensor of the parameter's shape: W becomes the new weights,
  // and the new momentum is written over M (or over G, on the first step).
  at::Tensor W = unpack_at(w, we, unpack_args, 0), G = unpack_at(g, ge, unpack_args, 1);
  at::Tensor M = has_m ? unpack_at(m, me, unpack_args, 2) : G;
  TORCH_CHECK(M.sizes() == w.sizes(), "swalp_cpu::sgd_packed: momentum and weight shapes differ");
  const Step h{static_cast<float>(-hyper[0]), static_cast<float>(hyper[1]), static_cast<float>(momentum),
               static_cast<float>(1.0 - hyper[3]), maximize ? -1.0f : 1.0f, hyper[1] != 0.0, momentum != 0.0,
               has_m, nesterov};
  float* wv = W.mutable_data_ptr<float>();
  const float* gv = G.const_data_ptr<float>();
  float* mv = M.mutable_data_ptr<float>();
  at::parallel_for(0, W.numel(), 1 << 14, [&](int64_t b, int64_t e) { step(wv + b, gv + b, mv + b, e - b, h); });
  auto [wc, wx] = swalp::quantize_pack(W, wkind, wp, wf, rounding, keys[0], keys[1]);
  W.reset();
  if (!h.heavy) return {wc, wx, wc.new_empty({0}), wx.new_empty({0})};  // no momentum kept
  auto [mc, mx] = swalp::quantize_pack(M, mkind, mp, mf, rounding, keys[2], keys[3]);
  return {wc, wx, mc, mx};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(swalp_cpu, m) {
  m.def("sgd_packed(Tensor w, Tensor we, Tensor g, Tensor ge, Tensor m, Tensor me, int[] unpack, float[] hyper, "
        "int flags, int wkind, int[] wp, float[] wf, int mkind, int[] mp, float[] mf, int rounding, int[] keys) "
        "-> (Tensor, Tensor, Tensor, Tensor)",
        &sgd_packed);
}
