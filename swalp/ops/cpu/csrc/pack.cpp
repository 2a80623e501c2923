// swalp::quantize_pack on the CPU: round straight into packed form (swalp/ops/packed.py),
// with the kernels of quant.h writing codes instead of grid values.

#include "quant.h"

namespace {

// The bits of a float8 value (E4M3 "fn": MAN 3, BIAS 7; E5M2: MAN 2, BIAS 15) that o, a value of
// that format (NaN, E5M2's inf, zero, normal or subnormal), holds exactly: no rounding here.
template <int MAN, int BIAS> struct Fp8Code {
  uint8_t bits;
  // Every case computed and selected, no branch: the loop over a tile vectorises.
  static Fp8Code of(float o) {
    uint32_t u;
    std::memcpy(&u, &o, sizeof u);
    const uint32_t a = u & 0x7fffffffu;
    const int32_t e = static_cast<int32_t>(a >> 23) - 127;
    const uint32_t normal = (static_cast<uint32_t>(e + BIAS) << MAN) | ((a >> (23 - MAN)) & ((1u << MAN) - 1));
    const int32_t sh = 23 - MAN + (1 - BIAS - e);  // subnormal: o / 2^(1 - BIAS - MAN)
    const uint32_t sub = ((a & 0x7fffffu) | 0x800000u) >> (sh < 31 ? (sh > 0 ? sh : 0) : 31);
    uint32_t code = e >= 1 - BIAS ? normal : sub;
    code = a == 0 ? 0u : code;
    code = a == 0x7f800000u ? 0x7cu : code;  // inf (E5M2 only)
    code = a > 0x7f800000u ? 0x7fu : code;   // NaN
    return {static_cast<uint8_t>(((u >> 24) & 0x80u) | code)};
  }
};
using E4M3Code = Fp8Code<3, 7>;
using E5M2Code = Fp8Code<2, 15>;

// Round straight into packed form, in the same pass: the codes (int8 for integer formats of
// at most 8 bits; float8 E4M3 or E5M2 values for those floats and MXFP8) and one int8
// exponent per block, laid out as swalp/ops/packed.py keeps them; float32 or float64 input.
// The Python side (swalp/ops/_schema.py kernel_packs) sends only formats these hold exactly.
std::tuple<at::Tensor, at::Tensor> quantize_pack_cpu(const at::Tensor& x, int64_t kind, at::IntArrayRef p,
                                                     at::ArrayRef<double> f, int64_t rounding, int64_t k0, int64_t k1) {
  const Spec s = spec_of(kind, p, f, rounding, k0, k1);
  const bool integer = kind == FIXED_POINT || kind == BLOCK_FLOAT;
  TORCH_CHECK(integer ? p[P_WL] <= 8 : (p[P_MAN] == 3 || p[P_MAN] == 2),
              "swalp::quantize_pack: integer formats of at most 8 bits, or E4M3/E5M2 elements");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "swalp::quantize_pack: float32 or float64 input");
  const at::Tensor xc = x.contiguous();
  const auto code_type = integer ? at::kChar : p[P_MAN] == 3 ? at::kFloat8_e4m3fn : at::kFloat8_e5m2;
  // Not from the output pool (output.cpp): packing is for saving memory, and the pool keeps freed buffers.
  at::Tensor codes = at::empty(x.sizes(), x.options().dtype(code_type));
  std::vector<int64_t> eshape;  // exponents: () for one block, (L) per index, (..., G) for tiles
  if (kind == FIXED_POINT || kind == FLOAT_FORMAT || x.numel() == 0) {
    eshape = {0};
  } else if (s.block == PER_AXIS && x.dim() > 0) {
    eshape = {x.size(s.axis)};
  } else if (s.block == PER_GROUP && x.dim() > 0) {
    for (int64_t d = 0; d < x.dim(); ++d)
      if (d != s.axis) eshape.push_back(x.size(d));
    const int64_t L = x.size(s.axis), k = std::min<int64_t>(s.size, L);
    eshape.push_back((L + k - 1) / k);
  }
  at::Tensor exps = at::empty(eshape, x.options().dtype(at::kChar));
  std::atomic<int64_t> nan{0};
  int8_t* e = exps.numel() ? exps.mutable_data_ptr<int8_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "swalp_quantize_pack", [&] {
    const scalar_t* in = xc.const_data_ptr<scalar_t>();
    if (integer) {
      Quant<scalar_t, int8_t>{s, e, &nan}.run(in, codes.mutable_data_ptr<int8_t>(), xc.sizes());
    } else if (code_type == at::kFloat8_e4m3fn) {
      auto* out = reinterpret_cast<E4M3Code*>(codes.view(at::kByte).mutable_data_ptr<uint8_t>());
      Quant<scalar_t, E4M3Code>{s, e}.run(in, out, xc.sizes());
    } else {
      auto* out = reinterpret_cast<E5M2Code*>(codes.view(at::kByte).mutable_data_ptr<uint8_t>());
      Quant<scalar_t, E5M2Code>{s, e}.run(in, out, xc.sizes());
    }
  });
  TORCH_CHECK_VALUE(nan.load() == 0, "cannot pack NaN into a fixed-point or block floating-point format: it has no NaN code");
  return {codes, exps};
}

}  // namespace

namespace swalp {
std::tuple<at::Tensor, at::Tensor> quantize_pack(const at::Tensor& x, int64_t kind, at::IntArrayRef p,
                                                 at::ArrayRef<double> f, int64_t rounding, int64_t k0, int64_t k1) {
  return quantize_pack_cpu(x, kind, p, f, rounding, k0, k1);
}
}  // namespace swalp

TORCH_LIBRARY_IMPL(swalp, CPU, m) { m.impl("quantize_pack", &quantize_pack_cpu); }
