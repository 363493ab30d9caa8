pragma circom 2.0.0;

// "I know data hashing to this commitment": the prover knows preimage[2]
// with Poseidon(preimage) == hash, and reveals only the hash.
//
// Public signals, in order: hash (output), binding (the job binding,
// zkp/binding.py: always the last public signal of every circuit).

include "lib/poseidon.circom";

template PoseidonPreimage(n) {
    signal input preimage[n];
    signal input binding;
    signal output hash;

    component h = Poseidon(n);
    for (var i = 0; i < n; i++) {
        h.in[i] <== preimage[i];
    }
    hash <== h.out;

    // Ties the proof to one job. A public input no constraint uses would be
    // dropped by the optimizer; squaring it keeps it in the proof.
    signal bindingSquare;
    bindingSquare <== binding * binding;
}

component main {public [binding]} = PoseidonPreimage(2);
