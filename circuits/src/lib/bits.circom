pragma circom 2.0.0;

// Binary decomposition, which is also the range check 0 <= in < 2^n.
//
// Each out[i] is constrained to be a bit (out[i] * (out[i] - 1) == 0) and the
// bits must add up to in (sum of out[i] * 2^i == in). A sum of n bits is below
// 2^n, far below the field's prime r (about 2^253.6) for n <= 252, so it cannot
// wrap around: the constraints hold exactly when in < 2^n, and then the bits
// are the only ones. n constraints (one per bit) and the linear sum, which
// circom's --O2 usually substitutes into the others.
template Bits(n) {
    signal input in;
    signal output out[n];

    assert(n >= 1 && n <= 252);
    var sum = 0;
    var weight = 1;
    for (var i = 0; i < n; i++) {
        out[i] <-- (in >> i) & 1;
        out[i] * (out[i] - 1) === 0;
        sum += out[i] * weight;
        weight += weight;
    }
    sum === in;
}
