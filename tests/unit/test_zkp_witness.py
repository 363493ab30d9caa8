"""Witness generation (zkp.witness): circom's WASM under wasmtime limits.

The shipped circuits' witnesses are checked against Python (Poseidon, the
statistics); the same witnesses equal snarkjs's ``wtns calculate`` in
tests/integration/test_zkp_snarkjs.py. Bad inputs fail with reasons, and a
hostile witness generator (garbage, truncated, looping, memory-hungry, for
another field, missing exports) is stopped or refused with a WitnessError.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import wasmtime
from hypothesis import given, settings
from hypothesis import strategies as st

from zkp.binding import SNARK_SCALAR_FIELD as R
from zkp.circuit import load_circuit, shipped_circuits
from zkp.poseidon import poseidon
from zkp.witness import WitnessError, WitnessLimits, compute_witness, flatten_inputs, signal_hash

SHIPPED = shipped_circuits()
PREIMAGE = load_circuit(SHIPPED["poseidon_preimage"])
STATS = load_circuit(SHIPPED["private_stats"])
VALUES = [0, 1, 2**32 - 1, 5, 100, 99, 101, 7, 3_000_000, 12, 0, 42, 4096, 100, 1, 65535]
BINDING = 1234567890123456789


def stats_inputs(values=VALUES, threshold=100, commitment=None, binding=BINDING) -> dict:
    return {
        "values": [str(v) for v in values],
        "threshold": str(threshold),
        "commitment": str(poseidon(values) if commitment is None else commitment),
        "binding": str(binding),
    }


# --- the shipped circuits ------------------------------------------------------------


def test_poseidon_preimage_witness() -> None:
    witness = compute_witness(PREIMAGE, {"preimage": ["11", "22"], "binding": str(BINDING)})
    assert witness[0] == 1
    assert witness[1:3] == [poseidon([11, 22]), BINDING]
    assert len(witness) == 245
    assert all(0 <= w < R for w in witness)


def test_the_same_witness_from_a_path_or_bytes_or_ints() -> None:
    inputs = {"preimage": [11, 22], "binding": BINDING}
    from_circuit = compute_witness(PREIMAGE, inputs)
    assert compute_witness(PREIMAGE.wasm_path, inputs) == from_circuit
    assert compute_witness(PREIMAGE.wasm_path.read_bytes(), inputs) == from_circuit
    hex_inputs = {"preimage": [hex(11), "22"], "binding": hex(BINDING)}
    assert compute_witness(PREIMAGE, hex_inputs) == from_circuit


def test_negative_inputs_are_taken_mod_r_as_snarkjs_does() -> None:
    witness = compute_witness(PREIMAGE, {"preimage": ["-1", -2], "binding": 0})
    assert witness[1] == poseidon([R - 1, R - 2])


def test_private_stats_witness_reveals_the_statistics() -> None:
    witness = compute_witness(STATS, stats_inputs())
    total = sum(VALUES)
    public = witness[1:7]
    assert public == [
        total,
        sum(v > 100 for v in VALUES),  # strictly above: the two 100s do not count
        total // 16,
        100,
        poseidon(VALUES),
        BINDING,
    ]


@settings(max_examples=8, deadline=None, derandomize=True)
@given(
    values=st.lists(st.integers(0, 2**32 - 1), min_size=16, max_size=16),
    threshold=st.integers(0, 2**32 - 1),
)
def test_private_stats_matches_python_for_any_dataset(values: list[int], threshold: int) -> None:
    witness = compute_witness(STATS, stats_inputs(values, threshold))
    assert witness[1:4] == [sum(values), sum(v > threshold for v in values), sum(values) // 16]


# --- inputs that do not fit ---------------------------------------------------------------


def test_a_value_of_32_bits_or_more_fails_the_range_check() -> None:
    values = [*VALUES[:15], 2**32]
    with pytest.raises(WitnessError, match="assert failed in template Bits") as info:
        compute_witness(STATS, stats_inputs(values))
    assert info.value.code == "witness_assert_failed"
    assert info.value.hint


def test_a_threshold_of_32_bits_or_more_fails_the_range_check() -> None:
    with pytest.raises(WitnessError, match="assert failed in template Bits"):
        compute_witness(STATS, stats_inputs(threshold=2**32))


def test_a_wrong_commitment_fails() -> None:
    with pytest.raises(WitnessError, match="assert failed in template PrivateStats line"):
        compute_witness(STATS, stats_inputs(commitment=poseidon(VALUES) + 1))


@pytest.mark.parametrize(
    ("inputs", "reason"),
    [
        ({"preimage": [1, 2]}, "missing input binding"),
        ({"preimage": [1, 2], "binding": 1, "y": 3}, "unknown input signal y"),
        ({"preimage": [1, 2, 3], "binding": 1}, "too many values for input preimage: 3"),
        ({"preimage": [1], "binding": 1}, "not enough values for input preimage: 1 of 2"),
        ({"preimage": [1, "x"], "binding": 1}, "'x' is not a number"),
        ({"preimage": [1, True], "binding": 1}, "True is not a number"),
        ({"preimage": [1, 2.5], "binding": 1}, "a float is not a number"),
        ({"preimage": [1, None], "binding": 1}, "a NoneType is not a number"),
        ({"preimage": [1, R], "binding": 1}, "outside the BN254 scalar field"),
        ({"preimage": [1, "9" * 200], "binding": 1}, "more than 80 characters"),
        ({"preimage": [[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]], 2], "binding": 1}, "nested more than"),
    ],
)
def test_bad_inputs_are_named(inputs: dict, reason: str) -> None:
    with pytest.raises(WitnessError, match=reason) as info:
        compute_witness(PREIMAGE, inputs)
    assert info.value.code == "witness_input_invalid"


def test_without_a_manifest_the_generator_itself_names_bad_inputs() -> None:
    wasm = PREIMAGE.wasm_path
    with pytest.raises(WitnessError, match="unknown input signal y"):
        compute_witness(wasm, {"preimage": [1, 2], "binding": 1, "y": 3})
    with pytest.raises(WitnessError, match="missing inputs: 2 of the circuit's 3"):
        compute_witness(wasm, {"preimage": [1, 2]})


def test_flatten_inputs_qualifies_like_circom() -> None:
    flat = flatten_inputs({"a": {"b": [1, [2, 3]], "c": "4"}, "d": [{"e": 5}, {"e": 6}]})
    assert flat == {"a.b": [1, 2, 3], "a.c": [4], "d[0].e": [5], "d[1].e": [6]}
    with pytest.raises(WitnessError, match="more than 3 input values"):
        flatten_inputs({"a": [1, 2], "b": [3, 4]}, max_values=3)


def test_signal_hash_is_fnv1a_64() -> None:
    assert signal_hash("") == (0xCBF29CE4, 0x84222325)
    assert signal_hash("a") == (0xAF63DC4C, 0x8601EC8C)


# --- hostile witness generators ------------------------------------------------------------

_R_LIMBS = [
    0xF0000001,
    0x43E1F593,
    0x79B97091,
    0x2833E848,
    0x8181585D,
    0xB85045B6,
    0xE131A029,
    0x30644E72,
]


def fake_generator(
    *, init: str = "", prime: list[int] = _R_LIMBS, extra: str = "", drop: str = ""
) -> bytes:
    """A module speaking circom's protocol: one input, a witness [1, 1]."""
    store_prime = "".join(
        f"(i32.store (i32.const {4 * i}) (i32.const {limb}))" for i, limb in enumerate(prime)
    )
    exports = {
        "getVersion": "(result i32) (i32.const 2)",
        "getSharedRWMemoryStart": "(result i32) (i32.const 0)",
        "readSharedRWMemory": "(param i32) (result i32) (i32.load (i32.shl (local.get 0) (i32.const 2)))",
        "writeSharedRWMemory": "(param i32 i32) (i32.store (i32.shl (local.get 0) (i32.const 2)) (local.get 1))",
        "init": f"(param i32) {init}",
        "setInputSignal": "(param i32 i32 i32)",
        "getInputSignalSize": "(param i32 i32) (result i32) (i32.const 1)",
        "getRawPrime": store_prime,
        "getFieldNumLen32": "(result i32) (i32.const 8)",
        "getWitnessSize": "(result i32) (i32.const 2)",
        "getInputSize": "(result i32) (i32.const 1)",
        "getWitness": "(param i32) (memory.fill (i32.const 0) (i32.const 0) (i32.const 32)) "
        "(i32.store (i32.const 0) (i32.const 1))",
        "getMessageChar": "(result i32) (i32.const 0)",
    }
    funcs = "\n".join(
        f'(func (export "{name}") {body})' for name, body in exports.items() if name != drop
    )
    wat = f"""
    (module
      (import "runtime" "exceptionHandler" (func $exc (param i32)))
      (import "runtime" "printErrorMessage" (func $pem))
      (import "runtime" "writeBufferMessage" (func $wbm))
      (import "runtime" "showSharedRWMemory" (func $srm))
      {extra}
      (memory (export "memory") 1)
      {funcs})
    """
    return wasmtime.wat2wasm(wat)


def test_the_fake_generator_speaks_the_protocol() -> None:
    assert compute_witness(fake_generator(), {"x": 7}) == [1, 1]


def test_a_looping_generator_runs_out_of_fuel() -> None:
    looping = fake_generator(init="(loop $l (br $l))")
    with pytest.raises(WitnessError, match=r"used up its fuel \(1000000\)") as info:
        compute_witness(looping, {"x": 7}, max_fuel=1_000_000)
    assert info.value.code == "witness_out_of_fuel"


def test_a_looping_generator_is_stopped_at_its_deadline() -> None:
    looping = fake_generator(init="(loop $l (br $l))")
    with pytest.raises(WitnessError, match="timeout") as info:
        compute_witness(looping, {"x": 7}, max_fuel=2**62, deadline_s=0.2)
    assert info.value.code == "witness_timeout"


def test_a_looping_generator_is_stopped_on_cancel() -> None:
    looping = fake_generator(init="(loop $l (br $l))")
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(WitnessError, match="cancelled") as info:
        compute_witness(looping, {"x": 7}, max_fuel=2**62, deadline_s=60, cancel=cancel)
    assert info.value.code == "witness_cancelled"


def test_a_generator_that_wants_more_memory_is_stopped() -> None:
    greedy = fake_generator(
        init="(if (i32.eq (memory.grow (i32.const 1024)) (i32.const -1))"
        " (then (call $exc (i32.const 5))))"
    )
    with pytest.raises(WitnessError, match="out of memory") as info:
        compute_witness(greedy, {"x": 7}, max_memory_mb=16)
    assert info.value.code == "witness_memory_limit"
    assert compute_witness(greedy, {"x": 7}, max_memory_mb=128) == [1, 1]


def test_the_real_circuit_under_too_little_memory_is_a_memory_error() -> None:
    with pytest.raises(WitnessError, match="out of memory"):
        compute_witness(STATS, stats_inputs(), max_memory_mb=1)


def test_a_generator_that_traps_is_reported() -> None:
    with pytest.raises(WitnessError, match="trapped") as info:
        compute_witness(fake_generator(init="unreachable"), {"x": 7})
    assert info.value.code == "witness_invalid_module"


def test_a_generator_for_another_field_is_refused() -> None:
    other = fake_generator(prime=[1, 2, 3, 4, 5, 6, 7, 8])
    with pytest.raises(WitnessError, match="another field"):
        compute_witness(other, {"x": 7})


def test_a_generator_missing_an_export_is_refused() -> None:
    with pytest.raises(WitnessError, match="does not export getWitness"):
        compute_witness(fake_generator(drop="getWitness"), {"x": 7})


def test_a_generator_with_other_imports_cannot_be_instantiated() -> None:
    wasi = fake_generator(extra='(import "wasi_snapshot_preview1" "fd_write" (func))')
    with pytest.raises(WitnessError, match="cannot be instantiated") as info:
        compute_witness(wasi, {"x": 7})
    assert info.value.code == "witness_invalid_module"


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"not wasm at all",
        b"\0asm\x01\0\0\0\xff\xff\xff",
        PREIMAGE.wasm_path.read_bytes()[:5000],
    ],
    ids=["empty", "text", "bad-section", "truncated"],
)
def test_garbage_and_truncated_wasm_are_refused(blob: bytes) -> None:
    with pytest.raises(WitnessError) as info:
        compute_witness(blob, {"x": 1})
    assert info.value.code == "witness_invalid_module"
    assert info.value.reason


def test_an_unreadable_wasm_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(WitnessError, match="cannot read"):
        compute_witness(tmp_path / "missing.wasm", {"x": 1})


def test_limits_are_validated() -> None:
    for bad in ({"max_fuel": 0}, {"max_memory_mb": 0}, {"deadline_s": 0}):
        with pytest.raises(ValueError):
            WitnessLimits(**bad)
