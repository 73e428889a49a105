"""Bad-input campaign over the scan readers and the command line.

Property-based part (in-process, fast): random mutations of a valid scan dict -
dropped keys, wrong ranks and shapes, mismatched counts, NaN/Inf, negative values,
empty arrays, complex/real swaps, zero sizes, foreign dtypes, object arrays, values
beyond float32, truncated and corrupted bytes of valid files, forged .npy headers -
must either give a valid :class:`ScanData` or raise :class:`DataError` naming the
file; never another exception. Inputs that are invalid as scan NPZs (docs/data_format.md) must raise.

Command-line part (``slow``, subprocesses): a hand-made corpus through
``ptychopinn check``, ``train`` and ``infer``: exit status 2, one stderr line naming
the file, no traceback, no partial output.

The number of inputs tried per class is printed at the end of the module.
"""

from __future__ import annotations

import concurrent.futures
import io
import math
import pickle
import struct
import subprocess
import sys
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ptychopinn.errors import DataError
from ptychopinn.io.npz import read_npz, scan_from_arrays
from ptychopinn.io.scan import ScanData

M, N = 6, 8  # patterns, pattern size: tiny, so thousands of files take seconds
REQUIRED = ("diffraction", "xcoords", "ycoords", "probeGuess")
OPTIONAL = ("objectGuess", "scan_index", "Y", "xcoords_start", "ycoords_start", "bad_pixels")
REAL_KEYS = ("diffraction", "xcoords", "ycoords", "xcoords_start", "ycoords_start", "scan_index")
COMPLEX_KEYS = ("probeGuess", "objectGuess", "Y")
FLOAT_KEYS = ("xcoords", "ycoords", "xcoords_start", "ycoords_start") + COMPLEX_KEYS
EXAMPLES = 150  # per property; the whole module's in-process part runs in seconds

SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same inputs on every CI run
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

TRIED: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def report_count(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print how many bad inputs the module tried, per class and outcome."""
    yield
    total = sum(TRIED.values())
    lines = [f"bad-input campaign: {total} inputs tried"]
    lines += [f"  {key}: {count}" for key, count in sorted(TRIED.items())]
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:  # pragma: no cover
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        for line in lines:
            reporter.write_line(line)


def valid_arrays(optional: bool = True, float_diffraction: bool = False) -> dict[str, Any]:
    """A valid scan: M patterns of N x N, patches well inside the object."""
    rng = np.random.default_rng(0)
    counts = rng.poisson(5.0, size=(M, N, N))
    arrays: dict[str, Any] = {
        "diffraction": np.sqrt(counts).astype(np.float32)
        if float_diffraction
        else counts.astype(np.int32),
        "xcoords": 10 + np.arange(M, dtype=np.float64),
        "ycoords": 12 + 0.5 * np.arange(M, dtype=np.float64),
        "probeGuess": (np.ones((N, N)) * (1 + 0.5j)).astype(np.complex64),
    }
    if optional:
        arrays.update(
            objectGuess=np.ones((30, 30), np.complex64),
            scan_index=np.zeros(M, np.int64),
            Y=np.ones((M, N, N), np.complex64),
            xcoords_start=arrays["xcoords"].copy(),
            ycoords_start=arrays["ycoords"].copy(),
            bad_pixels=np.zeros((N, N), bool),
        )
    return arrays


def valid_shapes(key: str, shape: tuple[int, ...]) -> bool:
    """scan NPZ shapes for the fixed M, N of :func:`valid_arrays` (object: patches on it)."""
    if key == "diffraction":
        return shape in ((M, N, N), (N, N, M))  # the second is the legacy (H, W, M) layout
    if key in ("xcoords", "ycoords", "xcoords_start", "ycoords_start", "scan_index"):
        return shape == (M,)
    if key == "probeGuess":
        return (
            shape == (N, N)
            or (len(shape) == 3 and shape[0] >= 1 and shape[1:] == (N, N))
            or (len(shape) == 4 and shape[0] == 1 and shape[1] >= 1 and shape[2:] == (N, N))
        )
    if key == "objectGuess":
        if len(shape) == 3 and shape[0] == 1:
            shape = shape[1:]
        if len(shape) != 2:
            return False
        pos = np.stack([12 + 0.5 * np.arange(M), 10 + np.arange(M)], axis=1)
        lo = np.floor(pos.min(axis=0)) - N // 2
        hi = np.ceil(pos.max(axis=0)) - N // 2 + N
        return bool(lo.min() >= 0 and hi[0] <= shape[0] and hi[1] <= shape[1])
    if key == "Y":
        return shape == (M, N, N)
    if key == "bad_pixels":
        return shape == (N, N)
    raise AssertionError(key)


def read_outcome(path: Path, kind: str) -> ScanData | DataError:
    """Read ``path``; return the scan or the DataError. Any other exception fails the test."""
    try:
        scan = read_npz(path)
    except DataError as exc:
        assert path.name in str(exc), f"error does not name the file: {exc}"
        assert "\n" not in str(exc).strip(), f"error is not one line: {exc!r}"
        TRIED[f"{kind} -> DataError"] += 1
        return exc
    TRIED[f"{kind} -> accepted"] += 1
    return scan


def _save(path: Path, arrays: dict[str, Any]) -> Path:
    np.savez(path, **arrays)
    return path


# -- mutations: each edits ``arrays`` in place and returns True when the result is invalid --
Mutator = Callable[[dict[str, Any], st.DataObject], bool]


def _drop(arrays: dict[str, Any], data: st.DataObject) -> bool:
    key = data.draw(st.sampled_from(sorted(arrays)), label="key")
    del arrays[key]
    return key in REQUIRED or key in ("xcoords_start", "ycoords_start")


def _rank(arrays: dict[str, Any], data: st.DataObject) -> bool:
    key = data.draw(st.sampled_from(sorted(arrays)), label="key")
    ndim = data.draw(st.integers(0, 5), label="ndim")
    shape = tuple(data.draw(st.lists(st.integers(1, 9), min_size=ndim, max_size=ndim)))
    arrays[key] = np.ones(shape, dtype=np.asarray(arrays[key]).dtype)
    return not valid_shapes(key, shape)


def _shape(arrays: dict[str, Any], data: st.DataObject) -> bool:
    key = data.draw(st.sampled_from(sorted(arrays)), label="key")
    ndim = np.asarray(arrays[key]).ndim
    shape = tuple(data.draw(st.lists(st.integers(0, 40), min_size=ndim, max_size=ndim)))
    arrays[key] = np.ones(shape, dtype=np.asarray(arrays[key]).dtype)
    return not valid_shapes(key, shape)


def _count(arrays: dict[str, Any], data: st.DataObject) -> bool:
    per_pattern = [k for k in arrays if k not in ("probeGuess", "objectGuess", "bad_pixels")]
    key = data.draw(st.sampled_from(sorted(per_pattern)), label="key")
    keep = data.draw(st.integers(0, M - 1), label="keep")
    arrays[key] = np.asarray(arrays[key])[:keep]
    return True


def _non_finite(arrays: dict[str, Any], data: st.DataObject) -> bool:
    if "diffraction" in arrays and data.draw(st.booleans(), label="in diffraction"):
        arrays["diffraction"] = arrays["diffraction"].astype(np.float32)
        key = "diffraction"
    else:
        key = data.draw(st.sampled_from(sorted(k for k in arrays if k in FLOAT_KEYS)), label="key")
    value = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]), label="value")
    arr = np.array(arrays[key])
    index = data.draw(st.integers(0, arr.size - 1), label="index")
    flat = arr.reshape(-1)
    flat[index] = value
    arrays[key] = flat.reshape(arr.shape)
    return True


def _negative(arrays: dict[str, Any], data: st.DataObject) -> bool:
    dtype = data.draw(st.sampled_from([np.int32, np.int64, np.float32, np.float64]), label="dtype")
    diff = arrays["diffraction"].astype(dtype)
    index = data.draw(st.integers(0, diff.size - 1), label="index")
    diff.reshape(-1)[index] = -data.draw(st.integers(1, 10**6), label="magnitude")
    arrays["diffraction"] = diff
    return True


def _empty(arrays: dict[str, Any], data: st.DataObject) -> bool:
    key = data.draw(st.sampled_from(sorted(arrays)), label="key")
    arr = np.asarray(arrays[key])
    if arr.ndim == 0:
        arrays[key] = np.zeros((0,), arr.dtype)
        return True
    axis = data.draw(st.integers(0, arr.ndim - 1), label="axis")
    shape = list(arr.shape)
    shape[axis] = 0
    if key in ("diffraction", "Y") and axis > 0:
        shape[1] = shape[2] = 0  # zero-size patterns
    arrays[key] = np.zeros(shape, arr.dtype)
    return True


def _dtype(arrays: dict[str, Any], data: st.DataObject) -> bool:
    key = data.draw(st.sampled_from(sorted(arrays)), label="key")
    arr = np.asarray(arrays[key])
    target = data.draw(
        st.sampled_from(["complex", "real", "bool", "str", "bytes", "datetime", "struct"]),
        label="dtype",
    )
    if target == "complex":
        arrays[key] = arr.astype(np.complex128) * (1 + 1j)
        return key in REAL_KEYS or key == "bad_pixels"
    if target == "real":  # a real probe / object / Y is a valid (zero-phase) complex array
        arrays[key] = np.abs(arr).astype(np.float64)
        return key in ("scan_index",)
    if target == "bool":
        arrays[key] = arr != 0
        return key not in ("bad_pixels",)
    if target == "str":
        arrays[key] = np.full(arr.shape, "1")
    elif target == "bytes":
        arrays[key] = np.full(arr.shape, b"1")
    elif target == "datetime":
        arrays[key] = np.zeros(arr.shape, "datetime64[s]")
    else:
        arrays[key] = np.zeros(arr.shape, [("re", "f4"), ("im", "f4")])
    return True


def _object(arrays: dict[str, Any], data: st.DataObject) -> bool:
    key = data.draw(st.sampled_from(sorted(arrays)), label="key")
    arr = np.asarray(arrays[key])
    obj = np.empty(arr.shape, dtype=object)
    obj.reshape(-1)[:] = list(arr.reshape(-1))
    arrays[key] = obj
    return True


def _huge(arrays: dict[str, Any], data: st.DataObject) -> bool:
    keys = [k for k in ("diffraction", "probeGuess", "objectGuess", "Y") if k in arrays]
    key = data.draw(st.sampled_from(keys), label="key")
    value = data.draw(st.sampled_from([1e39, 1e200, np.finfo(np.float64).max]), label="value")
    arr = np.array(arrays[key], dtype=np.complex128 if key != "diffraction" else np.float64)
    arr.reshape(-1)[data.draw(st.integers(0, arr.size - 1), label="index")] = value
    arrays[key] = arr  # finite in float64 but not in the float32 the model computes in
    return True


def _far_position(arrays: dict[str, Any], data: st.DataObject) -> bool:
    key = data.draw(st.sampled_from(sorted(k for k in arrays if "coords" in k)), label="key")
    value = data.draw(st.floats(2.0**24 + 1, 1e300), label="px")
    coords = np.array(arrays[key], dtype=np.float64)
    coords[data.draw(st.integers(0, M - 1), label="index")] = value * data.draw(
        st.sampled_from([-1, 1]), label="sign"
    )
    arrays[key] = coords  # one glitched encoder value: no canvas could hold the scan
    if "objectGuess" in arrays:
        del arrays["objectGuess"]  # else "not on the object" refuses it already
    return True


MUTATIONS: dict[str, Mutator] = {
    "drop key": _drop,
    "wrong rank": _rank,
    "wrong shape": _shape,
    "mismatched count": _count,
    "NaN/Inf": _non_finite,
    "negative counts": _negative,
    "empty / zero size": _empty,
    "foreign dtype / complex-real swap": _dtype,
    "object array": _object,
    "beyond float32": _huge,
    "far-off position": _far_position,
}


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bad_inputs")


def test_valid_base_reads(work: Path) -> None:
    """The base of every mutation is valid, so a refusal is due to the mutation."""
    for optional in (False, True):
        for float_diffraction in (False, True):
            arrays = valid_arrays(optional, float_diffraction)
            scan = read_npz(_save(work / "valid.npz", arrays))
            assert scan.n_patterns == M and scan.N == N
            assert scan_from_arrays(arrays, "<memory>").n_patterns == M
    # the legacy (H, W, M) layout and a probe with modes are valid too
    arrays = valid_arrays()
    arrays["diff3d"] = np.transpose(arrays.pop("diffraction"), (1, 2, 0)).copy()
    arrays["probeGuess"] = np.stack([arrays["probeGuess"]] * 2)
    assert read_npz(_save(work / "legacy.npz", arrays)).n_probe_modes == 2


@pytest.mark.parametrize("kind", sorted(MUTATIONS))
@settings(SETTINGS, max_examples=EXAMPLES // 3)
@given(data=st.data())
def test_mutated_scans_raise_data_error(work: Path, kind: str, data: st.DataObject) -> None:
    """Every mutation of a valid scan is read or refused with DataError; invalid ones refused."""
    arrays = valid_arrays(
        optional=data.draw(st.booleans(), label="optional keys"),
        float_diffraction=data.draw(st.booleans(), label="float diffraction"),
    )
    invalid = MUTATIONS[kind](arrays, data)
    outcome = read_outcome(_save(work / "mutated.npz", arrays), kind)
    if invalid:
        assert isinstance(outcome, DataError), f"{kind}: accepted an invalid scan"


_PY_VALUES = st.one_of(
    st.none(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.complex_numbers(),
    st.text(max_size=5),
    st.binary(max_size=5),
    st.lists(st.floats(allow_nan=True), max_size=8),
    st.lists(st.lists(st.integers(-3, 3), min_size=2, max_size=2), max_size=4),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)


@SETTINGS
@given(data=st.data())
def test_scan_from_arrays_with_python_values(data: st.DataObject) -> None:
    """Readers other than NPZ hand Python values to the same validation: DataError only."""
    arrays = valid_arrays(optional=data.draw(st.booleans(), label="optional keys"))
    key = data.draw(st.sampled_from(sorted(arrays)), label="key")
    value = data.draw(_PY_VALUES, label="value")
    arrays[key] = value
    kind = "python value in memory"
    try:
        scan = scan_from_arrays(arrays, "<memory>")
    except DataError:
        TRIED[f"{kind} -> DataError"] += 1
        return
    TRIED[f"{kind} -> accepted"] += 1
    # accepted only when the value means what a valid one would: an optional key left out
    # (None), or numbers of the shape and kind the key needs, read back unchanged
    if value is None:
        assert key in OPTIONAL, f"{key}=None accepted for a required key"
        return
    given = np.asarray(value)
    assert given.dtype.kind in "iufcb" and np.all(np.isfinite(given)), (key, value)
    expected_ndim = {"diffraction": 3, "Y": 3, "probeGuess": 2, "objectGuess": 2, "bad_pixels": 2}
    assert given.ndim == expected_ndim.get(key, 1), (key, value)
    assert (
        given.shape[0] == (N if key in ("probeGuess", "bad_pixels") else M) or key == "objectGuess"
    ), (key, value)
    assert scan.n_patterns == M


def _valid_bytes(compressed: bool) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **valid_arrays())
    return buf.getvalue()


VALID_NPZ = {False: _valid_bytes(False), True: _valid_bytes(True)}


@SETTINGS
@given(compressed=st.booleans(), fraction=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_files_raise_data_error(work: Path, compressed: bool, fraction: float) -> None:
    raw = VALID_NPZ[compressed]
    path = work / "truncated.npz"
    path.write_bytes(raw[: int(fraction * len(raw))])
    assert isinstance(read_outcome(path, "truncated file"), DataError)


def _hot_offsets(raw: bytes) -> list[int]:
    """Offsets of zip and .npy headers, where corruption is not caught by a CRC."""
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        offsets = [info.header_offset for info in zf.infolist()]
    central = raw.rfind(b"PK\x01\x02")
    return [*offsets, max(0, central - 200), len(raw) - 22]


@SETTINGS
@given(
    compressed=st.booleans(),
    edits=st.lists(
        st.tuples(st.integers(0, 7), st.integers(0, 220), st.integers(0, 255)),
        min_size=1,
        max_size=6,
    ),
)
def test_corrupted_bytes_raise_data_error(
    work: Path, compressed: bool, edits: list[tuple[int, int, int]]
) -> None:
    """Bytes overwritten near headers (or anywhere): read or DataError, nothing else."""
    raw = bytearray(VALID_NPZ[compressed])
    hot = _hot_offsets(bytes(raw))
    for anchor, delta, value in edits:
        # anchor 7: anywhere in the file; otherwise near a member or directory header
        position = (delta * 7919) % len(raw) if anchor == 7 else hot[anchor % len(hot)] + delta
        raw[min(position, len(raw) - 1)] = value
    path = work / "corrupted.npz"
    path.write_bytes(bytes(raw))
    outcome = read_outcome(path, "corrupted bytes")
    if isinstance(outcome, ScanData):  # accepted: only when the data are what was written
        original = valid_arrays()
        np.testing.assert_array_equal(np.asarray(outcome.diffraction), original["diffraction"])
        np.testing.assert_array_equal(outcome.positions_px[:, 1], original["xcoords"])
        np.testing.assert_array_equal(outcome.positions_px[:, 0], original["ycoords"])
        np.testing.assert_array_equal(outcome.probe[0], original["probeGuess"])


def _npz_with_member(path: Path, name: str, member: bytes, base: dict[str, Any]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for key, value in base.items():
            buf = io.BytesIO()
            np.save(buf, value)
            zf.writestr(f"{key}.npy", buf.getvalue())
        zf.writestr(name, member)
    return path


def _npy_header(shape: tuple[int, ...], descr: str, fortran: bool = False) -> bytes:
    buf = io.BytesIO()
    header = {"descr": descr, "fortran_order": fortran, "shape": shape}
    np.lib.format.write_array_header_1_0(buf, header)  # type: ignore[attr-defined]
    return buf.getvalue()


@SETTINGS
@given(
    shape=st.lists(st.integers(0, 2**40), min_size=0, max_size=4).map(tuple),
    descr=st.sampled_from(["<f8", "<i4", "<c8", "|b1", "<U3", "|O"]),
    payload=st.integers(0, 4096),
)
def test_forged_npy_headers_raise_data_error(
    work: Path, shape: tuple[int, ...], descr: str, payload: int
) -> None:
    """A .npy header may promise any size; the reader must not trust it (no MemoryError)."""
    base = valid_arrays(optional=False)
    del base["diffraction"]
    member = _npy_header(shape, descr) + b"\x01" * payload
    path = _npz_with_member(work / "forged.npz", "diffraction.npy", member, base)
    outcome = read_outcome(path, "forged .npy header")
    declared = math.prod(shape) * np.dtype(descr).itemsize
    if declared > payload or descr == "|O":
        assert isinstance(outcome, DataError)


class _Payload:
    """Unpickling this object creates a marker file: proof that pickle ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def _pickle_bomb_npz(path: Path, marker: Path, key: str = "objectGuess") -> Path:
    arrays = valid_arrays()
    payload = np.empty(1, dtype=object)
    payload[0] = _Payload(marker)
    arrays[key] = payload
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("key", ["diffraction", "objectGuess", "probeGuess", "scan_index"])
def test_pickle_payload_is_never_executed(work: Path, key: str) -> None:
    marker = work / f"pwned-{key}"
    path = _pickle_bomb_npz(work / f"pickle-{key}.npz", marker, key)
    with np.load(path, allow_pickle=False) as npz:  # the member really is a pickle
        with pytest.raises(ValueError, match="allow_pickle"):
            npz[key]
    outcome = read_outcome(path, "pickle payload")
    assert isinstance(outcome, DataError)
    assert "object arrays are not accepted" in str(outcome)
    assert not marker.exists()


def test_raw_pickle_and_npy_files(work: Path) -> None:
    """A pickle file or a single .npy saved under an .npz name is refused without unpickling."""
    marker = work / "pwned-raw"
    (work / "raw.npz").write_bytes(pickle.dumps(_Payload(marker)))
    assert isinstance(read_outcome(work / "raw.npz", "not an NPZ"), DataError)
    np.save(work / "single.npy", np.ones((M, N, N)))
    (work / "single.npz").write_bytes((work / "single.npy").read_bytes())
    assert isinstance(read_outcome(work / "single.npz", "not an NPZ"), DataError)
    assert not marker.exists()


# -- the command line --------------------------------------------------------------------------
def _corrupt_member(raw: bytes, member: str = "diffraction.npy") -> bytes:
    """Flip one byte in the middle of a member's (compressed) data."""
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        info = zf.getinfo(member)
    name_len, extra_len = struct.unpack(
        "<HH", raw[info.header_offset + 26 : info.header_offset + 30]
    )
    data_start = info.header_offset + 30 + name_len + extra_len
    out = bytearray(raw)
    out[data_start + info.compress_size // 2] ^= 0xFF
    return bytes(out)


def _corpus(d: Path) -> dict[str, tuple[Path, str]]:
    """Hand-made bad files: name -> (path, fragment the one stderr line must contain)."""
    files: dict[str, tuple[Path, str]] = {}

    def add(name: str, arrays: dict[str, Any] | None, fragment: str, raw: bytes | None = None):
        path = d / f"{name}.npz"
        if raw is not None:
            path.write_bytes(raw)
        else:
            assert arrays is not None
            np.savez(path, **arrays)
        files[name] = (path, fragment)

    def mutated(**changes: Any) -> dict[str, Any]:
        arrays = valid_arrays()
        for key, value in changes.items():
            if value is None:
                del arrays[key]
            else:
                arrays[key] = value
        return arrays

    valid = VALID_NPZ[False]
    nan = np.ones((M, N, N), np.float32)
    nan[2, 3, 3] = np.nan
    no_patterns = {
        k: np.zeros((0,) + np.shape(v)[1:])
        for k, v in valid_arrays().items()
        if k not in ("probeGuess", "objectGuess", "bad_pixels")
    }
    add("empty-file", None, "not a readable NPZ", raw=b"")
    add("text-file", None, "not a readable NPZ", raw=b"diffraction,xcoords\n1,2\n")
    add("truncated", None, "not a readable NPZ", raw=valid[: len(valid) // 2])
    add("corrupt-compressed", None, "diffraction", raw=_corrupt_member(VALID_NPZ[True]))
    add("missing-probe", mutated(probeGuess=None), "missing key 'probeGuess'")
    add("diffraction-2d", mutated(diffraction=np.ones((M, N), np.int32)), "diffraction")
    add("diffraction-0d", mutated(diffraction=np.float32(3.0)), "diffraction")
    add("non-square", mutated(diffraction=np.ones((M, N, N + 2), np.int32)), "square")
    add("count-mismatch", mutated(xcoords=np.zeros(M - 1)), "xcoords")
    add("nan-diffraction", mutated(diffraction=nan), "NaN or Inf")
    add("inf-positions", mutated(ycoords=np.full(M, np.inf)), "NaN or Inf")
    add("negative-counts", mutated(diffraction=-np.ones((M, N, N), np.int32)), "non-negative")
    add("zero-patterns", mutated(**no_patterns), "at least 1 pattern")
    add("zero-size-patterns", mutated(diffraction=np.zeros((M, 0, 0), np.int32)), "diffraction")
    add("complex-diffraction", mutated(diffraction=np.ones((M, N, N), np.complex64)), "dtype")
    add("probe-mismatch", mutated(probeGuess=np.ones((2 * N, 2 * N), np.complex64)), "probeGuess")
    add("real-scan-index", mutated(scan_index=np.zeros(M) + 0.5), "scan_index")
    add("string-positions", mutated(xcoords=np.full(M, "1.0")), "xcoords")
    add("string-Y", mutated(Y=np.full((M, N, N), "x")), "Y")
    add("beyond-float32", mutated(diffraction=np.full((M, N, N), 1e39)), "diffraction")
    far = valid_arrays()["xcoords"].copy()
    far[3] = 1e9  # a glitched encoder value: inference would try to allocate ~0.5 TB
    add("far-off-position", mutated(xcoords=far, objectGuess=None), "positions")
    add("object-array", mutated(scan_index=np.array([None] * M, dtype=object)), "object arrays")
    add("single-npy", None, "single .npy", raw=_npy_bytes(np.ones((M, N, N))))
    forged = d / "forged-header.npz"
    _npz_with_member(forged, "diffraction.npy", _npy_header((10**6, 10**6, 8), "<f8"), {})
    files["forged-header"] = (forged, "diffraction")
    (d / "a-directory.npz").mkdir()
    files["directory"] = (d / "a-directory.npz", "directory")
    files["missing-file"] = (d / "does-not-exist.npz", "not found")
    return files


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


@pytest.fixture(scope="module")
def corpus(work: Path) -> dict[str, tuple[Path, str]]:
    d = work / "corpus"
    d.mkdir()
    return _corpus(d)


@pytest.fixture(scope="module")
def bundle_dir(work: Path) -> Path:
    """An (untrained) N = 32 bundle for ``infer``."""
    import torch

    from ptychopinn.bundle import save_bundle
    from ptychopinn.config import Config, ModelConfig
    from ptychopinn.data.dataset import Normalization
    from ptychopinn.models.cnn import PtychoPINNNet

    torch.manual_seed(0)
    config = Config(
        model=ModelConfig(N=32, stem_stride=2, n_filters_scale=0.25, architecture="ptychopinn")
    )
    probe = torch.ones(1, 32, 32, dtype=torch.complex64)
    norm = Normalization(N=32, amplitude_factor=0.1, nphotons=1e5, probe_power=1024.0)
    run = work / "RUN"
    save_bundle(run / "wts.h5.zip", config, norm, PtychoPINNNet(config.model), probe)
    return run


def _command(command: str, path: Path, out: Path, bundle: Path) -> list[str]:
    if command == "check":
        return ["check", str(path)]
    if command == "train":
        return [
            "train",
            "--train_data_file",
            str(path),
            "--output_dir",
            str(out),
            "--max_epochs",
            "1",
        ]
    return [
        "infer",
        "--model_path",
        str(bundle),
        "--test_data",
        str(path),
        "--output_dir",
        str(out),
    ]


def _problems(returncode: int, stderr: str, out: Path, *fragments: str) -> list[str]:
    """What is wrong with a user-error exit (none: status 2, one line naming the problem,
    no traceback, nothing written)."""
    problems = []
    lines = [line for line in stderr.splitlines() if line.strip()]
    if returncode != 2:
        problems.append(f"exit status {returncode}")
    if "Traceback" in stderr:
        problems.append("traceback")
    if len(lines) != 1:
        problems.append(f"{len(lines)} stderr lines")
    problems += [f"no {f!r}" for f in fragments if not lines or f not in lines[-1]]
    if out.exists() and any(out.iterdir()):
        problems.append(f"wrote {sorted(p.name for p in out.rglob('*'))}")
    return problems + ([f"stderr: {stderr[-500:]!r}"] if problems else [])


def _describe(failures: dict[str, list[str]]) -> str:
    return "\n".join(f"{key}: {'; '.join(problems)}" for key, problems in failures.items())


TRAIN_INFER_SUBSET = (
    "truncated",
    "corrupt-compressed",
    "forged-header",
    "missing-probe",
    "nan-diffraction",
    "string-Y",
    "object-array",
    "far-off-position",
    "missing-file",
)


def test_cli_refuses_the_corpus_in_process(
    corpus: dict[str, tuple[Path, str]],
    work: Path,
    bundle_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``ptychopinn.cli.main`` over the whole corpus: check, and train / infer on a subset."""
    from ptychopinn import cli

    failures: dict[str, list[str]] = {}
    for command in ("check", "train", "infer"):
        for name, (path, fragment) in corpus.items():
            if command != "check" and name not in TRAIN_INFER_SUBSET:
                continue
            out = work / f"inproc-{command}-{name}"
            capsys.readouterr()
            status = cli.main(_command(command, path, out, bundle_dir))
            TRIED[f"CLI {command} (in process)"] += 1
            problems = _problems(status, capsys.readouterr().err, out, path.name, fragment)
            if problems:
                failures[f"{command} {name}"] = problems
    assert not failures, _describe(failures)


#: One file per layer of the reader (zip, .npy, keys, values) through real processes.
SUBPROCESS_SAMPLE = {
    "check": ("text-file", "corrupt-compressed", "forged-header", "missing-probe", "string-Y"),
    "train": ("nan-diffraction", "object-array"),
    "infer": ("truncated", "beyond-float32"),
}


@pytest.mark.slow
def test_cli_refuses_bad_files_in_subprocesses(
    corpus: dict[str, tuple[Path, str]], work: Path, bundle_dir: Path
) -> None:
    """``python -m ptychopinn.cli``: exit 2, one stderr line, no traceback, no output."""

    def run(command: str, name: str) -> list[str]:
        path, fragment = corpus[name]
        out = work / f"subproc-{command}-{name}"
        result = subprocess.run(
            [sys.executable, "-m", "ptychopinn.cli", *_command(command, path, out, bundle_dir)],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=300,
        )
        TRIED[f"CLI {command} (subprocess)"] += 1
        return _problems(result.returncode, result.stderr, out, path.name, fragment)

    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        futures = {
            f"{command} {name}": pool.submit(run, command, name)
            for command, names in SUBPROCESS_SAMPLE.items()
            for name in names
        }
        failures = {key: f.result() for key, f in futures.items() if f.result()}
    assert not failures, _describe(failures)


# -- HDF5 (Ptychodus product + diffraction pair), when a reader exists -------------------------
def _write_ptychodus_pair(d: Path, **overrides: Any) -> Path:
    """A Ptychodus 1.7 ``product.h5`` + ``diffraction.h5`` pair; overrides by name."""
    import h5py

    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    n_patterns, n = 16, 32
    energy_ev, distance_m, detector_px_m = 10000.0, 2.0, 75e-6
    pixel_m = 1.23984198e-6 / energy_ev * distance_m / (n * detector_px_m)  # lambda z / (N p)
    values: dict[str, Any] = {
        "patterns": rng.poisson(5.0, (n_patterns, n, n)).astype(np.uint32),
        "indexes": np.arange(n_patterns),
        "probe_position_indexes": np.arange(n_patterns),
        "probe_position_x_m": (np.arange(n_patterns) % 4 - 1.5) * 3 * pixel_m,
        "probe_position_y_m": (np.arange(n_patterns) // 4 - 1.5) * 3 * pixel_m,
        "probe": np.ones((1, 1, n, n), np.complex64),
        "object": np.ones((1, 96, 96), np.complex64),
    }
    values.update(overrides)
    with h5py.File(d / "diffraction.h5", "w") as f:
        for key in ("patterns", "indexes"):
            if values[key] is not None:
                f[key] = values[key]
        if "patterns" in f:
            f["patterns"].attrs["detector_pixel_width_m"] = detector_px_m
            f["patterns"].attrs["detector_pixel_height_m"] = detector_px_m
    with h5py.File(d / "product.h5", "w") as f:
        f.attrs["name"] = "bad-input test"
        f.attrs["detector_object_distance_m"] = distance_m
        f.attrs["photon_energy_eV"] = energy_ev
        for key in ("probe_position_indexes", "probe_position_x_m", "probe_position_y_m"):
            if values[key] is not None:
                f[key] = values[key]
        for key in ("probe", "object"):
            if values[key] is not None:
                f[key] = values[key]
                f[key].attrs["pixel_width_m"] = pixel_m
                f[key].attrs["pixel_height_m"] = pixel_m
        if "object" in f:
            f["object"].attrs["center_x_m"] = 0.0
            f["object"].attrs["center_y_m"] = 0.0
        f["object_layer_spacing_m"] = np.zeros(0)
    return d / "product.h5"


def _h5_reader(work: Path) -> Callable[[Path], ScanData]:
    from ptychopinn import workflows

    valid = _write_ptychodus_pair(work / "h5-valid")
    try:
        workflows.read_scan(valid)
    except DataError as exc:
        pytest.skip(f"no HDF5 / Ptychodus reader yet ({exc})")
    return workflows.read_scan


H5_MUTATIONS: dict[str, dict[str, Any]] = {
    "patterns as strings": {"patterns": np.full((16, 32, 32), b"x")},
    "patterns complex": {"patterns": np.ones((16, 32, 32), np.complex64)},
    "patterns 2-D": {"patterns": np.ones((32, 32), np.uint32)},
    "patterns non-square": {"patterns": np.ones((16, 32, 30), np.uint32)},
    "patterns negative": {"patterns": -np.ones((16, 32, 32), np.int32)},
    "patterns NaN": {"patterns": np.full((16, 32, 32), np.nan, np.float32)},
    "patterns missing": {"patterns": None},
    "zero patterns": {"patterns": np.zeros((0, 32, 32), np.uint32), "indexes": np.zeros(0)},
    "indexes as strings": {"indexes": np.full(16, b"i")},
    "positions as strings": {"probe_position_x_m": np.full(16, b"x")},
    "positions NaN": {"probe_position_y_m": np.full(16, np.nan)},
    "positions count": {"probe_position_x_m": np.zeros(5)},
    "positions missing": {"probe_position_x_m": None},
    "position indexes out of range": {"probe_position_indexes": np.arange(16) + 100},
    "probe as strings": {"probe": np.full((1, 1, 32, 32), b"p")},
    "probe wrong size": {"probe": np.ones((1, 1, 16, 16), np.complex64)},
    "probe missing": {"probe": None},
    "object as strings": {"object": np.full((1, 96, 96), b"o")},
}


@pytest.mark.parametrize("name", sorted(H5_MUTATIONS))
def test_hdf5_with_wrong_types_raises_data_error(work: Path, name: str) -> None:
    read = _h5_reader(work)
    slug = name.replace(" ", "-")
    product = _write_ptychodus_pair(work / f"h5-{slug}", **H5_MUTATIONS[name])
    TRIED["HDF5 wrong type/shape"] += 1
    with pytest.raises(DataError):
        read(product)


@pytest.mark.parametrize("content", [b"", b"\x89HDF\r\n\x1a\n" + b"\0" * 40, b"not hdf5"])
def test_non_hdf5_h5_file_raises_data_error(work: Path, content: bytes) -> None:
    from ptychopinn import workflows

    path = work / "broken.h5"
    path.write_bytes(content)
    TRIED["broken .h5 file"] += 1
    with pytest.raises(DataError, match="broken.h5"):
        workflows.read_scan(path)


# -- chunked HDF5 scans (ptychopinn's own format) ------------------------------------------------
def _write_scan_h5(path: Path, attrs: dict[str, Any] | None = None, **overrides: Any) -> Path:
    """A chunked HDF5 scan holding :func:`valid_arrays`; ``None`` drops a dataset or attribute,
    ``"group"`` puts a group in a dataset's place."""
    import h5py

    arrays = {**valid_arrays(), **overrides}
    root = {"format": "ptychopinn-scan", "format_version": 1, "diffraction_units": "counts"}
    root.update(attrs or {})
    with h5py.File(path, "w") as f:
        for key, value in root.items():
            if value is not None:
                f.attrs[key] = value
        for key, value in arrays.items():
            if isinstance(value, str) and value == "group":
                f.create_group(key)
            elif value is not None and key == "diffraction" and np.ndim(value) == 3:
                f.create_dataset(key, data=value, chunks=(1, *np.shape(value)[1:]))
            elif value is not None:
                f[key] = value
    return path


_NAN_PATTERN = np.ones((M, N, N), np.float32)
_NAN_PATTERN[3, 2, 2] = np.nan
H5_SCAN_MUTATIONS: dict[str, tuple[dict[str, Any], dict[str, Any], str]] = {
    # name: (dataset overrides, root attribute overrides, fragment of the one-line message)
    "diffraction missing": ({"diffraction": None}, {}, "missing dataset 'diffraction'"),
    "diffraction a group": ({"diffraction": "group"}, {}, "expected a dataset"),
    "diffraction 2-D": ({"diffraction": np.ones((M, N), np.int32)}, {}, "3 dimensions"),
    "diffraction strings": ({"diffraction": np.full((M, N, N), b"x")}, {}, "dtype"),
    "diffraction complex": ({"diffraction": np.ones((M, N, N), np.complex64)}, {}, "dtype"),
    "diffraction count": ({"diffraction": np.ones((M + 1, N, N), np.int32)}, {}, "xcoords"),
    "diffraction NaN": ({"diffraction": _NAN_PATTERN}, {}, "pattern 3"),
    "diffraction negative": ({"diffraction": -np.ones((M, N, N), np.int32)}, {}, "non-negative"),
    "positions strings": ({"xcoords": np.full(M, b"1")}, {}, "xcoords"),
    "positions missing": ({"ycoords": None}, {}, "missing dataset 'ycoords'"),
    "probe mismatch": ({"probeGuess": np.ones((2 * N, 2 * N), np.complex64)}, {}, "probeGuess"),
    "units unknown": ({}, {"diffraction_units": "photons"}, "diffraction_units"),
    "units missing": ({}, {"diffraction_units": None}, "diffraction_units"),
    "version 2": ({}, {"format_version": 2}, "format_version"),
}


@pytest.mark.parametrize("name", sorted(H5_SCAN_MUTATIONS))
def test_bad_hdf5_scan_raises_one_line_data_error(work: Path, name: str) -> None:
    from ptychopinn import workflows

    overrides, attrs, fragment = H5_SCAN_MUTATIONS[name]
    path = _write_scan_h5(work / f"scan-{name.replace(' ', '-')}.h5", attrs, **overrides)
    TRIED["chunked HDF5 scan"] += 1
    with pytest.raises(DataError) as info:
        workflows.read_scan(path)
    message = str(info.value)
    assert path.name in message and fragment in message, message
    assert "\n" not in message.strip()


def test_valid_hdf5_scan_reads(work: Path) -> None:
    from ptychopinn import workflows

    scan = workflows.read_scan(_write_scan_h5(work / "scan-valid.h5"))
    assert scan.n_patterns == M and scan.units == "counts"
    np.testing.assert_array_equal(scan.diffraction[:], valid_arrays()["diffraction"])


def test_damaged_hdf5_chunk_and_truncated_file_raise_data_error(work: Path) -> None:
    """A compressed chunk that no longer decompresses, and a file cut short: DataError."""
    import h5py

    from ptychopinn import workflows

    path = work / "scan-damaged.h5"
    arrays = valid_arrays()
    _write_scan_h5(path, diffraction=None)
    with h5py.File(path, "a") as f:
        f.create_dataset(
            "diffraction", data=arrays["diffraction"], chunks=(1, N, N), compression="gzip"
        )
        info = f["diffraction"].id.get_chunk_info(2)
    raw = bytearray(path.read_bytes())
    for i in range(info.byte_offset, info.byte_offset + info.size):
        raw[i] ^= 0x5A
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"scan-damaged\.h5: diffraction: cannot read"):
        workflows.read_scan(path)
    truncated = work / "scan-truncated.h5"
    full = _write_scan_h5(work / "scan-full.h5").read_bytes()
    truncated.write_bytes(full[: len(full) // 2])
    with pytest.raises(DataError, match="scan-truncated.h5"):
        workflows.read_scan(truncated)
    TRIED["chunked HDF5 scan"] += 2


def test_damaged_memory_mapped_npz_member_raises_data_error(work: Path) -> None:
    """An uncompressed diffraction member is memory-mapped after its CRC-32 is checked."""
    path = _save(work / "mapped.npz", valid_arrays())
    assert isinstance(read_npz(path).diffraction, np.memmap)
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as zf:
        info = zf.getinfo("diffraction.npy")
    raw[info.header_offset + info.compress_size] ^= 0x01  # a byte of the pattern data
    path.write_bytes(bytes(raw))
    assert isinstance(read_outcome(path, "damaged mapped member"), DataError)


def test_cli_check_refuses_a_bad_hdf5_scan(
    work: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ptychopinn import cli

    path = _write_scan_h5(work / "scan-cli.h5", diffraction=_NAN_PATTERN)
    capsys.readouterr()
    assert cli.main(["check", str(path)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "scan-cli.h5" in lines[0] and "NaN" in lines[0], lines
