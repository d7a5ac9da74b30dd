"""selfplay.games input handling: validation errors, loading and saving matrices."""

from __future__ import annotations

import numpy as np
import pytest

from selfplay.errors import InputError
from selfplay.games import generate, load, save, validate


def _assert_input_error(fn, word):
    with pytest.raises(InputError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg and word.lower() in msg.lower(), msg


def test_validate_errors():
    good = generate("uniform", 4, seed=0)
    nan = good.copy()
    nan[1, 2] = np.nan
    inf = good.copy()
    inf[2, 1] = np.inf
    out = good.copy()
    out[0, 1], out[1, 0] = 1.5, -0.5
    asym = good.copy()
    asym[0, 2] += 1e-3
    diag = good.copy()
    diag[1, 1] = 0.6
    _assert_input_error(lambda: validate(np.full((2, 3), 0.5), source="m.csv"), "square")
    _assert_input_error(lambda: validate(np.full(4, 0.5)), "square")
    _assert_input_error(lambda: validate(np.full((1, 1), 0.5)), "at least 2")
    _assert_input_error(lambda: validate(nan), "NaN")
    _assert_input_error(lambda: validate(inf), "inf")
    _assert_input_error(lambda: validate(out), "[0, 1]")
    _assert_input_error(lambda: validate(asym, source="matrix.csv"), "P + Pᵀ must equal 1")
    _assert_input_error(lambda: validate(asym, source="matrix.csv"), "matrix.csv")
    _assert_input_error(lambda: validate(diag), "diagonal")
    _assert_input_error(lambda: validate([["a", "b"], ["c", "d"]]), "numeric")


def test_validate_projects_tiny_violations_exactly():
    P = generate("uniform", 5, seed=1)
    noisy = P + 1e-8 * np.triu(np.ones((5, 5)), 1)
    fixed = validate(noisy)
    assert np.abs(fixed + fixed.T - 1).max() <= 1e-15
    assert np.abs(fixed - P).max() <= 1e-8
    np.testing.assert_array_equal(validate(P), P)


def test_load_errors(tmp_path):
    _assert_input_error(lambda: load(tmp_path / "missing.npy"), "no such file")
    (tmp_path / "m.txt").write_text("0.5,0.5\n0.5,0.5\n")
    _assert_input_error(lambda: load(tmp_path / "m.txt"), "extension")
    (tmp_path / "garbage.csv").write_text("0.5,abc\n0.5,0.5\n")
    _assert_input_error(lambda: load(tmp_path / "garbage.csv"), "parse")
    (tmp_path / "ragged.csv").write_text("0.5,0.5\n0.5\n")
    _assert_input_error(lambda: load(tmp_path / "ragged.csv"), "parse")
    (tmp_path / "bad.npy").write_bytes(b"not a numpy file at all")
    _assert_input_error(lambda: load(tmp_path / "bad.npy"), "parse")
    (tmp_path / "empty.csv").write_text("")
    _assert_input_error(lambda: load(tmp_path / "empty.csv"), "no matrix")
    (tmp_path / "dir.npy").mkdir()
    _assert_input_error(lambda: load(tmp_path / "dir.npy"), "read")
    (tmp_path / "asym.csv").write_text("0.5,0.2\n0.3,0.5\n")
    _assert_input_error(lambda: load(tmp_path / "asym.csv"), "asym.csv")


@pytest.mark.parametrize("ext", [".npy", ".csv"])
def test_save_load_round_trip(tmp_path, ext):
    P = generate("bt-cyclic", 6, seed=2)
    path = tmp_path / f"game{ext}"
    save(P, path)
    np.testing.assert_array_equal(load(path), P)


def test_load_csv_with_whitespace(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text(" 0.5 , 0.25,0.9\n0.75, 0.5 ,0.4\n 0.1,0.6,0.5 \n")
    P = load(str(path))
    np.testing.assert_array_equal(P, [[0.5, 0.25, 0.9], [0.75, 0.5, 0.4], [0.1, 0.6, 0.5]])
