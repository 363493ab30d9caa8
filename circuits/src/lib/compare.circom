pragma circom 2.0.0;

// Comparisons of two numbers of at most n bits, as 0/1 outputs.
//
// The CALLER must range-check both inputs to [0, 2^n) (bits.circom's Bits(n)):
// on larger inputs (or "negative" ones, near the prime r) the answer is
// meaningless. For in[0], in[1] < 2^n, d = in[0] + 2^n - in[1] lies in
// [1, 2^(n+1)) and its bit n is set exactly when in[0] >= in[1]; Bits(n + 1)
// proves that decomposition: n + 1 constraints.

include "bits.circom";

// out = 1 if in[0] < in[1], else 0.
template LessThan(n) {
    signal input in[2];
    signal output out;

    assert(n >= 1 && n <= 251);
    component d = Bits(n + 1);
    d.in <== in[0] + (1 << n) - in[1];
    out <== 1 - d.out[n];
}

// out = 1 if in[0] > in[1], else 0.
template GreaterThan(n) {
    signal input in[2];
    signal output out;

    component lt = LessThan(n);
    lt.in[0] <== in[1];
    lt.in[1] <== in[0];
    out <== lt.out;
}
