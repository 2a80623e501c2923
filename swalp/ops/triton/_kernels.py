"""Triton kernels of the "triton" backend (``_launch.py`` imports this lazily).

Every helper repeats one step of swalp/ops/_reference.py; the comments say where the
arithmetic has to be spelled out to stay bit-exact. The codes below are those of
swalp/ops/_schema.py (``Kind``, ``Block``); tests/test_kernels.py checks that they agree.
"""

import triton
import triton.language as tl

FIXED_POINT = tl.constexpr(0)  # Kind
BLOCK_FLOAT = tl.constexpr(1)
FLOAT_FORMAT = tl.constexpr(2)
MX_FLOAT = tl.constexpr(3)
WHOLE = tl.constexpr(0)  # Block
PER_AXIS = tl.constexpr(1)
PER_GROUP = tl.constexpr(2)


@triton.jit
def _bits(v, F64: tl.constexpr):
    return v.to(tl.int64, bitcast=True) if F64 else v.to(tl.int32, bitcast=True)


@triton.jit
def _pow2(k, F64: tl.constexpr):
    if F64:  # one return: Triton types every return statement, even an unreachable one
        p = ((k.to(tl.int64) + 1023) << 52).to(tl.float64, bitcast=True)
    else:
        p = ((k.to(tl.int32) + 127) << 23).to(tl.float32, bitcast=True)
    return p


@triton.jit
def _pow2_mul(v, k, F64: tl.constexpr):
    a = k >> 1  # arithmetic shift: floor(k / 2)
    return v * _pow2(a, F64) * _pow2(k - a, F64)


@triton.jit
def _floor_log2(m, F64: tl.constexpr):
    MAN: tl.constexpr = 52 if F64 else 23
    BIAS: tl.constexpr = 1023 if F64 else 127
    sub = _bits(m, F64) < (1 << MAN)
    m2 = tl.where(sub, m * _pow2(tl.full(m.shape, MAN, tl.int32), F64), m)
    return ((_bits(m2, F64) >> MAN) - BIAS - tl.where(sub, MAN, 0)).to(tl.int32)


@triton.jit
def _abs_bits(v, F64: tl.constexpr):
    a = _bits(v, F64) & (0x7FFFFFFFFFFFFFFF if F64 else 0x7FFFFFFF)
    return tl.where(a < (0x7FF0000000000000 if F64 else 0x7F800000), a, 0)


@triton.jit
def _lowbias32(h):
    h = h ^ (h >> 16)
    h = h * 0x7FEB352D
    h = h ^ (h >> 15)
    h = h * 0x846CA68B
    return h ^ (h >> 16)


@triton.jit
def _floor(s, F64: tl.constexpr):
    # Not tl.floor: on NVIDIA it lowers to cvt.rmi.ftz.f32, which flushes a negative
    # subnormal to -0 (floor -1 expected). Truncate through an integer instead (exact
    # for |s| < 2^MAN; larger |s|, inf and NaN are their own floor), then step down.
    C: tl.constexpr = 4503599627370496.0 if F64 else 8388608.0
    t = s.to(tl.int64 if F64 else tl.int32).to(s.dtype)
    f = t - tl.where(t > s, 1.0, 0.0).to(s.dtype)
    f = tl.where(s == 0, s, f)  # floor(-0.0) is -0.0
    return tl.where((_bits(s, F64) & (0x7FFFFFFFFFFFFFFF if F64 else 0x7FFFFFFF)).to(s.dtype, bitcast=True) < C, f, s)


@triton.jit
def _round(s, i, k0, k1, STOCH: tl.constexpr, F64: tl.constexpr):
    if STOCH:
        lo = (i & 0xFFFFFFFF).to(tl.uint32) + k0
        hi = (i >> 32).to(tl.uint32) + k1
        h = _lowbias32(_lowbias32(lo) ^ hi)
        f = _floor(s, F64)
        u = (h >> 8).to(tl.int32).to(s.dtype) * (1.0 / 16777216.0)
        return f + tl.where(u < s - f, 1.0, 0.0).to(s.dtype)
    # Half to even: adding and subtracting 2^MAN rounds |s| < 2^MAN in the FPU's
    # default mode; larger |s| are integers already; the sign bit is put back.
    C: tl.constexpr = 4503599627370496.0 if F64 else 8388608.0
    a = tl.abs(s)
    r = (a + C) - C
    SH: tl.constexpr = 63 if F64 else 31
    b = _bits(s, F64)
    r = (_bits(r, F64) | ((b >> SH) << SH)).to(s.dtype, bitcast=True)  # arithmetic shift: the sign bit
    return tl.where(a < C, r, s)


@triton.jit
def _fp8_code(o, man):
    # The bits of o, a value of float8 E4M3 "fn" (man 3) or E5M2 (man 2) already (zero, normal,
    # subnormal, NaN, E5M2's inf): the C++ Fp8Code of swalp/ops/cpu/csrc/pack.cpp, select by select.
    bias = tl.where(man == 3, 7, 15)
    u = o.to(tl.int32, bitcast=True)
    a = u & 0x7FFFFFFF
    e = (a >> 23) - 127
    normal = ((e + bias) << man) | ((a >> (23 - man)) & ((1 << man) - 1))
    sh = 23 - man + (1 - bias - e)  # subnormal: o / 2^(1 - bias - man)
    sub = ((a & 0x7FFFFF) | 0x800000) >> tl.minimum(tl.maximum(sh, 0), 31)
    code = tl.where(e >= 1 - bias, normal, sub)
    code = tl.where(a == 0, 0, code)
    code = tl.where(a == 0x7F800000, 0x7C, code)  # inf (E5M2 only)
    code = tl.where(a > 0x7F800000, 0x7F, code)  # NaN
    return ((u >> 24) & 0x80) | code


@triton.jit
def _block_of(i, L, inner, G, size, BLOCKING: tl.constexpr):
    if BLOCKING == PER_AXIS:
        return (i // inner) % L
    # PER_GROUP, tiles of `size` along the axis: block (outer, tile, inner index)
    o = i // (L * inner)
    g = ((i // inner) % L) // size
    return (o * G + g) * inner + i % inner


@triton.jit
def absmax_kernel(x_ptr, m_ptr, n, L, inner, G, size, BLOCKING: tl.constexpr, UNIFORM: tl.constexpr,
                  F64: tl.constexpr, BLOCK: tl.constexpr):
    # UNIFORM: every element of a program is in the same block (a whole tensor, or rows
    # of a multiple of BLOCK elements): reduce in the program, then one atomic.
    start = tl.program_id(0).to(tl.int64) * BLOCK
    i = start + tl.arange(0, BLOCK)
    mask = i < n
    v = tl.load(x_ptr + i, mask=mask, other=0.0).to(tl.float64 if F64 else tl.float32)
    a = _abs_bits(v, F64)
    if BLOCKING == WHOLE:
        tl.atomic_max(m_ptr, tl.max(a, 0))
    elif UNIFORM:
        tl.atomic_max(m_ptr + (start // inner) % L, tl.max(a, 0))
    else:
        tl.atomic_max(m_ptr + _block_of(i, L, inner, G, size, BLOCKING), a, mask=mask)


# `key` (both hash keys, k1 << 32 | k0, as a signed int64) is a plain argument: a device
# tensor would cost a host-to-device copy, which synchronises, on every call.
@triton.jit(do_not_specialize=["key"])
def quantize_kernel(x_ptr, y_ptr, m_ptr, key, bound_ptr, n, L, inner, G, size,
                    fl, wl, emin, emax, offset, man, femin,  # format numbers: runtime, so no recompiling per format
                    KIND: tl.constexpr, STOCH: tl.constexpr, BLOCKING: tl.constexpr, SAT: tl.constexpr,
                    F64: tl.constexpr, BF16: tl.constexpr, BLOCK: tl.constexpr, CODES: tl.constexpr = False):
    # CODES: store what swalp.pack keeps: the integer codes q to an int8 y, not q * 2^-k; for
    # small floats (E4M3, E5M2 elements) the bits of the element value, before an MX block's scale
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < n
    v = tl.load(x_ptr + i, mask=mask, other=0.0).to(tl.float64 if F64 else tl.float32)
    key64 = key.to(tl.int64)
    k0 = (key64 & 0xFFFFFFFF).to(tl.uint32)
    k1 = ((key64 >> 32) & 0xFFFFFFFF).to(tl.uint32)
    if KIND == BLOCK_FLOAT or KIND == MX_FLOAT:  # the block's exponent from its maximum's bits
        if BLOCKING == WHOLE:
            mb = tl.load(m_ptr + i * 0, mask=mask, other=0)
        else:
            mb = tl.load(m_ptr + _block_of(i, L, inner, G, size, BLOCKING), mask=mask, other=0)
        safe = tl.where(mb != 0, mb, _bits(tl.full(v.shape, 1.0, v.dtype), F64))
        e = _floor_log2(safe.to(v.dtype, bitcast=True), F64) - offset
        e = tl.minimum(tl.maximum(tl.where(mb != 0, e, emin), emin), emax)
    else:
        e = tl.zeros(v.shape, tl.int32)
    if KIND == FIXED_POINT or KIND == BLOCK_FLOAT:  # integer grid
        if KIND == BLOCK_FLOAT:
            k = (wl - 2) - e
        else:
            k = e + fl
        lo = tl.load(bound_ptr)
        hi = tl.load(bound_ptr + 1)
        if KIND == BLOCK_FLOAT:  # symmetric codes where lo * 2^-k would overflow (_round_int, _reference.py)
            lo = tl.where((wl - 1) - k >= (1024 if F64 else 128), tl.maximum(lo, -hi), lo)
        q = _round(_pow2_mul(v, k, F64), i, k0, k1, STOCH, F64)
        q = tl.where(q < lo, lo, q)
        q = tl.where(q > hi, hi, q) + 0.0  # -0 -> +0: integer codes have no -0 (as the reference)
        if CODES:
            out = q
        else:
            out = _pow2_mul(q, -k, F64)
    else:  # small float, MX-scaled by 2^-e first
        w = v
        if KIND == MX_FLOAT:
            w = _pow2_mul(v, -e, F64)
        a = _bits(w, F64) & (0x7FFFFFFFFFFFFFFF if F64 else 0x7FFFFFFF)
        normal = (a != 0) & (a < (0x7FF0000000000000 if F64 else 0x7F800000))
        ew = _floor_log2(tl.where(normal, tl.abs(w), 1.0).to(w.dtype), F64)
        sh = man - tl.maximum(ew, femin)
        out = _pow2_mul(_round(_pow2_mul(w, sh, F64), i, k0, k1, STOCH, F64), -sh, F64)
        big = tl.load(bound_ptr + 2)
        if SAT:
            out = tl.where(out < -big, -big, out)
            out = tl.where(out > big, big, out)
        else:
            out = tl.where(tl.abs(out) > big, tl.where(out > 0, float("inf"), float("-inf")).to(out.dtype), out)
        if CODES:
            out = _fp8_code(out.to(tl.float32), man)
        elif KIND == MX_FLOAT:
            out = _pow2_mul(out, e, F64)
    if BF16:  # round to nearest even by hand (y is int16): not every Triton backend does
        b = out.to(tl.float32).to(tl.int32, bitcast=True)
        b = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
        b = tl.where(out != out, 0x7FC0, b)
        tl.store(y_ptr + i, b.to(tl.int16), mask=mask)
    else:
        tl.store(y_ptr + i, out.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def unpack_kernel(c_ptr, e_ptr, y_ptr, n, L, inner, G, size, shift, BLOCKING: tl.constexpr, BLOCK: tl.constexpr):
    # swalp::unpack (PackedTensor.unpack, swalp/ops/packed.py): int8 code * 2^(e - shift), the
    # two exact power-of-two factors of the reference's pow2_mul; e per block (0 without any).
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < n
    c = tl.load(c_ptr + i, mask=mask, other=0).to(tl.float32)
    if BLOCKING == WHOLE:
        e = tl.load(e_ptr + i * 0, mask=mask, other=0).to(tl.int32)
    else:
        e = tl.load(e_ptr + _block_of(i, L, inner, G, size, BLOCKING), mask=mask, other=0).to(tl.int32)
    tl.store(y_ptr + i, _pow2_mul(c, e - shift, False), mask=mask)
