"""Every fast backend against the reference, bit for bit.

The C++ kernels are built on first use (once per machine, cached); the Triton kernels
run on CUDA tensors only, so their tests skip without a GPU (``-m gpu`` selects them),
except one that runs them on CPU under Triton's interpreter when triton is installed.
"""

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import swalp
from swalp.ops import _schema, cpu
from swalp.formats import BlockFloat, FixedPoint, FloatFormat, MXFloat, PerAxis, PerGroup, PerTensor, get_format
from swalp.ops._dispatch import pick_backend as _pick_backend

HAS_CUDA_TRITON = torch.cuda.is_available() and importlib.util.find_spec("triton") is not None
BACKENDS = [pytest.param("cpp", "cpu", id="cpp")]
if HAS_CUDA_TRITON:  # pragma: no cover - needs a GPU
    BACKENDS.append(pytest.param("triton", "cuda", id="triton", marks=pytest.mark.gpu))

E4M3 = get_format("e4m3")
FORMATS = [
    FixedPoint(8, 6),
    FixedPoint(4, 2),
    FixedPoint(2, 0),
    FixedPoint(32, 3),  # bounds that float32 cannot hold exactly
    FixedPoint(16, 64),  # shifts near the two-factor limit
    BlockFloat(8),
    BlockFloat(4, ebits=1),
    BlockFloat(8, block=PerAxis(0)),
    BlockFloat(8, block=PerAxis(1)),
    BlockFloat(8, block=PerAxis(-1)),
    BlockFloat(6, block=PerGroup(7, 1)),
    BlockFloat(8, block=PerGroup(32, -1), symmetric=True),
    BlockFloat(32, block=PerGroup(3, 0)),
    BlockFloat(8, block=PerGroup(1, -1)),
    BlockFloat(8, block=PerGroup(700, -1)),  # tiles larger than the kernel's run of groups
    E4M3,
    FloatFormat(5, 2),
    FloatFormat(8, 7),
    FloatFormat(5, 10),
    FloatFormat(2, 0),
    FloatFormat(3, 2, saturate=False),
    FloatFormat(8, 23, finite_only=True),  # largest value above float32's range
    get_format("mxfp8_e4m3"),
    get_format("mxfp4_e2m1"),
    MXFloat(FloatFormat(5, 2), block=PerGroup(5, 0), ebits=4),
    MXFloat(FloatFormat(3, 2), block=PerAxis(1)),
    MXFloat(FloatFormat(3, 2), block=PerTensor()),
]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def assert_bitwise(a, b):
    """Same shape and dtype, NaN in the same places, every other value with the same bits
    (so -0.0 and 0.0 differ)."""
    assert a.shape == b.shape and a.dtype == b.dtype
    nan = torch.isnan(a)
    assert torch.equal(nan, torch.isnan(b)), "NaN in different places"
    as_int = {torch.float64: torch.int64, torch.float32: torch.int32}.get(a.dtype, torch.int16)
    ia, ib = a[~nan].contiguous().view(as_int), b[~nan].contiguous().view(as_int)
    bad = (ia != ib).nonzero()
    assert bad.numel() == 0, f"{bad.numel()} values differ, first: {a[~nan][bad[0]].item()} vs {b[~nan][bad[0]].item()}"


def test_assert_bitwise_tells_signed_zeros_and_nan_places_apart():
    assert_bitwise(torch.tensor([0.0, float("nan")]), torch.tensor([0.0, float("nan")]))
    with pytest.raises(AssertionError):
        assert_bitwise(torch.tensor([0.0]), torch.tensor([-0.0]))
    with pytest.raises(AssertionError):
        assert_bitwise(torch.tensor([1.0, float("nan")]), torch.tensor([float("nan"), 1.0]))


def sample(shape, seed=0, specials=True):
    """Magnitudes over many binades, and NaN, +-inf, +-0 and subnormals."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.exp(4 * torch.randn(shape, generator=g, dtype=torch.float64))
    x = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    flat = x.view(-1)
    if specials and flat.numel() >= 13:
        flat[3], flat[5], flat[7] = float("nan"), float("inf"), -float("inf")
        flat[9], flat[10], flat[11] = 1e-42, 0.0, -0.0
        flat[12] = -3e-41  # a negative subnormal: floor is -1, not -0
    return x.float()


def both(x, fmt, rounding, backend, seed=1234):
    ref = swalp.quantize(x, fmt, rounding, seed=seed, backend="reference")
    return ref, swalp.quantize(x, fmt, rounding, seed=seed, backend=backend)


SHAPES = [(17, 13, 3), (5, 129), (1000,), (), (1, 1, 1)]


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("fmt", FORMATS, ids=repr)
def test_bit_identical_to_reference(fmt, backend, device):
    axis = getattr(getattr(fmt, "block", None), "axis", 0)
    for shape in SHAPES:
        if not -len(shape) <= axis < max(1, len(shape)):
            continue  # quantize() rejects the axis before any backend runs
        base = sample(shape, seed=len(shape)).to(device)
        for dtype in DTYPES:
            x = base.to(dtype)
            views = [x]
            if x.dim() >= 2:  # non-contiguous: transposed and strided views
                views += [x.transpose(0, -1), x[::2, ::3]]
            for v in views:
                for rounding in ("nearest", "stochastic"):
                    assert_bitwise(*both(v, fmt, rounding, backend))


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize(
    "shape,fmt",
    [
        (((1 << 17) + 3,), FixedPoint(8, 6)),  # several parallel chunks
        (((1 << 17) + 3,), FloatFormat(4, 3, finite_only=True)),
        ((3, (1 << 17) + 1), BlockFloat(8)),  # parallel block maximum
        ((257, 1031), BlockFloat(8, block=PerAxis(0))),  # a row per block, in cache
        ((1, 300001), BlockFloat(8, block=PerAxis(0))),  # one long row
        ((3, 1, 70001), BlockFloat(8, block=PerAxis(0))),  # rows longer than the cache-sized ones
        ((64, 33, 65), BlockFloat(8, block=PerAxis(1))),  # strided blocks
        ((515, 301), BlockFloat(8, block=PerAxis(1))),  # column blocks
        ((300, 1001), get_format("mxint8")),  # k-tiles with ragged tails
        ((97, 3, 1031), BlockFloat(8, block=PerGroup(32, 0))),  # k-tiles along a middle axis
        ((20, 2000), MXFloat(E4M3, block=PerGroup(16, 0))),
    ],
    ids=str,
)
def test_large_tensors_every_kernel_path(shape, fmt, backend, device):
    x = sample(shape, seed=7).to(device)
    for rounding in ("nearest", "stochastic"):
        assert_bitwise(*both(x, fmt, rounding, backend, seed=2**64 - 1))
    assert_bitwise(*both(x.to(torch.bfloat16), fmt, "stochastic", backend, seed=5))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_empty_tensors(backend, device):
    for shape in [(0,), (0, 3), (4, 0, 2)]:
        for fmt in (FixedPoint(8, 6), BlockFloat(8, block=PerAxis(-1)), get_format("mxint8"), E4M3):
            x = torch.empty(shape, device=device)
            ref, out = both(x, fmt, "stochastic", backend)
            assert out.shape == shape and out.dtype == x.dtype


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_non_finite_blocks(backend, device):
    """All-zero blocks give zeros, NaN stays put, inf saturates, all-NaN blocks stay NaN."""
    nan, inf = float("nan"), float("inf")
    x = torch.tensor([[0.0, 0.0, 0.0, 0.0], [nan] * 4, [1.0, inf, -inf, nan]], device=device)
    fmt = BlockFloat(8, block=PerAxis(0))
    ref, out = both(x, fmt, "stochastic", backend)
    assert_bitwise(ref, out)
    assert out[0].tolist() == [0.0] * 4 and out[2, :3].tolist() == [1.0, 1.984375, -2.0]
    assert out[1].isnan().all() and out[2, 3].isnan()


def test_results_do_not_depend_on_threads():
    x = sample((300, 1001), seed=3)
    fmt = BlockFloat(8, block=PerAxis(0))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = swalp.quantize(x, fmt, "stochastic", seed=9, backend="cpp")
        torch.set_num_threads(max(2, threads))
        many = swalp.quantize(x, fmt, "stochastic", seed=9, backend="cpp")
    finally:
        torch.set_num_threads(threads)
    assert_bitwise(one, many)


def test_cpp_is_the_default_on_cpu_and_reference_can_be_forced():
    x = torch.randn(10)
    assert cpu.load()
    assert _pick_backend(None, x, BlockFloat(8)).name == "cpp"
    assert _pick_backend("reference", x, BlockFloat(8)).name == "reference"
    # the Quantizer (and everything in training built on swalp.quantize) takes the default
    torch.manual_seed(0)
    a = swalp.Quantizer(BlockFloat(8))(x)
    torch.manual_seed(0)
    b = swalp.Quantizer(BlockFloat(8), backend="reference")(x)
    assert_bitwise(a, b)


def test_quantizer_forward_and_backward_through_the_op():
    x = sample((8, 33), seed=4, specials=False).requires_grad_()
    grad = sample((8, 33), seed=5, specials=False)
    outs = []
    for backend in ("cpp", "reference"):
        torch.manual_seed(1)
        q = swalp.Quantizer(BlockFloat(8, block=PerAxis(0)), FixedPoint(8, 4), backend=backend)
        y = q(x)
        (g,) = torch.autograd.grad(y, x, grad)
        outs.append((y.detach(), g))
    assert_bitwise(outs[0][0], outs[1][0])
    assert_bitwise(outs[0][1], outs[1][1])


def test_custom_op_registration_and_torch_compile():
    x = sample((6, 40), seed=6)
    args = _schema.pack(x, get_format("mxint8"), swalp.Rounding.STOCHASTIC, 77)
    torch.library.opcheck(torch.ops.swalp.quantize.default, (x, *args), test_utils=("test_schema", "test_faketensor"))

    def f(t):
        return swalp.quantize(t * 2, get_format("mxint8"), "stochastic", seed=77) / 2

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    assert_bitwise(compiled(x), f(x))


def test_quantize_many_op_matches_the_reference_and_registration():
    assert cpu.load()
    fmts = [BlockFloat(8, block=PerAxis(0)), get_format("mxint8"), FixedPoint(8, 6), E4M3]
    xs = [sample((9, 40), seed=1), sample((3, 64), seed=2), sample((100,), seed=3), sample((4, 4), seed=4).double()]
    seeds = [5, 6, 7, 2**64 - 1]
    expected = [swalp.quantize(x, f, "stochastic", s, backend="reference") for x, f, s in zip(xs, fmts, seeds)]
    got = [x.clone() for x in xs]
    _schema.run_op_many_(got, fmts, swalp.Rounding.STOCHASTIC, seeds)
    for a, b in zip(got, expected):
        assert_bitwise(a, b)
    packed = [_schema.pack(x, f, swalp.Rounding.STOCHASTIC, s) for x, f, s in zip(xs, fmts, seeds)]
    args = ([x.clone() for x in xs], [a[0] for a in packed], [v for a in packed for v in a[1]],
            [v for a in packed for v in a[2]], 1, [a[4] for a in packed], [a[5] for a in packed])  # fmt: skip
    torch.library.opcheck(torch.ops.swalp.quantize_many_.default, args, test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_quantizer_cpp_autograd_node_matches_the_python_reference(dtype):
    # the C++ node draws its seeds itself: same values and order as the Python Function,
    # with a Dropout between the Quantizers drawing from the same generator
    def run(backend):
        torch.manual_seed(0)
        net = torch.nn.Sequential(
            torch.nn.Linear(8, 16),
            swalp.Quantizer(BlockFloat(8), BlockFloat(8, block=PerAxis(0)), backend=backend),
            torch.nn.Dropout(0.3),
            torch.nn.Linear(16, 16),
            swalp.Quantizer(FixedPoint(8, 4), BlockFloat(6), backend=backend),
            torch.nn.Linear(16, 3),
        ).to(dtype)
        x = torch.randn(5, 8, dtype=dtype, requires_grad=True)
        outs = []
        for _ in range(2):
            y = net(x)
            y.square().sum().backward()
            outs += [y.detach().clone(), x.grad.clone()] + [p.grad.clone() for p in net.parameters()]
            net.zero_grad()
            x.grad = None
        return outs + [torch.rand(3)]  # and the generator is left in the same state

    assert cpu.load()
    for a, b in zip(run(None), run("reference")):
        assert_bitwise(a, b)


def test_quantizer_cpp_autograd_node_registration_and_modes():
    assert cpu.load()
    q = swalp.Quantizer(BlockFloat(8), FixedPoint(8, 4))
    x = sample((6, 40), seed=8, specials=False)
    assert type(q(x.requires_grad_()).grad_fn).__name__ == "CppFunction"
    for mode in (torch.no_grad, torch.inference_mode):
        torch.manual_seed(3)
        with mode():
            y = q(x)
        torch.manual_seed(3)
        assert_bitwise(y, swalp.quantize(x.detach(), BlockFloat(8), "stochastic", backend="reference"))
    packed = [_schema.pack(x, f, swalp.Rounding.NEAREST, None)[:3] for f in (BlockFloat(8), FixedPoint(8, 4))]
    torch.library.opcheck(torch.ops.swalp.quantize_ste.default, (x.detach(), *packed[0], *packed[1], 1),
                          test_utils=("test_schema", "test_faketensor"))  # fmt: skip


def test_no_compiler_falls_back_to_the_reference_with_one_warning(tmp_path):
    script = textwrap.dedent(
        """
        import warnings, torch, swalp
        x = torch.randn(100)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            a = swalp.quantize(x, "bfp8", "stochastic", seed=3)
            b = swalp.quantize(x, "bfp8", "stochastic", seed=3)
        ref = swalp.quantize(x, "bfp8", "stochastic", seed=3, backend="reference")
        msgs = [str(m.message) for m in w if "C++" in str(m.message)]
        print(len(msgs), torch.equal(a, ref) and torch.equal(b, ref), msgs[0] if msgs else "")
        """
    )
    env = dict(os.environ, CXX=str(tmp_path / "no-such-compiler"), SWALP_CACHE_DIR=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    count, equal, msg = out.stdout.strip().split(" ", 2)
    assert (count, equal) == ("1", "True") and "reference" in msg


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_triton_kernels_under_the_interpreter():
    """The Triton kernels on CPU tensors through TRITON_INTERPRET=1 (slow: small tensors)."""
    script = textwrap.dedent(
        """
        import torch, swalp
        from swalp.ops import _reference, _schema
        from swalp.ops.triton import launch
        from swalp.formats import *
        fmts = [FixedPoint(8, 6), BlockFloat(8), BlockFloat(8, block=PerAxis(1)), BlockFloat(5, block=PerGroup(7, 0)),
                swalp.get_format("mxint8"), FloatFormat(4, 3, finite_only=True), FloatFormat(3, 2, saturate=False),
                swalp.get_format("mxfp8_e5m2")]
        x = torch.randn(9, 37, 3, dtype=torch.float64) * torch.exp(4 * torch.randn(9, 37, 3, dtype=torch.float64))
        x.view(-1)[:7] = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e-42, 0.0, -0.0, -3e-41])
        x[4, :, 1] = -3.4e38  # blocks at exponent 127 in float32: symmetric codes there
        bad = 0
        row = torch.randn(3, 2048)  # rows of whole kernel blocks: one atomic per program
        a = _reference.round_to_grid(row, BlockFloat(8, block=PerAxis(0)), swalp.Rounding.STOCHASTIC, 5)
        args = _schema.pack(row, BlockFloat(8, block=PerAxis(0)), swalp.Rounding.STOCHASTIC, 5)
        bad += not torch.equal(a, launch(row, *args))
        for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            for fmt in fmts:
                for r in swalp.Rounding:
                    xd = x.to(dtype)
                    a = _reference.round_to_grid(xd, fmt, r, 99)
                    b = launch(xd, *_schema.pack(xd, fmt, r, 99))
                    same = torch.equal(a.isnan(), b.isnan()) and torch.equal(a[~a.isnan()], b[~b.isnan()])
                    same = same and torch.equal(torch.signbit(a[a == 0]), torch.signbit(b[b == 0]))
                    bad += not same
        print(bad)
        """
    )
    env = dict(os.environ, TRITON_INTERPRET="1")
    cmd = [sys.executable, "-W", "ignore", "-c", script]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "0"


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_triton_kernels_compile_for_a_gpu_without_ftz_or_fma():
    """Compile for sm_90 (no GPU needed): catches typing errors the interpreter lets
    through, and checks the PTX has no flush-to-zero or fused multiply-add."""
    script = textwrap.dedent(
        r"""
        import itertools, re, triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        from swalp.ops._schema import Block
        from swalp.ops.triton import _kernels as k
        bad = []
        for xdt, kind, stoch, codes in itertools.product(("fp32", "bf16", "fp64"), (0, 1, 2, 3), (False, True), (False, True)):
            if codes and (kind > 1 or xdt == "bf16"):
                continue  # the packing kernel: integer formats, float32/64 input
            f64, bf16 = xdt == "fp64", xdt == "bf16"
            sig = {"x_ptr": "*" + xdt, "y_ptr": "*i8" if codes else "*i16" if bf16 else "*" + xdt, "m_ptr": "*i64" if f64 else "*i32",
                   "key": "i64", "bound_ptr": "*fp64" if f64 else "*fp32"}
            sig.update(dict.fromkeys(("n", "L", "inner", "G", "size"), "i64"))
            sig.update(dict.fromkeys(("fl", "wl", "emin", "emax", "offset", "man", "femin"), "i32"))
            consts = dict(KIND=kind, STOCH=stoch, BLOCKING=int(Block.PER_GROUP if kind in (1, 3) else Block.WHOLE), SAT=kind != 2,
                          F64=f64, BF16=bf16, BLOCK=1024, CODES=codes)
            sig.update(dict.fromkeys(consts, "constexpr"))
            src = ASTSource(fn=k.quantize_kernel, signature=sig, constexprs=consts)
            opts = {"num_warps": 4, "enable_fp_fusion": False}
            ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts).asm["ptx"]
            bad += [(xdt, kind, op) for op in re.findall(r"\b(?:fma|mad)\.rn\.f\d+|\.ftz\b", ptx)]
        print(bad)
        """
    )
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", script], capture_output=True, text=True, timeout=300)
    if out.returncode != 0 and "ptxas" in out.stderr:  # pragma: no cover - a triton without its CUDA tools
        pytest.skip("triton cannot compile for CUDA here")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[]"


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA_TRITON, reason="needs CUDA and triton")
def test_triton_is_the_default_on_cuda():  # pragma: no cover - needs a GPU
    x = torch.randn(10, device="cuda")
    assert _pick_backend(None, x, BlockFloat(8)).name == "triton"


@pytest.mark.skipif(not cpu.load() or not sys.platform.startswith("linux"), reason="the pool exists on Linux with the kernels")
def test_the_output_pool_keeps_freed_outputs_up_to_its_cap():
    pooled = lambda: torch.ops.swalp_cpu.output_pool(-1)[1]  # noqa: E731  (-1: read, change nothing)
    old = cpu.set_output_pool(0)  # empty: what earlier tests left there would fill the cap below
    cpu.set_output_pool(64 << 20)
    try:
        y = swalp.quantize(torch.ones(2 << 20), "bfp8", backend="cpp")  # 8 MiB: from the pool's allocator
        before = pooled()
        del y
        assert pooled() == before + (8 << 20)  # kept for the next output of its size
        assert cpu.set_output_pool(0) == 64 << 20 and pooled() == 0  # released at once
        y = swalp.quantize(torch.ones(2 << 20), "bfp8", backend="cpp")
        del y
        assert pooled() == 0
    finally:
        cpu.set_output_pool(old)
    with pytest.raises(ValueError, match="cap_bytes must be an integer >= 0, got -1"):
        cpu.set_output_pool(-1)


def test_the_build_cache_is_keyed_by_the_environment_and_locked(tmp_path, monkeypatch):
    from swalp.ops.cpu import _build

    monkeypatch.setenv("SWALP_CACHE_DIR", str(tmp_path))
    here = _build.build_dir()
    monkeypatch.setattr(_build, "_include_paths", lambda: ["/another/venv/site-packages/torch/include"])
    assert _build.build_dir() != here  # another environment's torch headers: another folder
    monkeypatch.undo()
    monkeypatch.setenv("SWALP_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_build, "compiler_version", lambda: "c++: some other compiler 1.0")
    assert _build.build_dir() != here
    folder = tmp_path / "cpp-x"
    folder.mkdir()
    (folder / "lock").write_text("")  # torch's baton, left by a build that was killed
    with _build.build_lock(folder):
        assert not (folder / "lock").exists()
    if sys.platform.startswith("linux"):  # another process waits for the lock, and gets it when this one dies
        holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
            import fcntl, time
            f = open({str(tmp_path / 'cpp-x.lock')!r}, "a"); fcntl.flock(f, fcntl.LOCK_EX)
            print("held", flush=True); time.sleep(60)""")], stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "held"
        waiter = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
            from pathlib import Path
            from swalp.ops.cpu._build import build_lock
            with build_lock(Path({str(folder)!r})):
                print("got it")""")], stdout=subprocess.PIPE, text=True)
        try:
            waiter.wait(timeout=3)
            pytest.fail("the lock was not held")
        except subprocess.TimeoutExpired:
            pass
        holder.kill()  # a crash mid-build
        assert waiter.communicate(timeout=60)[0].strip() == "got it"
