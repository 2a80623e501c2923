// The CPU kernels of the int8 products (swalp/ops/intmm.py, swalp/ops/intconv.py): grid_codes,
// channel_codes and im2col, each the Python function of the same name in one pass, with the
// same results.
//
// swalp_cpu::grid_codes: swalp/ops/intmm.py grid_codes, bit for bit.
//
// For each slice of a 2-D float32 x along `dim` (rows for dim 1, columns for dim 0): m = max |x|,
// k = e - 7 for m = mant 2^e (mant in [0.5, 1)), one less when m is a power of two reached only
// by negative elements (the code -128), 0 for an all-zero slice; scale = 2^max(k, -149);
// codes = round(x / scale) (half to even). x qualifies when it is finite, every code is at most
// 127 and codes * scale == x exactly. The divisions and products are the ones torch does in
// the Python definition, so the answer and the codes are the same; tests/test_int8.py checks it.
//
// Returns (codes int8 of x's shape, scale float32 of x's shape with 1 along dim), or two empty
// tensors where x does not qualify.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>

namespace {

// Maxima as integers (which vectorise without -ffast-math): |x|'s bits, NaN and inf above
// 0x7f7fffff; and x's bits as a signed int, positive exactly for positive x, so that the
// largest positive element (if any) has the largest.
struct Slice {
  int32_t abs = 0, top = INT32_MIN;
  bool bad() const { return abs >= 0x7f800000; }
};

inline int32_t bits(float v) {
  int32_t i;
  std::memcpy(&i, &v, sizeof i);
  return i;
}

inline void add(Slice& s, const float* x, int64_t n) {
  int32_t a = s.abs, t = s.top;
  for (int64_t j = 0; j < n; ++j) {
    const int32_t b = bits(x[j]);
    a = std::max(a, b & 0x7fffffff);
    t = std::max(t, b);
  }
  s.abs = a, s.top = t;
}

float scale_of(const Slice& s) {
  if (s.abs == 0) return 1.0f;
  float m;
  std::memcpy(&m, &s.abs, sizeof m);
  int e;
  const float mant = std::frexp(m, &e);
  const int k = e - 7 - ((mant == 0.5f && s.top < s.abs) ? 1 : 0);  // +m itself is absent
  return std::ldexp(1.0f, std::max(k, -149));
}

// Codes of n elements, each with its scale (one, or one per element of a row): false when one
// is off the grid.
template <bool PER_ELEMENT>
bool encode(const float* __restrict x, int8_t* __restrict c, const float* __restrict scale, int64_t n) {
  int32_t bad = 0;
  for (int64_t j = 0; j < n; ++j) {
    const float s = PER_ELEMENT ? scale[j] : scale[0];
    const float q = std::nearbyint(x[j] / s);
    bad |= (q > 127.0f) | (q * s != x[j]);
    c[j] = static_cast<int8_t>(static_cast<int32_t>(std::max(std::min(q, 127.0f), -128.0f)));
  }
  return bad == 0;
}

// A scale per row of the (rows, N * L) matrix that x (N, rows, L) is when its first two axes are
// swapped (N = 1: x's own rows): a convolution's output gradient dY (N, C, H, W) as the rows
// of dY^T, with no transposed copy. Each row's N runs are read for the maximum, then encoded.
bool row_codes(const float* xp, int8_t* cp, float* sp, int64_t n, int64_t rows, int64_t len) {
  std::atomic<bool> ok{true};
  at::parallel_for(0, rows, std::max<int64_t>(1, (1 << 14) / std::max<int64_t>(n * len, 1)), [&](int64_t b, int64_t e) {
    bool good = true;
    for (int64_t r = b; r < e && good; ++r) {
      Slice s;
      for (int64_t i = 0; i < n; ++i) add(s, xp + (i * rows + r) * len, len);
      sp[r] = scale_of(s);
      good = !s.bad();
      for (int64_t i = 0; i < n && good; ++i)
        good = encode<false>(xp + (i * rows + r) * len, cp + (r * n + i) * len, sp + r, len);
    }
    if (!good) ok = false;
  });
  return ok;
}

std::tuple<at::Tensor, at::Tensor> refused() { return {at::empty({0}, at::kChar), at::empty({0}, at::kFloat)}; }

// swalp_cpu::channel_codes: grid_codes(x.transpose(0, 1).reshape(C, -1), 1) of x (N, C, ...).
std::tuple<at::Tensor, at::Tensor> channel_codes(const at::Tensor& input) {
  TORCH_CHECK(input.dtype() == at::kFloat && input.dim() >= 2 && input.device().is_cpu(),
              "swalp_cpu::channel_codes: a float32 CPU tensor (N, C, ...)");
  const at::Tensor x = input.contiguous();
  const int64_t n = x.size(0), c = x.size(1), len = n * c == 0 ? 0 : x.numel() / (n * c);
  at::Tensor codes = at::empty({c, n * len}, at::kChar), scale = at::empty({c, 1}, at::kFloat);
  if (!row_codes(x.const_data_ptr<float>(), codes.data_ptr<int8_t>(), scale.data_ptr<float>(), n, c, len))
    return refused();
  return {codes, scale};
}

std::tuple<at::Tensor, at::Tensor> grid_codes(const at::Tensor& input, int64_t dim) {
  TORCH_CHECK(input.dtype() == at::kFloat && input.dim() == 2 && (dim == 0 || dim == 1) && input.device().is_cpu(),
              "swalp_cpu::grid_codes: a 2-D float32 CPU tensor and dim 0 or 1");
  const at::Tensor x = input.contiguous();
  const int64_t rows = x.size(0), cols = x.size(1);
  at::Tensor codes = at::empty({rows, cols}, at::kChar);
  at::Tensor scale = dim == 1 ? at::empty({rows, 1}, at::kFloat) : at::empty({1, cols}, at::kFloat);
  const float* xp = x.const_data_ptr<float>();
  int8_t* cp = codes.data_ptr<int8_t>();
  float* sp = scale.data_ptr<float>();
  std::atomic<bool> ok{true};
  if (dim == 1) {
    ok = row_codes(xp, cp, sp, 1, rows, cols);
  } else {  // a scale per column: column maxima across each row, then each row encoded
    std::vector<int32_t> abs(cols, 0), top(cols, INT32_MIN);
    for (int64_t r = 0; r < rows; ++r) {
      const float* row = xp + r * cols;
      for (int64_t j = 0; j < cols; ++j) {
        const int32_t b = bits(row[j]);
        abs[j] = std::max(abs[j], b & 0x7fffffff);
        top[j] = std::max(top[j], b);
      }
    }
    for (int64_t j = 0; j < cols; ++j) {
      const Slice s{abs[j], top[j]};
      if (s.bad()) return refused();
      sp[j] = scale_of(s);
    }
    at::parallel_for(0, rows, std::max<int64_t>(1, (1 << 14) / std::max<int64_t>(cols, 1)), [&](int64_t b, int64_t e) {
      bool good = true;
      for (int64_t r = b; r < e && good; ++r) good = encode<true>(xp + r * cols, cp + r * cols, sp, cols);
      if (!good) ok = false;
    });
  }
  if (!ok) return refused();
  return {codes, scale};
}

// swalp_cpu::im2col: swalp/ops/intconv.py im2col for int8 codes (N, C, H, W): rows (n, ho, wo),
// columns (i, j, c). The input is first laid out as zero-padded (N, H + 2 ph, W + 2 pw, C), so that
// each of a row's kh * kw pieces is one contiguous run of C bytes (the Python version copies
// kh * kw strided views instead: several times slower here).
at::Tensor im2col(const at::Tensor& codes, at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding,
                  at::IntArrayRef dilation) {
  TORCH_CHECK(codes.dtype() == at::kChar && codes.dim() == 4 && codes.device().is_cpu() && kernel.size() == 2 &&
                  stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
              "swalp_cpu::im2col: int8 (N, C, H, W) codes and pairs of geometry");
  const int64_t n = codes.size(0), c = codes.size(1), h = codes.size(2), w = codes.size(3);
  const int64_t kh = kernel[0], kw = kernel[1], sh = stride[0], sw = stride[1], ph = padding[0], pw = padding[1],
                dh = dilation[0], dw = dilation[1];
  const int64_t hp = h + 2 * ph, wp = w + 2 * pw;
  TORCH_CHECK(kh >= 1 && kw >= 1 && sh >= 1 && sw >= 1 && ph >= 0 && pw >= 0 && dh >= 1 && dw >= 1 &&
                  hp >= dh * (kh - 1) + 1 && wp >= dw * (kw - 1) + 1,
              "swalp_cpu::im2col: bad geometry");
  const int64_t ho = (hp - dh * (kh - 1) - 1) / sh + 1, wo = (wp - dw * (kw - 1) - 1) / sw + 1;
  at::Tensor padded = at::zeros({n, hp, wp, c}, at::kChar);
  padded.slice(1, ph, ph + h).slice(2, pw, pw + w).copy_(codes.permute({0, 2, 3, 1}));
  at::Tensor out = at::empty({n * ho * wo, kh * kw * c}, at::kChar);
  const int8_t* x = padded.const_data_ptr<int8_t>();
  int8_t* o = out.data_ptr<int8_t>();
  const int64_t row = kh * kw * c;
  at::parallel_for(0, n * ho, std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(wo * row, 1)), [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t img = t / ho, y = t % ho;
      for (int64_t xo = 0; xo < wo; ++xo) {
        int8_t* dst = o + (t * wo + xo) * row;
        for (int64_t i = 0; i < kh; ++i) {
          const int8_t* src = x + ((img * hp + y * sh + i * dh) * wp + xo * sw) * c;
          for (int64_t j = 0; j < kw; ++j, dst += c) std::memcpy(dst, src + j * dw * c, c);
        }
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(swalp_cpu, m) {
  m.def("grid_codes(Tensor x, int dim) -> (Tensor, Tensor)", &grid_codes);
  m.def("channel_codes(Tensor x) -> (Tensor, Tensor)", &channel_codes);
  m.def("im2col(Tensor codes, int[] kernel, int[] stride, int[] padding, int[] dilation) -> Tensor", &im2col);
}
