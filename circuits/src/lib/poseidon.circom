pragma circom 2.0.0;

// Poseidon over BN254, this project's own circom template. It computes what
// zkp/poseidon.py computes (and circomlib's Poseidon(n), whose outputs the
// tests check): the permutation of width t = n + 1 on the state
// [0, in[0], ..., in[n-1]], output state[0]. Each round adds its t round
// constants, applies the S-box x^5 (to every element in a full round, to
// state[0] only in a partial round) and multiplies by the MDS matrix; half the
// full rounds come first, then the partial rounds, then the other half.
//
// Why it costs what it costs: the round constants and the MDS matrix are
// constants, so adding and mixing are linear and need no constraint: the
// state is kept as linear combinations of signals in vars. Only the S-box
// needs signals: x^2, x^4 and x^5, three constraints for each element it
// touches; x^5 of a constant (the capacity element in the first round) is
// computed at compile time. Width t costs 3 * (8 * t + partial) - 3
// constraints: 240 for 2 inputs (t = 3), 609 for 16 (t = 17).
//
// The parameters are generated from zkp/poseidon.py into
// poseidon_constants.circom by circuits/gen_poseidon_constants.py.

include "poseidon_constants.circom";

// y = x^5 for a linear combination x: three constraints.
template Pow5() {
    signal input in;
    signal output out;
    signal square;
    signal fourth;
    square <== in * in;
    fourth <== square * square;
    out <== fourth * in;
}

// Poseidon of n field elements, 1 <= n <= 16.
template Poseidon(n) {
    signal input in[n];
    signal output out;

    assert(n >= 1 && n <= 16);
    var t = n + 1;
    var full = poseidonFullRounds();
    var partial = poseidonPartialRounds(t);
    var rounds = full + partial;
    var C[rounds * t] = poseidonRoundConstants(t);
    var M[t][t] = poseidonMds(t);

    // S-box components: every element in a full round, state[0] in a partial
    // one, less the constant one in the first round.
    component sbox[full * t + partial - 1];
    var used = 0;

    // The state as linear combinations of signals (or constants).
    var state[t];
    var next[t];
    state[0] = 0;
    for (var i = 0; i < n; i++) {
        state[i + 1] = in[i];
    }

    for (var r = 0; r < rounds; r++) {
        var isFull = r < full \ 2 || r >= full \ 2 + partial;
        for (var i = 0; i < t; i++) {
            state[i] = state[i] + C[r * t + i];
            if (r == 0 && i == 0) {
                // The capacity element starts at 0: its S-box is a constant.
                state[i] = state[i] ** 5;
            } else if (i == 0 || isFull) {
                sbox[used] = Pow5();
                sbox[used].in <== state[i];
                state[i] = sbox[used].out;
                used++;
            }
        }
        for (var i = 0; i < t; i++) {
            next[i] = 0;
            for (var j = 0; j < t; j++) {
                next[i] += M[i][j] * state[j];
            }
        }
        for (var i = 0; i < t; i++) {
            state[i] = next[i];
        }
    }

    out <== state[0];
}
