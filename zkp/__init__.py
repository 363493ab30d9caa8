"""Groth16 over BN254: proofs that a job's result is correct, checked without re-running it.

* :mod:`zkp.formats`: snarkjs JSON (keys, proofs, public signals), Solidity calldata, the circuit id;
* :mod:`zkp.verify`: :func:`~zkp.verify.verify`, a verdict with a reason for any input;
* :mod:`zkp.backends`: the native (zksnake) and reference (py-ecc) pairing backends;
* :mod:`zkp.binding`: the job binding, the last public signal of every circuit;
* :mod:`zkp.testing`: a setup with known secrets, for tests.

Nothing is imported here, so ``python -m zkp`` and ``import zkp.binding`` stay light.
"""
