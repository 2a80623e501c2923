// The CPU kernels of the BFP all-reduce (swalp/distributed/bfp_hook.py): its four local steps,
// each over all the gradients of a bucket in one call. swalp/distributed/_bfp_math.py holds the
// definition of each step in PyTorch; these are the same numbers, bit for bit
// (tests/test_comm_kernels.py), in one pass over memory where the PyTorch steps take several.
//
// Every gradient is a flat float32 tensor cut into blocks of its own `size` (the last block
// padded with zeros); codes and exponents are concatenated in gradient order.
//
//   comm_exponents: each block's int8 exponent floor(log2 max|x|) in [-126, 126]; 127 for a
//                   block that holds a NaN or inf.
//   comm_encode:    int8 codes clamp(R(x * 2^((wl - 2) - e))) on the given (shared) exponents,
//                   stochastic bits of element i of gradient t from keys[2t], keys[2t+1];
//                   zeros for blocks marked 127 and for the padding.
//   comm_mean:      the int32 sum of `world` rows of int8 codes and its mean rounded back to int8
//                   in integer arithmetic: floor plus one where (bits >> 8) * world < rem * 2^24
//                   (stochastic) or to nearest, ties to even.
//   comm_decode_:   code * 2^(e - (wl - 2)) (NaN for a block marked 127) written over each
//                   gradient's place in the bucket.

#include "quant.h"

namespace {

constexpr int NONFINITE = 127, EMIN = -126, EMAX = 126;

struct Layout {  // where gradient t's blocks and codes begin in the concatenations
  std::vector<int64_t> block0, code0;
  int64_t blocks = 0, codes = 0;
};

// From each gradient's length and block size.
Layout layout(const std::vector<int64_t>& numels, at::IntArrayRef sizes) {
  TORCH_CHECK(numels.size() == sizes.size(), "swalp_cpu::comm: one block size per gradient");
  Layout l;
  for (size_t t = 0; t < numels.size(); ++t) {
    const int64_t b = sizes[t] >= 1 ? (numels[t] + sizes[t] - 1) / sizes[t] : 0;
    // Element indices stay below 2^32: the hash's high word is the key k1 alone.
    TORCH_CHECK(sizes[t] >= 1 && b * sizes[t] < (int64_t(1) << 32), "swalp_cpu::comm: bad block size or length");
    l.block0.push_back(l.blocks), l.code0.push_back(l.codes);
    l.blocks += b, l.codes += b * sizes[t];
  }
  return l;
}

Layout layout(at::TensorList xs, at::IntArrayRef sizes) {
  std::vector<int64_t> numels;
  for (const at::Tensor& x : xs) {
    TORCH_CHECK(x.dtype() == at::kFloat && x.is_contiguous() && x.dim() == 1 && x.device().is_cpu(),
                "swalp_cpu::comm: flat contiguous float32 CPU gradients");
    numels.push_back(x.numel());
  }
  return layout(numels, sizes);
}

// The (gradient, block) of each global block index, for parallel loops over all blocks.
template <typename F> void for_blocks(const Layout& l, F f) {
  at::parallel_for(0, l.blocks, 1, [&](int64_t b0, int64_t b1) {
    size_t t = std::upper_bound(l.block0.begin(), l.block0.end(), b0) - l.block0.begin() - 1;
    for (int64_t b = b0; b < b1; ++b) {
      while (t + 1 < l.block0.size() && l.block0[t + 1] <= b) ++t;
      f(t, b - l.block0[t], b);
    }
  });
}

at::Tensor comm_exponents(at::TensorList xs, at::IntArrayRef sizes) {
  const Layout l = layout(xs, sizes);
  at::Tensor e = at::empty({l.blocks}, at::kChar);
  int8_t* ep = e.data_ptr<int8_t>();
  for_blocks(l, [&](size_t t, int64_t j, int64_t b) {
    const float* x = xs[t].const_data_ptr<float>() + j * sizes[t];
    const int64_t n = std::min(sizes[t], xs[t].numel() - j * sizes[t]);
    int32_t m = 0, bad = 0;
    for (int64_t i = 0; i < n; ++i) {
      const int32_t a = static_cast<int32_t>(bits(x[i]) & 0x7fffffffu);
      m = std::max(m, a);
      bad |= a >= 0x7f800000;
    }
    ep[b] = static_cast<int8_t>(bad ? NONFINITE : m == 0 ? EMIN : std::clamp(floor_log2(from_bits<float>(static_cast<uint32_t>(m))), EMIN, EMAX));
  });
  return e;
}

at::Tensor comm_encode(at::TensorList xs, at::IntArrayRef sizes, const at::Tensor& e, int64_t wl, int64_t length,
                       int64_t rounding, at::IntArrayRef keys) {
  const Layout l = layout(xs, sizes);
  TORCH_CHECK(e.dtype() == at::kChar && e.is_contiguous() && e.numel() == l.blocks && length >= l.codes &&
                  keys.size() == 2 * xs.size() && wl >= 2 && wl <= 8,
              "swalp_cpu::comm_encode: bad exponents, length, keys or word length");
  at::Tensor codes = swalp::empty_output({length}, at::kChar);  // from the kernels' pool: no page faults
  int8_t* c = codes.data_ptr<int8_t>();
  std::fill(c + l.codes, c + length, int8_t(0));  // the padding
  const int8_t* ep = e.const_data_ptr<int8_t>();
  const float lo = -std::ldexp(1.0f, wl - 1), hi = std::ldexp(1.0f, wl - 1) - 1;
  for_blocks(l, [&](size_t t, int64_t j, int64_t b) {
    const int64_t i0 = j * sizes[t], n = std::min(sizes[t], xs[t].numel() - i0);
    const float* x = xs[t].const_data_ptr<float>() + i0;
    int8_t* y = c + l.code0[t] + i0;
    std::fill(y + n, y + sizes[t], int8_t(0));  // the last block's padding
    if (ep[b] == NONFINITE) return std::fill(y, y + n, int8_t(0));
    const Rng r{static_cast<uint32_t>(i0) + static_cast<uint32_t>(keys[2 * t]), static_cast<uint32_t>(keys[2 * t + 1])};
    const int k = static_cast<int>(wl - 2) - ep[b];  // never at the top of float32: no symmetric codes
    if (rounding == 1) int_span<float, true, false>(x, y, n, r, k, nullptr, lo, hi, INT_MIN);
    else int_span<float, false, false>(x, y, n, r, k, nullptr, lo, hi, INT_MIN);
  });
  return codes;
}

// The mean of a tile of int32 sums, rounded to int8. The quotient comes from a float32 product
// within one of floor(total / world) (|total / world| <= 128), then corrected by the remainder.
// Stochastic: u * world < rem * 2^24 for the 24-bit u, that is u < thr[rem] = ceil(rem 2^24 / world).
template <bool STOCH>
void mean_tile(const int32_t* __restrict total, int8_t* __restrict o, int64_t m, int32_t world, float inv,
               const uint32_t* __restrict thr, uint32_t c, uint32_t k1) {
  for (int64_t j = 0; j < m; ++j, ++c) {
    const int32_t t = total[j];
    int32_t q = static_cast<int32_t>(std::floor(static_cast<float>(t) * inv)), rem = t - q * world;
    q = rem < 0 ? q - 1 : rem >= world ? q + 1 : q;
    rem = rem < 0 ? rem + world : rem >= world ? rem - world : rem;
    bool up;
    if constexpr (STOCH) up = (lowbias32(lowbias32(c) ^ k1) >> 8) < thr[rem];
    else up = 2 * rem > world || (2 * rem == world && (q & 1));
    o[j] = static_cast<int8_t>(q + (up ? 1 : 0));
  }
}

// Mean of `world` rows of `chunk` int8 codes; segments: per piece of the chunk, its length and
// the two keys of its first element (the first already offset by the element's index).
at::Tensor comm_mean(const at::Tensor& received, int64_t world, at::IntArrayRef segments, int64_t rounding) {
  TORCH_CHECK(received.dtype() == at::kChar && received.is_contiguous() && world >= 1 && world < (1 << 24) &&
                  received.numel() % world == 0 && segments.size() % 3 == 0,
              "swalp_cpu::comm_mean: int8 codes of `world` equal rows, segments of (length, k0, k1)");
  const int64_t chunk = received.numel() / world;
  at::Tensor out = swalp::empty_output({chunk}, at::kChar);
  const int8_t* in = received.const_data_ptr<int8_t>();
  int8_t* o = out.data_ptr<int8_t>();
  const int32_t w = static_cast<int32_t>(world);
  const float inv = 1.0f / static_cast<float>(world);
  std::vector<uint32_t> thr(rounding == 1 ? world : 0);
  for (int64_t r = 0; r < static_cast<int64_t>(thr.size()); ++r) thr[r] = static_cast<uint32_t>(((r << 24) + world - 1) / world);
  int64_t at0 = 0;
  for (size_t s = 0; s < segments.size(); s += 3) {
    const int64_t len = segments[s];
    TORCH_CHECK(len >= 0 && at0 + len <= chunk, "swalp_cpu::comm_mean: segments longer than the chunk");
    const uint32_t k0 = static_cast<uint32_t>(segments[s + 1]), k1 = static_cast<uint32_t>(segments[s + 2]);
    at::parallel_for(0, len, GRAIN, [&](int64_t b, int64_t e) {
      int32_t total[TILE];
      for (int64_t t = b; t < e; t += TILE) {
        const int64_t m = std::min(TILE, e - t);
        for (int64_t j = 0; j < m; ++j) total[j] = 0;
        for (int64_t r = 0; r < world; ++r) {
          const int8_t* row = in + r * chunk + at0 + t;
          for (int64_t j = 0; j < m; ++j) total[j] += row[j];
        }
        const uint32_t c = k0 + static_cast<uint32_t>(t);
        if (rounding == 1) mean_tile<true>(total, o + at0 + t, m, w, inv, thr.data(), c, k1);
        else mean_tile<false>(total, o + at0 + t, m, w, inv, nullptr, c, k1);
      }
    });
    at0 += len;
  }
  std::fill(o + at0, o + chunk, int8_t(0));  // past the segments: padding, whose mean is 0
  return out;
}

// out: the bucket (float32, flat); codes: the concatenated codes (at least as many as the
// gradients' blocks hold); numels and starts: each gradient's length and first element in out.
void comm_decode_(const at::Tensor& out, const at::Tensor& codes, const at::Tensor& e, at::IntArrayRef numels,
                  at::IntArrayRef sizes, at::IntArrayRef starts, int64_t wl) {
  TORCH_CHECK(numels.size() == sizes.size() && starts.size() == sizes.size() && codes.dtype() == at::kChar &&
                  e.dtype() == at::kChar && codes.is_contiguous() && e.is_contiguous() && out.dtype() == at::kFloat &&
                  out.is_contiguous() && out.device().is_cpu(),
              "swalp_cpu::comm_decode_: bad lists, codes or bucket");
  for (size_t t = 0; t < sizes.size(); ++t)
    TORCH_CHECK(numels[t] >= 0 && starts[t] >= 0 && starts[t] + numels[t] <= out.numel(),
                "swalp_cpu::comm_decode_: a gradient outside the bucket");
  const Layout l = layout(numels.vec(), sizes);
  TORCH_CHECK(e.numel() == l.blocks && codes.numel() >= l.codes, "swalp_cpu::comm_decode_: too few codes or exponents");
  float* o = out.data_ptr<float>();
  const int8_t* c = codes.const_data_ptr<int8_t>();
  const int8_t* ep = e.const_data_ptr<int8_t>();
  for_blocks(l, [&](size_t t, int64_t j, int64_t b) {
    const int64_t i0 = j * sizes[t], n = std::min(sizes[t], numels[t] - i0);
    float* y = o + starts[t] + i0;
    const int8_t* x = c + l.code0[t] + i0;
    if (ep[b] == NONFINITE) {
      std::fill(y, y + n, std::numeric_limits<float>::quiet_NaN());
      return;
    }
    const int s = ep[b] - static_cast<int>(wl - 2), a = s >> 1;  // code * 2^a * 2^(s - a), as unpack.cpp
    const float fa = pow2<float>(a), fb = pow2<float>(s - a);
    for (int64_t i = 0; i < n; ++i) y[i] = static_cast<float>(x[i]) * fa * fb;
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(swalp_cpu, m) {
  m.def("comm_exponents(Tensor[] xs, int[] sizes) -> Tensor", &comm_exponents);
  m.def("comm_encode(Tensor[] xs, int[] sizes, Tensor e, int wl, int length, int rounding, int[] keys) -> Tensor",
        &comm_encode);
  m.def("comm_mean(Tensor received, int world, int[] segments, int rounding) -> Tensor", &comm_mean);
  m.def("comm_decode_(Tensor(a!) out, Tensor codes, Tensor e, int[] numels, int[] sizes, int[] starts, int wl) -> ()",
        &comm_decode_);
}
