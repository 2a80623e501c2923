"""The layout: folders are layers, imports point down, no cycles, one home per choice list.

The import-linter contracts in pyproject.toml are the rules; these tests run them and
check what they cannot express (cycles through a package's own __init__, imports after
code, the kernels' codes in three languages, citations of files that exist).
"""

import ast
import doctest
import importlib
import importlib.util
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

import swalp
from swalp.ops._schema import Block, Bounds, Kind, Params

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "swalp"
MODULES = sorted(p for p in PACKAGE.rglob("*.py"))
PUBLIC = ["swalp", "swalp.formats", "swalp.recipes", "swalp.ops", "swalp.nn", "swalp.optim", "swalp.models",
          "swalp.data", "swalp.training", "swalp.experiments", "swalp.cli"]


def test_import_contracts_are_kept():
    """pyproject.toml's contracts: the layers, the backends' independence, the library's
    ignorance of the application's tools, no cycles among siblings."""
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "4 kept, 0 broken" in done.stdout


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    m = stack.pop()
                    on.discard(m)
                    component.append(m)
                    if m == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_no_import_cycle_anywhere():
    """Module by module, a package's __init__ included: nothing holds only by import order."""
    graph = grimp.build_graph("swalp")
    assert _cycles(graph) == []
    # the check can fail: a child importing its own package's __init__ is a cycle
    graph.add_import(importer="swalp.models.vgg", imported="swalp.models")
    assert any({"swalp.models", "swalp.models.vgg"} <= set(c) for c in _cycles(graph))


def test_a_new_upward_import_breaks_the_contracts(tmp_path):
    """A copy of the package whose nn imports training: lint-imports must refuse it."""
    import shutil

    shutil.copytree(PACKAGE, tmp_path / "swalp", ignore=shutil.ignore_patterns("__pycache__", "*.cpp"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    quantizer = tmp_path / "swalp" / "nn" / "quantizer.py"
    quantizer.write_text(quantizer.read_text().replace("import torch\n", "import torch\nimport swalp.training\n", 1))
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True))"
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode != 0 and "swalp.nn.quantizer -> swalp.training" in done.stdout, done.stdout[-3000:]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_come_before_code(path):
    """No import at the bottom of a module: every module-level import precedes the first statement
    that is not an import (the docstring aside)."""
    body = ast.parse(path.read_text()).body
    seen_code = False
    for node in body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and node is body[0]:
            continue  # the docstring
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            assert not seen_code, f"{path}:{node.lineno}: import after code"
        else:
            seen_code = True


def test_top_level_package_only_reexports():
    body = ast.parse((PACKAGE / "__init__.py").read_text()).body
    for node in body[1:]:
        ok = isinstance(node, (ast.Import, ast.ImportFrom)) or (
            isinstance(node, ast.Assign) and [t.id for t in node.targets] in (["__all__"], ["__version__"]))
        assert ok, f"swalp/__init__.py:{node.lineno} does more than re-export"
    assert "swalp.ops" in swalp.__doc__ and "swalp.training" in swalp.__doc__  # it says what is public


@pytest.mark.parametrize("name", PUBLIC)
def test_public_packages_declare_all(name):
    module = importlib.import_module(name)
    assert module.__all__, name
    assert [n for n in module.__all__ if not hasattr(module, n)] == []
    assert [n for n in module.__all__ if n.startswith("_")] == []


def test_kernel_codes_agree_in_python_cpp_and_triton():
    """Kind, Block and the parameter vectors' positions, as swalp/ops/_schema.py names them."""
    cpp = (PACKAGE / "ops" / "cpu" / "csrc" / "quant.h").read_text()

    def enum(name):
        body = re.search(rf"enum {name} : int {{([^}}]*)}}", cpp).group(1)
        members, value = {}, -1
        for item in (x.strip() for x in body.split(",") if x.strip()):
            key, _, v = item.partition("=")
            value = int(v) if v.strip() else value + 1
            members[key.strip()] = value
        return members

    assert enum("Kind") == {k.name: k.value for k in Kind}
    assert enum("Block") == {"WHOLE": Block.WHOLE, "PER_AXIS": Block.PER_AXIS, "PER_GROUP": Block.PER_GROUP}
    assert enum("Param") == {**{f"P_{f.upper()}": i for i, f in enumerate(Params._fields)}, "N_PARAMS": len(Params._fields)}
    assert enum("Bound") == {**{f"B_{f.upper()}": i for i, f in enumerate(Bounds._fields)}, "N_BOUNDS": len(Bounds._fields)}
    triton = (PACKAGE / "ops" / "triton" / "_kernels.py").read_text()
    consts = {k: int(v) for k, v in re.findall(r"^(\w+) = tl\.constexpr\((\d+)\)", triton, re.M)}
    assert consts == {**{k.name: k.value for k in Kind}, **{b.name: b.value for b in Block}}


def test_choice_lists_have_one_home():
    """The command line offers exactly what the owning modules define."""
    from swalp.cli import build_parser
    from swalp.nn import PLACEMENTS
    from swalp.optim import KINDS
    from swalp.training import AVG_UNITS

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for command in ("train", "compare"):
        flags = {a.dest: a.choices for a in sub.choices[command]._actions}
        assert flags["placement"] is PLACEMENTS and flags["schedule"] is KINDS and flags["avg_unit"] is AVG_UNITS


CITED = re.compile(r"\b((?:swalp|docs|tests|benchmarks)/[\w/.-]*\w\.(?:py|cpp|md|json|png|toml))")


@pytest.mark.parametrize("path", [*MODULES, *sorted(PACKAGE.rglob("*.cpp"))], ids=lambda p: str(p.relative_to(ROOT)))
def test_comments_cite_the_paper_or_files_that_exist(path):
    text = path.read_text()
    assert "paper.md" not in text and "the issue" not in text
    missing = [f for f in CITED.findall(text) if not (ROOT / f).exists()]
    assert missing == [], f"{path.relative_to(ROOT)} cites files that do not exist: {missing}"


def _library_modules():
    skip = {"swalp.__main__"} | (set() if importlib.util.find_spec("triton") else {"swalp.ops.triton._kernels"})
    names = [m.name for m in pkgutil.walk_packages(swalp.__path__, "swalp.")]
    return sorted(n for n in ["swalp", *names] if n not in skip)


@pytest.mark.parametrize("name", _library_modules())
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    """Every ``>>>`` example in the package runs and prints what it says."""
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed (run pytest -s for the diff)"
