// swalp_cpu::rounding_sums: the sums behind the rounding statistics (swalp/ops/stats.py, whose
// torch path is the definition) in one pass over x and its rounding y.
//
// x and y are contiguous, of one dtype, viewed as [outer, L, inner] with L the blocking axis.
// First the largest finite |x| of each block (`mode`: 0 no blocks, one step `step0` for all;
// 1 the whole tensor; 2 one block per index of L; 3 tiles of k along L), then each block's
// grid step at its top, 2^(clamp(floor(log2 m) - a, emin, emax) + b) (emin for m = 0: as
// swalp/ops/_reference.py block_exponent), then one pass for the sums, where element (o, l, i)
// reads step[o * so + (l / k) * sl + i * si]. Non-finite x counts nowhere; x - y is taken in
// float32 (float64 for float64 tensors) as the torch path takes it; everything is summed in
// double (float32 runs in float lanes first, below), per chunk of GRAIN elements, the chunks
// added in order: the result does not depend on the number of threads.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t GRAIN = 1 << 15;
constexpr int N_SUMS = 7;  // numel, saturated, nonzero x, nonzero y, sum x^2, sum (x - y)^2, max |x|

// x - y as the torch path computes it: in float32 unless the tensors are float64.
template <typename T> inline double diff(T x, T y) {
  using C = std::conditional_t<std::is_same_v<T, double>, double, float>;
  return static_cast<double>(static_cast<C>(x) - static_cast<C>(y));
}

struct Sums {
  double v[N_SUMS] = {0, 0, 0, 0, 0, 0, 0};

  template <typename T> inline void add(T xt, T yt, double step) {
    const double x = static_cast<double>(xt), y = static_cast<double>(yt);
    const bool finite = std::isfinite(x);
    const double xf = finite ? x : 0.0, yf = finite ? y : 0.0, d = finite ? diff(xt, yt) : 0.0;
    v[0] += finite;
    v[1] += std::fabs(d) >= step;  // clamped by a step or more (a y of inf for a finite x too)
    v[2] += xf != 0.0;
    v[3] += yf != 0.0;
    v[4] += xf * xf;
    v[5] += d * d;
    v[6] = std::max(v[6], std::fabs(xf));
  }
};

// float32 with one step for a run of RUN elements, in the style of quant.h (bit casts, integer
// tests and an integer max of |x|'s bits, which GCC vectorises where float selects and compares
// are not): LANES independent partial sums, each adding in its own order (no reassociation),
// moved into double at the end of the run. A run holding a non-finite x (whose bits exceed every
// finite |x|'s), or whose largest |x| lies outside [2^-50, 2^50] (squares float would lose or
// overflow), is summed again in double by Sums::add instead.
constexpr int LANES = 16;
constexpr int64_t RUN = 1024;
constexpr int32_t ABS = 0x7fffffff, INF_BITS = 0x7f800000;

inline int32_t fbits(float v) {
  int32_t u;
  std::memcpy(&u, &v, sizeof u);
  return u;
}
inline float ffrom(int32_t u) {
  float v;
  std::memcpy(&v, &u, sizeof v);
  return v;
}

// The sums of RUN elements into t, all counted finite; returns the bits of their largest |x|.
inline int32_t run_f32(const float* x, const float* y, int32_t st_bits, Sums& t) {
  int32_t ns[LANES] = {}, nx[LANES] = {}, ny[LANES] = {}, mx[LANES] = {};
  float sx[LANES] = {}, sd[LANES] = {};
  for (int64_t r = 0; r < RUN; r += LANES) {
    for (int q = 0; q < LANES; ++q) {
      const float xf = x[r + q], d = xf - y[r + q];
      const int32_t ax = fbits(xf) & ABS;
      ns[q] += (fbits(d) & ABS) >= st_bits;  // |d| >= step, compared as bits (ordered as values)
      nx[q] += ax != 0;
      ny[q] += (fbits(y[r + q]) & ABS) != 0;
      sx[q] += xf * xf;
      sd[q] += d * d;
      mx[q] = ax > mx[q] ? ax : mx[q];
    }
  }
  int32_t m = 0;
  t.v[0] += RUN;
  for (int q = 0; q < LANES; ++q) {
    t.v[1] += ns[q];
    t.v[2] += nx[q];
    t.v[3] += ny[q];
    t.v[4] += sx[q];
    t.v[5] += sd[q];
    m = mx[q] > m ? mx[q] : m;
  }
  t.v[6] = ffrom(m);
  return m;
}

// The sums over [b, e), where every element has the step st.
template <typename T>
void span(const T* x, const T* y, double st, int64_t b, int64_t e, Sums& s) {
  int64_t j = b;
  if constexpr (std::is_same_v<T, float>) {
    if (st >= std::numeric_limits<float>::min() && st <= std::numeric_limits<float>::max())  // exact in float
      for (; j + RUN <= e; j += RUN) {
        Sums t;
        const int32_t m = run_f32(x + j, y + j, fbits(static_cast<float>(st)), t);
        if (m == 0 || (m >= fbits(0x1p-50f) && m <= fbits(0x1p50f))) {
          for (int v = 0; v < N_SUMS - 1; ++v) s.v[v] += t.v[v];
          s.v[N_SUMS - 1] = std::max(s.v[N_SUMS - 1], t.v[N_SUMS - 1]);
        } else {
          for (int64_t i = j; i < j + RUN; ++i) s.add(x[i], y[i], st);
        }
      }
  }
  for (; j < e; ++j) s.add(x[j], y[j], st);
}

template <typename T>
Sums chunk(const T* x, const T* y, const double* step, int64_t b, int64_t e, int64_t L, int64_t inner, int64_t k,
           int64_t so, int64_t sl, int64_t si) {
  Sums s;
  if (so == 0 && sl == 0 && si == 0) {  // one step for the whole tensor
    span(x, y, step[0], b, e, s);
    return s;
  }
  if (k == 1 && si == 0) {  // one step per run of inner elements (a block per index of L)
    for (int64_t j = b; j < e;) {
      const int64_t run = j / inner, end = std::min(e, (run + 1) * inner);
      span(x, y, step[(run / L) * so + (run % L) * sl], j, end, s);
      j = end;
    }
    return s;
  }
  int64_t o = b / (L * inner), r = b % (L * inner), l = r / inner, i = r % inner;
  int64_t lk = l / k, lr = l % k;  // l's tile and place in it, kept without a division per element
  for (int64_t j = b; j < e; ++j) {
    s.add(x[j], y[j], step[o * so + lk * sl + i * si]);
    if (++i == inner) {
      i = 0;
      if (++lr == k) lr = 0, ++lk;
      if (++l == L) l = 0, lk = 0, lr = 0, ++o;
    }
  }
  return s;
}

template <typename T> inline double finite_abs(T v) {
  const double d = static_cast<double>(v);
  return std::isfinite(d) ? std::fabs(d) : 0.0;
}

// The largest finite |x| over [b, e); for float an integer max of |x|'s bits, which vectorises.
template <typename T>
double max_abs(const T* x, int64_t b, int64_t e) {
  if constexpr (std::is_same_v<T, float>) {
    int32_t m = 0;
    for (int64_t j = b; j < e; ++j) {
      const int32_t a = fbits(x[j]) & ABS;
      const int32_t f = a < INF_BITS ? a : 0;
      m = f > m ? f : m;
    }
    return ffrom(m);
  } else {
    double m = 0.0;
    for (int64_t j = b; j < e; ++j) m = std::max(m, finite_abs(x[j]));
    return m;
  }
}

// The largest finite |x| of each block (module comment), in block order.
template <typename T>
std::vector<double> block_max(const T* x, int64_t mode, int64_t outer, int64_t L, int64_t inner, int64_t k) {
  const int64_t n = outer * L * inner;
  if (mode == 1) {
    std::vector<double> parts(static_cast<size_t>((n + GRAIN - 1) / GRAIN), 0.0);
    at::parallel_for(0, static_cast<int64_t>(parts.size()), 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) parts[c] = max_abs(x, c * GRAIN, std::min(n, (c + 1) * GRAIN));
    });
    return {*std::max_element(parts.begin(), parts.end())};
  }
  if (mode == 2) {  // one block per l: outer runs of inner elements each
    std::vector<double> m(static_cast<size_t>(L), 0.0);
    at::parallel_for(0, L, std::max<int64_t>(1, GRAIN / std::max<int64_t>(1, outer * inner)), [&](int64_t l0, int64_t l1) {
      for (int64_t l = l0; l < l1; ++l)
        for (int64_t o = 0; o < outer; ++o) m[l] = std::max(m[l], max_abs(x, (o * L + l) * inner, (o * L + l + 1) * inner));
    });
    return m;
  }
  const int64_t tiles = (L + k - 1) / k;  // mode 3: block (o, t, i) holds l in [t k, (t + 1) k)
  std::vector<double> m(static_cast<size_t>(outer * tiles * inner), 0.0);
  at::parallel_for(0, outer * tiles, std::max<int64_t>(1, GRAIN / (k * inner)), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t o = b / tiles, t = b % tiles;
      for (int64_t l = t * k; l < std::min(L, (t + 1) * k); ++l)
        for (int64_t i = 0; i < inner; ++i) m[b * inner + i] = std::max(m[b * inner + i], finite_abs(x[(o * L + l) * inner + i]));
    }
  });
  return m;
}

at::Tensor rounding_sums(const at::Tensor& x, const at::Tensor& y, int64_t mode, int64_t L, int64_t inner, int64_t k,
                         int64_t a, int64_t emin, int64_t emax, int64_t b, double step0) {
  TORCH_CHECK(x.sizes() == y.sizes() && x.scalar_type() == y.scalar_type(), "rounding_sums: x and y differ");
  TORCH_CHECK(mode >= 0 && mode <= 3 && L >= 1 && inner >= 1 && k >= 1 && x.numel() % (L * inner) == 0,
              "rounding_sums: bad layout");
  const at::Tensor xc = x.contiguous(), yc = y.contiguous();
  const int64_t n = xc.numel(), outer = n / (L * inner), tiles = (L + k - 1) / k;
  const int64_t so = mode == 3 ? tiles * inner : 0, sl = mode == 2 ? 1 : (mode == 3 ? inner : 0), si = mode == 3;
  std::vector<Sums> parts(static_cast<size_t>((n + GRAIN - 1) / GRAIN));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "swalp_rounding_sums", [&] {
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    const scalar_t* yp = yc.const_data_ptr<scalar_t>();
    std::vector<double> step{step0};
    if (mode != 0) {
      step = block_max(xp, mode, outer, L, inner, mode == 3 ? k : 1);
      for (double& v : step) {
        const int64_t e = v > 0 ? std::clamp<int64_t>(std::ilogb(v) - a, emin, emax) : emin;
        v = std::ldexp(1.0, static_cast<int>(e + b));
      }
    }
    const double* sp = step.data();
    at::parallel_for(0, static_cast<int64_t>(parts.size()), 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c)
        parts[c] = chunk(xp, yp, sp, c * GRAIN, std::min(n, (c + 1) * GRAIN), L, inner, mode == 3 ? k : 1, so, sl, si);
    });
  });
  at::Tensor out = at::zeros({N_SUMS}, at::kDouble);
  double* o = out.mutable_data_ptr<double>();
  for (const Sums& p : parts) {
    for (int j = 0; j < N_SUMS - 1; ++j) o[j] += p.v[j];
    o[N_SUMS - 1] = std::max(o[N_SUMS - 1], p.v[N_SUMS - 1]);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(swalp_cpu, m) {
  m.def("rounding_sums(Tensor x, Tensor y, int mode, int L, int inner, int k, int a, int emin, int emax, int b, "
        "float step0) -> Tensor",
        &rounding_sums);
}
