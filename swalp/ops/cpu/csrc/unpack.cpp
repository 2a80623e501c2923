// swalp::unpack on the CPU: a PackedTensor's codes and per-block exponents back to float32 in
// one pass (swalp/ops/packed.py PackedTensor.unpack is the definition, in PyTorch): each value
// is code * 2^a * 2^(s - a), with s the block's exponent less the format's shift and
// a = floor(s / 2), two exact power-of-two factors multiplied in that order, as the Python
// side (pow2_mul in swalp/ops/_reference.py) does, so the results agree bit for bit.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace {

enum Blocking : int64_t { WHOLE = 0, PER_AXIS = 1, PER_GROUP = 2 };  // swalp/ops/_schema.py Block

inline float pow2f(int32_t k) {  // k in the normal range
  const uint32_t u = static_cast<uint32_t>(k + 127) << 23;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline int32_t floor_half(int32_t s) { return s >= 0 ? s / 2 : -((1 - s) / 2); }

// The float value of each of a float8 type's 256 codes, by c10's own conversion: a table in
// L1 makes the conversion one load per element, where c10's takes dozens of instructions.
template <typename C> const float* values_of() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (int b = 0; b < 256; ++b) t[b] = static_cast<float>(C(static_cast<uint8_t>(b), C::from_bits()));
    return t;
  }();
  return table.data();
}

// out[j] = code[j] * 2^a * 2^b over a contiguous run whose exponent is one constant.
template <typename C> inline void run(const C* c, float* o, int64_t n, int32_t s) {
  const int32_t a = floor_half(s);
  const float fa = pow2f(a), fb = pow2f(s - a);
  if constexpr (std::is_same_v<C, int8_t>) {
    for (int64_t j = 0; j < n; ++j) o[j] = static_cast<float>(c[j]) * fa * fb;
  } else {
    const float* table = values_of<C>();
    const uint8_t* bits = reinterpret_cast<const uint8_t*>(c);
    for (int64_t j = 0; j < n; ++j) o[j] = table[bits[j]] * fa * fb;
  }
}

template <typename C>
void unpack_into(const C* c, const int8_t* e, float* o, int64_t outer, int64_t L, int64_t inner, int64_t shift,
                 int64_t block, int64_t k) {
  const int64_t n = outer * L * inner;
  if (block == WHOLE) {  // no exponents (fixed point, plain floats): the shift alone
    const int32_t s = (e == nullptr ? 0 : e[0]) - static_cast<int32_t>(shift);
    at::parallel_for(0, n, 1 << 16, [&](int64_t b, int64_t end) { run(c + b, o + b, end - b, s); });
    return;
  }
  const int64_t G = (L + k - 1) / k;
  if (block == PER_GROUP && inner == 1) {  // tiles along the last axis: each a contiguous run
    at::parallel_for(0, outer, std::max<int64_t>(1, (1 << 16) / L), [&](int64_t b, int64_t end) {
      for (int64_t ob = b; ob < end; ++ob)
        for (int64_t g = 0; g < G; ++g) {
          const int64_t at = ob * L + g * k;
          run(c + at, o + at, std::min(k, L - g * k), e[ob * G + g] - static_cast<int32_t>(shift));
        }
    });
    return;
  }
  at::parallel_for(0, outer * L, std::max<int64_t>(1, (1 << 14) / std::max<int64_t>(inner, 1)), [&](int64_t b, int64_t end) {
    for (int64_t r = b; r < end; ++r) {
      const int64_t ob = r / L, l = r % L, base = r * inner;
      if (block == PER_AXIS) {
        run(c + base, o + base, inner, e[l] - static_cast<int32_t>(shift));
      } else {  // tiles: exponents laid out as (outer, inner, G)
        for (int64_t i = 0; i < inner; ++i) run(c + base + i, o + base + i, 1, e[(ob * inner + i) * G + l / k] - static_cast<int32_t>(shift));
      }
    }
  });
}

// codes: int8, float8_e4m3fn or float8_e5m2; exps: int8, one per block (none: fixed point
// and plain floats, whose scale is 2^-shift).
at::Tensor unpack_cpu(const at::Tensor& codes, const at::Tensor& exps, int64_t shift, int64_t block, int64_t axis,
                      int64_t size) {
  TORCH_CHECK(block >= WHOLE && block <= PER_GROUP, "swalp::unpack: unknown blocking ", block);
  TORCH_CHECK(exps.scalar_type() == at::kChar, "swalp::unpack: int8 exponents");
  const at::Tensor c = codes.contiguous(), e = exps.contiguous();
  at::Tensor out = at::empty(c.sizes(), c.options().dtype(at::kFloat));
  if (c.numel() == 0) return out;
  int64_t outer = 1, L = c.numel(), inner = 1;
  if (block != WHOLE) {
    TORCH_CHECK(axis >= 0 && axis < c.dim(), "swalp::unpack: axis ", axis, " out of range");
    L = c.size(axis);
    outer = 1;
    for (int64_t d = 0; d < axis; ++d) outer *= c.size(d);
    for (int64_t d = axis + 1; d < c.dim(); ++d) inner *= c.size(d);
  }
  const int64_t k = block == PER_GROUP ? std::min<int64_t>(std::max<int64_t>(size, 1), L) : 1;
  const int64_t blocks = block == WHOLE ? std::min<int64_t>(e.numel(), 1) : block == PER_AXIS ? L : outer * inner * ((L + k - 1) / k);
  TORCH_CHECK(e.numel() >= blocks, "swalp::unpack: ", e.numel(), " exponents for ", blocks, " blocks");
  const int8_t* ep = e.numel() ? e.const_data_ptr<int8_t>() : nullptr;
  float* o = out.mutable_data_ptr<float>();
  switch (c.scalar_type()) {
    case at::kChar:
      unpack_into(c.const_data_ptr<int8_t>(), ep, o, outer, L, inner, shift, block, k);
      break;
    case at::kFloat8_e4m3fn:
      unpack_into(c.const_data_ptr<c10::Float8_e4m3fn>(), ep, o, outer, L, inner, shift, block, k);
      break;
    case at::kFloat8_e5m2:
      unpack_into(c.const_data_ptr<c10::Float8_e5m2>(), ep, o, outer, L, inner, shift, block, k);
      break;
    default:
      TORCH_CHECK(false, "swalp::unpack: int8 or float8 codes, got ", c.scalar_type());
  }
  return out;
}

}  // namespace

namespace swalp {
at::Tensor unpack(const at::Tensor& codes, const at::Tensor& exps, int64_t shift, int64_t block, int64_t axis,
                  int64_t size) {
  return unpack_cpu(codes, exps, shift, block, axis, size);
}
}  // namespace swalp

TORCH_LIBRARY_IMPL(swalp, CPU, m) { m.impl("unpack", &unpack_cpu); }
