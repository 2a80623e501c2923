// The CPU kernels of the swalp ops: the reference quantizer (swalp/ops/_reference.py) in C++,
// bit for bit. Read that file first: every step below repeats one of its steps. The op's
// schema and the meaning of its parameter vectors are in swalp/ops/_schema.py.
//
// Layout of the work. The input is made contiguous and viewed as [outer, L, inner], with
// L the length of the blocking axis. Each inner loop ("span") quantizes a contiguous run
// of elements whose shift (or MX scale) is one constant or one int per element; the
// loops are plain scalar C++ that GCC vectorises (no intrinsics): bit casts, 32-bit
// integer hashing, floor/nearbyint, selects. The Python side (swalp/ops/cpu/_build.py) builds
// with -O3 -ffp-contract=off (no FMA contraction: results must not depend on the compiler)
// and adds AVX2 (or AVX-512) flags only when the building CPU has them; the build cache
// is keyed by that choice. The hash (4 vector multiplies per element) is about half of the
// stochastic loop's instructions: docs/bench/quantize_cpu.json has the resulting speeds.
//
// Block maxima: integer max of |x|'s bits (monotone for non-negative floats; non-finite
// bit patterns are dropped), which vectorises where a float max reduction would not
// without -ffast-math. Blocks that fit in cache (per-row, k-tiles) are read once for the
// maximum and quantized while still in cache; whole-tensor and strided blocks take two
// passes over memory.

//
// This header holds the kernels (Quant and its spans); quantize.cpp and pack.cpp hold the
// ops built on them. Everything here has internal linkage: each file gets its own copy.

#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

namespace swalp {
at::Tensor empty_output(const at::Tensor& x);  // output.cpp: contiguous, huge pages, reused
at::Tensor empty_output(at::IntArrayRef sizes, at::ScalarType dtype);
uint64_t splitmix64(uint64_t z);               // quantize.cpp: swalp/_rng.py splitmix64
// pack.cpp and unpack.cpp: the swalp::quantize_pack and swalp::unpack ops, for sgd.cpp.
std::tuple<at::Tensor, at::Tensor> quantize_pack(const at::Tensor& x, int64_t kind, at::IntArrayRef p,
                                                 at::ArrayRef<double> f, int64_t rounding, int64_t k0, int64_t k1);
at::Tensor unpack(const at::Tensor& codes, const at::Tensor& exps, int64_t shift, int64_t block, int64_t axis,
                  int64_t size);
}  // namespace swalp

namespace {

constexpr int64_t GRAIN = 1 << 15;  // elements per parallel task, at least
constexpr int64_t TILE = 512;       // elements per run of small tiles, and per 16-bit conversion
constexpr int64_t FUSE_ROW = 1 << 16;  // rows up to this many elements stay in cache

template <typename T> struct FP;
template <> struct FP<float> {
  using U = uint32_t;
  using S = int32_t;
  static constexpr int MAN = 23, BIAS = 127;
  static constexpr U ABS = 0x7fffffffu, INF = 0x7f800000u;
};
template <> struct FP<double> {
  using U = uint64_t;
  using S = int64_t;
  static constexpr int MAN = 52, BIAS = 1023;
  static constexpr U ABS = 0x7fffffffffffffffull, INF = 0x7ff0000000000000ull;
};

template <typename T> inline typename FP<T>::U bits(T x) {
  typename FP<T>::U u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}
template <typename T> inline T from_bits(typename FP<T>::U u) {
  T x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

// 2^k for k in the normal range, built from the exponent bits (reference: pow2).
template <typename T> inline T pow2(int k) {
  using U = typename FP<T>::U;
  return from_bits<T>(static_cast<U>(k + FP<T>::BIAS) << FP<T>::MAN);
}

// x * 2^k in two exact steps (reference: pow2_mul); k >> 1 is floor(k / 2) in GCC.
template <typename T> inline T pow2_mul(T x, int k) {
  const int a = k >> 1;
  return x * pow2<T>(a) * pow2<T>(k - a);
}

// floor(log2 m) for positive finite m; subnormals are scaled up by 2^MAN first (exact).
template <typename T> inline int floor_log2(T m) {
  using U = typename FP<T>::U;
  const bool sub = bits(m) < (U(1) << FP<T>::MAN);
  const T m2 = sub ? m * pow2<T>(FP<T>::MAN) : m;
  return static_cast<int>(bits(m2) >> FP<T>::MAN) - FP<T>::BIAS - (sub ? FP<T>::MAN : 0);
}

// |x|'s bits, or 0 for NaN/inf: the quantity whose maximum is the block maximum.
// Signed, because GCC vectorises signed integer max reductions and not unsigned ones.
template <typename T> inline typename FP<T>::S abs_bits(T x) {
  using S = typename FP<T>::S;
  const S a = static_cast<S>(bits(x) & FP<T>::ABS);
  return a < static_cast<S>(FP<T>::INF) ? a : 0;
}

inline uint32_t lowbias32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

// Random bits of the element at offset j of a span: h = H(H(i_lo + k0) ^ (i_hi + k1)).
// A span never crosses a multiple of 2^32 (see Quant::span), so i_hi is constant in it.
struct Rng {
  uint32_t lo, hi;
};

// c = i_lo + k0 of the element: loops keep it as a 32-bit counter of their own, which
// vectorises better than narrowing the 64-bit loop index.
template <typename T, bool STOCH> inline T round_(T s, const Rng& r, uint32_t c) {
  if constexpr (STOCH) {
    const T f = std::floor(s);
    const uint32_t h = lowbias32(lowbias32(c) ^ r.hi);
    const T u = static_cast<T>(static_cast<int32_t>(h >> 8)) * static_cast<T>(1.0 / 16777216.0);
    return f + (u < s - f ? T(1) : T(0));
  } else {
    return std::nearbyint(s);  // half to even in the default rounding mode
  }
}

// clamp that keeps NaN, as torch.clamp does.
template <typename T> inline T clamp_nan(T q, T lo, T hi) {
  q = q < lo ? lo : q;
  return q > hi ? hi : q;
}

// The op's codes and parameter vectors by name, in the order of swalp/ops/_schema.py
// (Kind, Block, Param, Bound); tests/test_kernels.py checks that the two files agree.
enum Kind : int { FIXED_POINT = 0, BLOCK_FLOAT = 1, FLOAT_FORMAT = 2, MX_FLOAT = 3 };
enum Block : int { WHOLE = 0, PER_AXIS = 1, PER_GROUP = 2 };
enum Param : int { P_FL, P_WL, P_EMIN, P_EMAX, P_OFFSET, P_BLOCK, P_AXIS, P_MAN, P_FEMIN, P_SIZE, P_SAT, N_PARAMS };
enum Bound : int { B_QMIN, B_QMAX, B_BIG, N_BOUNDS };

struct Spec {
  int kind;  // a Kind
  bool stoch;
  uint32_t k0, k1;
  int fl, wl, emin, emax, offset, block, axis, man, femin;
  int64_t size;
  bool sat;
  double qmin, qmax, big;
};

// Integer grids (FixedPoint, BlockFloat): q = clamp(R(x * 2^k)) * 2^-k, k constant or per element.
// With an integer output type O the codes q themselves are written (swalp::quantize_pack);
// a NaN, which no code holds, is written as 0 and counted in the return value.
template <typename T, bool STOCH, bool VEC, typename O>
int64_t int_span(const T* __restrict x, O* __restrict y, int64_t n, Rng r, int k,
                 const int32_t* __restrict ks, T lo, T hi, int ktop) {
  const T a1 = pow2<T>(k >> 1), a2 = pow2<T>(k - (k >> 1));
  const T b1 = pow2<T>((-k) >> 1), b2 = pow2<T>(-k - ((-k) >> 1));
  // At a shift of ktop or less the code lo times the step would overflow T (_round_int in
  // swalp/ops/_reference.py): the codes are symmetric there.
  const T top_lo = std::max(lo, -hi), lo_k = k <= ktop ? top_lo : lo;
  uint32_t c = r.lo;
  int32_t nan = 0;  // any NaN: an OR in 32-bit lanes vectorises better than a 64-bit count
  for (int64_t j = 0; j < n; ++j, ++c) {
    T s, l;
    if constexpr (VEC) s = pow2_mul(x[j], ks[j]), l = ks[j] <= ktop ? top_lo : lo;
    else s = x[j] * a1 * a2, l = lo_k;
    const T q = clamp_nan(round_<T, STOCH>(s, r, c), l, hi) + T(0);  // -0 -> +0: integer codes have no -0
    if constexpr (std::is_integral_v<O>) {
      nan |= q != q;
      y[j] = static_cast<O>(q == q ? q : T(0));
    } else if constexpr (VEC) {
      y[j] = pow2_mul(q, -ks[j]);
    } else {
      y[j] = q * b1 * b2;
    }
  }
  if constexpr (std::is_integral_v<O>) {
    if (nan) return std::count_if(x, x + n, [](T v) { return v != v; });  // rare: count them
  }
  return 0;
}

// Small floats (FloatFormat; MXFloat when MX: scaled by 2^-scale before, 2^scale after).
// With a float8 code type O the element values themselves are written (swalp::quantize_pack),
// before an MX block's scale.
// ELEMENT: write the element value, before an MX block's scale (what packing encodes).
template <typename T, bool STOCH, bool SAT, int MX /*0 none, 1 constant, 2 per element*/, bool ELEMENT = false>
void float_values(const T* __restrict x, T* __restrict y, int64_t n, Rng r, int sc,
                  const int32_t* __restrict scs, int man, int femin, T big) {
  using U = typename FP<T>::U;
  uint32_t c = r.lo;
  for (int64_t j = 0; j < n; ++j, ++c) {
    const int scale = MX == 2 ? scs[j] : sc;
    T v = x[j];
    if constexpr (MX != 0) v = pow2_mul(v, -scale);
    const U a = bits(v) & FP<T>::ABS;
    const bool normal = a - 1 < FP<T>::INF - 1;  // finite and non-zero
    int e = floor_log2(normal ? from_bits<T>(a) : T(1));
    e = e < femin ? femin : e;
    const int sh = man - e;
    T o = pow2_mul(round_<T, STOCH>(pow2_mul(v, sh), r, c), -sh);
    if constexpr (SAT) o = clamp_nan(o, -big, big);
    else o = std::abs(o) > big ? std::copysign(std::numeric_limits<T>::infinity(), o) : o;
    if constexpr (MX != 0 && !ELEMENT) o = pow2_mul(o, scale);
    y[j] = o;
  }
}

// float_values into y, or, for a float8 code type O, tile by tile: the element values (the
// loop above, vectorised) into a buffer in cache, then their bits (swalp::quantize_pack).
template <typename T, bool STOCH, bool SAT, int MX, typename O>
void float_span(const T* __restrict x, O* __restrict y, int64_t n, Rng r, int sc,
                const int32_t* __restrict scs, int man, int femin, T big) {
  if constexpr (std::is_same_v<O, T>) {
    float_values<T, STOCH, SAT, MX>(x, y, n, r, sc, scs, man, femin, big);
  } else {
    T buf[TILE];
    for (int64_t t = 0; t < n; t += TILE) {
      const int64_t m = std::min(TILE, n - t);
      float_values<T, STOCH, SAT, MX, true>(x + t, buf, m, Rng{r.lo + static_cast<uint32_t>(t), r.hi}, sc,
                                            scs ? scs + t : nullptr, man, femin, big);
      for (int64_t j = 0; j < m; ++j) y[t + j] = O::of(static_cast<float>(buf[j]));
    }
  }
}

// Out = In: the grid values (swalp::quantize). Out = int8_t: the integer codes, with each
// block's exponent written to exps (swalp::quantize_pack; integer formats, float inputs).
template <typename In, typename Out = In> struct Quant {
  using T = std::conditional_t<std::is_same_v<In, double>, double, float>;
  using U = typename FP<T>::S;  // block maxima as the bits of |x| (see abs_bits)
  const Spec& s;
  int8_t* exps = nullptr;              // one exponent per block, in swalp/ops/packed.py's layout
  std::atomic<int64_t>* nan = nullptr;  // NaN elements seen while packing

  // The block's parameter (BlockFloat: the shift k; MX: the scale), written down as its
  // exponent when packing: (wl - 2) - k, or the scale itself.
  int32_t note(int64_t block, int32_t k) const {
    if (exps != nullptr) exps[block] = static_cast<int8_t>(s.kind == BLOCK_FLOAT ? (s.wl - 2) - k : k);
    return k;
  }

  // Shift of a BlockFloat block (or scale of an MX block) from its maximum's bits.
  int block_param(U m) const {
    int e = s.emin;
    if (m != 0) {
      e = floor_log2(from_bits<T>(static_cast<typename FP<T>::U>(m))) - s.offset;
      e = std::min(std::max(e, s.emin), s.emax);
    }
    return s.kind == BLOCK_FLOAT ? (s.wl - 2) - e : e;
  }

  U absmax(const In* x, int64_t n) const {
    U m = 0;
    for (int64_t j = 0; j < n; ++j) {
      m = std::max(m, abs_bits(static_cast<T>(x[j])));
    }
    return m;
  }

  template <typename O> void kernel(const T* x, O* y, int64_t n, Rng r, int k, const int32_t* ks) const {
    const bool v = ks != nullptr;
    if (s.kind == FIXED_POINT || s.kind == BLOCK_FLOAT) {
      if constexpr (std::is_same_v<O, T> || std::is_integral_v<O>) {
        const T lo = static_cast<T>(s.qmin), hi = static_cast<T>(s.qmax);
        const int ktop = s.kind == BLOCK_FLOAT ? (s.wl - 1) - std::numeric_limits<T>::max_exponent : INT_MIN;
        int64_t bad;
        if (s.stoch && v) bad = int_span<T, true, true>(x, y, n, r, k, ks, lo, hi, ktop);
        else if (s.stoch) bad = int_span<T, true, false>(x, y, n, r, k, ks, lo, hi, ktop);
        else if (v) bad = int_span<T, false, true>(x, y, n, r, k, ks, lo, hi, ktop);
        else bad = int_span<T, false, false>(x, y, n, r, k, ks, lo, hi, ktop);
        if (bad && nan != nullptr) *nan += bad;
      } else {
        TORCH_CHECK(false, "swalp::quantize_pack: an integer format's codes are integers");
      }
      return;
    }
    if constexpr (std::is_integral_v<O>) {
      TORCH_CHECK(false, "swalp::quantize_pack: an integer format's codes are integers");
    } else {
    const T big = static_cast<T>(s.big);
#define SWALP_FLOAT(MX) \
  (s.stoch ? (s.sat ? float_span<T, true, true, MX>(x, y, n, r, k, ks, s.man, s.femin, big)       \
                    : float_span<T, true, false, MX>(x, y, n, r, k, ks, s.man, s.femin, big))     \
           : (s.sat ? float_span<T, false, true, MX>(x, y, n, r, k, ks, s.man, s.femin, big)      \
                    : float_span<T, false, false, MX>(x, y, n, r, k, ks, s.man, s.femin, big)))
    if (s.kind == FLOAT_FORMAT) SWALP_FLOAT(0);
    else if (v) SWALP_FLOAT(2);
    else SWALP_FLOAT(1);
#undef SWALP_FLOAT
    }
  }

  // Quantize n contiguous elements whose first logical index is i0, with shift/scale k
  // (or ks[j] per element when ks is given).
  void span(const In* x, Out* y, int64_t n, int64_t i0, int k, const int32_t* ks) const {
    while (n > 0) {
      // Split where the high 32 bits of the index change, so that Rng::hi is constant.
      const int64_t m = std::min<int64_t>(n, (int64_t(1) << 32) - (i0 & 0xffffffffLL));
      const Rng r{static_cast<uint32_t>(i0) + s.k0, static_cast<uint32_t>(uint64_t(i0) >> 32) + s.k1};
      if constexpr (std::is_same_v<In, T>) {
        kernel(x, y, m, r, k, ks);
      } else if constexpr (!std::is_same_v<In, Out>) {
        TORCH_CHECK(false, "swalp::quantize_pack: float32 or float64 input");
      } else {  // 16-bit input: convert a tile to float, quantize, convert back
        T bx[TILE], by[TILE];
        for (int64_t t = 0; t < m; t += TILE) {
          const int64_t c = std::min(TILE, m - t);
          for (int64_t j = 0; j < c; ++j) bx[j] = static_cast<T>(x[t + j]);
          kernel(bx, by, c, Rng{r.lo + static_cast<uint32_t>(t), r.hi}, k, ks ? ks + t : nullptr);
          for (int64_t j = 0; j < c; ++j) y[t + j] = static_cast<In>(by[j]);
        }
      }
      x += m, y += m, n -= m, i0 += m;
      if (ks) ks += m;
    }
  }

  void elementwise(const In* x, Out* y, int64_t n, int64_t i0, int k) const {
    at::parallel_for(0, n, GRAIN, [&](int64_t b, int64_t e) { span(x + b, y + b, e - b, i0 + b, k, nullptr); });
  }

  U parallel_absmax(const In* x, int64_t n) const {
    return at::parallel_reduce(
        0, n, GRAIN, U(0), [&](int64_t b, int64_t e, U m) { return std::max(m, absmax(x + b, e - b)); },
        [](U a, U b) { return std::max(a, b); });
  }

  void per_tensor(const In* x, Out* y, int64_t n, int64_t i0, int64_t block = 0) const {
    elementwise(x, y, n, i0, note(block, block_param(parallel_absmax(x, n))));
  }

  // One block per index l along the axis: block l is rows (o, l) of `inner` elements.
  void per_axis(const In* x, Out* y, int64_t outer, int64_t L, int64_t inner) const {
    if (outer == 1 && inner == 1) return per_group(x, y, 1, L, 1, 1);  // a block per element
    if (outer == 1 && L >= at::get_num_threads() && inner <= FUSE_ROW) {
      // Each block is one contiguous row that fits in cache: max, then quantize it.
      at::parallel_for(0, L, std::max<int64_t>(1, GRAIN / inner), [&](int64_t b, int64_t e) {
        for (int64_t l = b; l < e; ++l)
          span(x + l * inner, y + l * inner, inner, l * inner, note(l, block_param(absmax(x + l * inner, inner))), nullptr);
      });
      return;
    }
    if (outer == 1) {  // few long rows: each is a whole-tensor problem
      for (int64_t l = 0; l < L; ++l) per_tensor(x + l * inner, y + l * inner, inner, l * inner, l);
      return;
    }
    std::vector<U> m(L, 0);
    if (inner == 1) {  // columns: maxima over rows, vectorised across the row
      at::parallel_for(0, L, std::max<int64_t>(1, GRAIN / outer), [&](int64_t b, int64_t e) {
        for (int64_t o = 0; o < outer; ++o)
          for (int64_t l = b; l < e; ++l) m[l] = std::max(m[l], abs_bits(static_cast<T>(x[o * L + l])));
      });
    } else {
      std::vector<U> rm(outer * L);
      at::parallel_for(0, outer * L, std::max<int64_t>(1, GRAIN / inner), [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) rm[r] = absmax(x + r * inner, inner);
      });
      for (int64_t r = 0; r < outer * L; ++r) m[r % L] = std::max(m[r % L], rm[r]);
    }
    std::vector<int32_t> ks(L);
    for (int64_t l = 0; l < L; ++l) ks[l] = note(l, block_param(m[l]));
    if (inner == 1) {
      at::parallel_for(0, outer, std::max<int64_t>(1, GRAIN / L), [&](int64_t b, int64_t e) {
        for (int64_t o = b; o < e; ++o) span(x + o * L, y + o * L, L, o * L, 0, ks.data());
      });
    } else {
      at::parallel_for(0, outer * L, std::max<int64_t>(1, GRAIN / inner), [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) span(x + r * inner, y + r * inner, inner, r * inner, ks[r % L], nullptr);
      });
    }
  }

  // Tiles of `size` along the axis (the last tile of each row may be shorter).
  void per_group(const In* x, Out* y, int64_t outer, int64_t L, int64_t inner, int64_t k) const {
    k = std::min(k, L);  // a tile longer than the axis is the whole axis (and k * W cannot overflow)
    const int64_t G = (L + k - 1) / k;
    if (inner == 1) {
      // Runs of whole groups of one row (about TILE elements): maxima, then one span.
      const int64_t per_run = std::max<int64_t>(1, TILE / k), runs_per_row = (G + per_run - 1) / per_run;
      at::parallel_for(0, outer * runs_per_row, std::max<int64_t>(1, GRAIN / (per_run * k)), [&](int64_t b, int64_t e) {
        std::vector<int32_t> ks(per_run * k);
        for (int64_t t = b; t < e; ++t) {
          const int64_t o = t / runs_per_row, g0 = (t % runs_per_row) * per_run, g1 = std::min(G, g0 + per_run);
          const int64_t start = o * L + g0 * k, len = std::min(L, g1 * k) - g0 * k;
          if (g1 - g0 == 1) {
            span(x + start, y + start, len, start, note(o * G + g0, block_param(absmax(x + start, len))), nullptr);
            continue;
          }
          int32_t* kp = ks.data();
          for (int64_t g = g0; g < g1; ++g) {
            const int64_t a = (g - g0) * k, c = std::min(k, L - g * k);
            const int32_t p = note(o * G + g, block_param(absmax(x + start + a, c)));
            for (int64_t j = 0; j < c; ++j) kp[a + j] = p;
          }
          span(x + start, y + start, len, start, 0, kp);
        }
      });
      return;
    }
    // Groups of rows along a middle axis: for each (o, g) and a chunk of columns,
    // column maxima over the group's rows, then quantize those rows.
    const int64_t W = std::min<int64_t>(inner, 1024), C = (inner + W - 1) / W;
    at::parallel_for(0, outer * G * C, std::max<int64_t>(1, GRAIN / (k * W)), [&](int64_t b, int64_t e) {
      std::vector<U> m(W);
      std::vector<int32_t> ks(W);
      for (int64_t t = b; t < e; ++t) {
        const int64_t o = t / (G * C), g = (t / C) % G, c0 = (t % C) * W, w = std::min(W, inner - c0);
        const int64_t rows = std::min(k, L - g * k), base = (o * L + g * k) * inner + c0;
        std::fill(m.begin(), m.begin() + w, U(0));
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t j = 0; j < w; ++j) m[j] = std::max(m[j], abs_bits(static_cast<T>(x[base + r * inner + j])));
        for (int64_t j = 0; j < w; ++j) ks[j] = note((o * inner + c0 + j) * G + g, block_param(m[j]));
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t at = base + r * inner;
          span(x + at, y + at, w, at, 0, ks.data());
        }
      }
    });
  }

  void run(const In* x, Out* y, at::IntArrayRef shape) const {
    int64_t n = 1;
    for (auto d : shape) n *= d;
    if (n == 0) return;
    if (s.kind == FIXED_POINT || s.kind == FLOAT_FORMAT) return elementwise(x, y, n, 0, s.fl);
    if (s.block == WHOLE || shape.empty()) return per_tensor(x, y, n, 0);
    int64_t outer = 1, inner = 1;
    for (int d = 0; d < s.axis; ++d) outer *= shape[d];
    for (size_t d = s.axis + 1; d < shape.size(); ++d) inner *= shape[d];
    const int64_t L = shape[s.axis];
    if (s.block == PER_AXIS) return per_axis(x, y, outer, L, inner);
    return per_group(x, y, outer, L, inner, s.size);
  }
};

// The Spec of the op's arguments (p: a Param vector, f: a Bound vector; swalp/ops/_schema.py).
inline Spec spec_of(int64_t kind, at::IntArrayRef p, at::ArrayRef<double> f, int64_t rounding, int64_t k0, int64_t k1) {
  TORCH_CHECK(p.size() == N_PARAMS && f.size() == N_BOUNDS, "swalp: bad parameter lists");
  auto i = [&](Param k) { return static_cast<int>(p[k]); };
  return Spec{static_cast<int>(kind), rounding == 1, static_cast<uint32_t>(k0), static_cast<uint32_t>(k1),
              i(P_FL), i(P_WL), i(P_EMIN), i(P_EMAX), i(P_OFFSET), i(P_BLOCK), i(P_AXIS), i(P_MAN), i(P_FEMIN),
              p[P_SIZE], p[P_SAT] != 0, f[B_QMIN], f[B_QMAX], f[B_BIG]};
}

}  // namespace
