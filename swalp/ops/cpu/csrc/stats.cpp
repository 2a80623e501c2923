// swalp_cpu::rounding_sums: the sums behind the rounding statistics (swalp/ops/stats.py, whose
// torch path is the definition) in one pass over x and its rounding y.
//
// x and y are contiguous, of one dtype, viewed as [outer, L, inner] with L the blocking axis.
// First the largest finite |x| of each block (`mode`: 0 no blocks, one step `step0` for all;
// 1 the whole tensor; 2 one block per index of L; 3 tiles of k along L), then each block's
// grid step at its top, 2^(clamp(floor(log2 m) - a, emin, emax) + b) (emin for m = 0: as
// swalp/ops/_reference.py block_exponent), then one pass for the sums, where element (o, l, i)
// reads step[o * so + (l / k) * sl + i * si]. Non-finite x counts nowhere; everything is summed
// in double, per chunk of GRAIN elements, the chunks added in order: the result does not
// depend on the number of threads.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

constexpr int64_t GRAIN = 1 << 15;
constexpr int N_SUMS = 7;  // numel, saturated, nonzero x, nonzero y, sum x^2, sum (x - y)^2, max |x|

struct Sums {
  double v[N_SUMS] = {0, 0, 0, 0, 0, 0, 0};

  inline void add(double x, double y, double step) {
    const bool finite = std::isfinite(x);
    const double xf = finite ? x : 0.0, yf = finite ? y : 0.0, d = xf - yf;
    v[0] += finite;
    v[1] += std::fabs(d) >= step;  // clamped by a step or more (a y of inf for a finite x too)
    v[2] += xf != 0.0;
    v[3] += yf != 0.0;
    v[4] += xf * xf;
    v[5] += d * d;
    v[6] = std::max(v[6], std::fabs(xf));
  }
};

template <typename T>
Sums chunk(const T* x, const T* y, const double* step, int64_t b, int64_t e, int64_t L, int64_t inner, int64_t k,
           int64_t so, int64_t sl, int64_t si) {
  Sums s;
  if (so == 0 && sl == 0 && si == 0) {  // one step for the whole tensor: no index arithmetic
    const double st = step[0];
    for (int64_t j = b; j < e; ++j) s.add(static_cast<double>(x[j]), static_cast<double>(y[j]), st);
    return s;
  }
  int64_t o = b / (L * inner), r = b % (L * inner), l = r / inner, i = r % inner;
  int64_t lk = l / k, lr = l % k;  // l's tile and place in it, kept without a division per element
  for (int64_t j = b; j < e; ++j) {
    s.add(static_cast<double>(x[j]), static_cast<double>(y[j]), step[o * so + lk * sl + i * si]);
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

// The largest finite |x| of each block (module comment), in block order.
template <typename T>
std::vector<double> block_max(const T* x, int64_t mode, int64_t outer, int64_t L, int64_t inner, int64_t k) {
  const int64_t n = outer * L * inner;
  if (mode == 1) {
    std::vector<double> parts(static_cast<size_t>((n + GRAIN - 1) / GRAIN), 0.0);
    at::parallel_for(0, static_cast<int64_t>(parts.size()), 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c)
        for (int64_t j = c * GRAIN; j < std::min(n, (c + 1) * GRAIN); ++j) parts[c] = std::max(parts[c], finite_abs(x[j]));
    });
    return {*std::max_element(parts.begin(), parts.end())};
  }
  if (mode == 2) {  // one block per l: outer runs of inner elements each
    std::vector<double> m(static_cast<size_t>(L), 0.0);
    at::parallel_for(0, L, std::max<int64_t>(1, GRAIN / std::max<int64_t>(1, outer * inner)), [&](int64_t l0, int64_t l1) {
      for (int64_t l = l0; l < l1; ++l)
        for (int64_t o = 0; o < outer; ++o)
          for (int64_t i = 0; i < inner; ++i) m[l] = std::max(m[l], finite_abs(x[(o * L + l) * inner + i]));
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
