"""The shared helpers every layer uses: argument checks, atomic writes, the cache folder."""

import math

import pytest

from swalp._checks import check_bool, check_choice, check_int, check_number
from swalp._files import atomic_write, atomic_write_text, cache_dir, write_json


@pytest.mark.parametrize("call, message", [
    (lambda: check_int("n", 0, 1), "n must be an integer >= 1, got 0"),
    (lambda: check_int("n", True, 0), "n must be an integer >= 0, got True"),
    (lambda: check_int("n", 2.0, 0, 4), "n must be an integer in [0, 4], got 2.0"),
    (lambda: check_int("n", 5, hi=4), "n must be an integer <= 4, got 5"),
    (lambda: check_int("--bits", 1, 2, hint="(a word length)"), "--bits must be an integer >= 2 (a word length), got 1"),
    (lambda: check_number("lr", 0.0, 0, lo_open=True), "lr must be a finite number > 0, got 0.0"),
    (lambda: check_number("m", 1.0, 0, 1, hi_open=True), "m must be a finite number in [0, 1), got 1.0"),
    (lambda: check_number("x", math.nan), "x must be a finite number, got nan"),
    (lambda: check_number("x", False), "x must be a finite number, got False"),
    (lambda: check_choice("unit", "week", ("epoch", "step")), "unknown unit 'week'; accepted: 'epoch', 'step'"),
    (lambda: check_bool("enabled", "no"), "enabled must be True or False, got 'no'"),
])
def test_checks_name_the_value_and_what_is_accepted(call, message):
    with pytest.raises(ValueError) as err:
        call()
    assert str(err.value) == message


def test_checks_return_the_value():
    assert check_int("n", 3, 1, 3) == 3
    assert check_number("x", 2, 0) == 2.0 and isinstance(check_number("x", 2, 0), float)
    assert check_choice("c", "a", ["a"]) == "a" and check_bool("b", False) is False


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "x.txt"
    atomic_write_text(path, "old")

    def crash(f):
        f.write(b"half of the new")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, crash)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]  # no temporary file left behind
    write_json(path, {"a": [1]})
    assert path.read_text() == '{\n  "a": [\n    1\n  ]\n}\n'


def test_cache_dir_rule(tmp_path, monkeypatch):
    monkeypatch.delenv("SWALP_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "swalp"
    monkeypatch.setenv("SWALP_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    assert cache_dir(tmp_path / "given") == tmp_path / "given"
