pragma circom 2.0.0;

// Statistics over a private dataset committed by its Poseidon hash.
// The prover knows 16 values, each in [0, 2^32), with
// Poseidon(values) == commitment, and reveals only their sum, how many are
// strictly above the public threshold, and the floor of their mean.
//
// Public signals, in order: sum, count_above, mean_floor (outputs), then
// threshold, commitment, binding (public inputs; binding always last).

include "lib/poseidon.circom";
include "lib/bits.circom";
include "lib/compare.circom";

template PrivateStats(n, bits) {
    signal input values[n];
    signal input threshold;
    signal input commitment;
    signal input binding;
    signal output sum;
    signal output count_above;
    signal output mean_floor;

    // Every value, and the threshold, in [0, 2^bits): the comparators below
    // are only sound for inputs of at most `bits` bits.
    component valueRange[n];
    for (var i = 0; i < n; i++) {
        valueRange[i] = Bits(bits);
        valueRange[i].in <== values[i];
    }
    component thresholdRange = Bits(bits);
    thresholdRange.in <== threshold;

    // The dataset is the one committed to.
    component h = Poseidon(n);
    for (var i = 0; i < n; i++) {
        h.in[i] <== values[i];
    }
    commitment === h.out;

    // sum and count of values strictly above the threshold.
    component above[n];
    var total = 0;
    var count = 0;
    for (var i = 0; i < n; i++) {
        above[i] = GreaterThan(bits);
        above[i].in[0] <== values[i];
        above[i].in[1] <== threshold;
        total += values[i];
        count += above[i].out;
    }
    sum <== total;
    count_above <== count;

    // mean_floor = sum \ n: sum == n * q + r with 0 <= r < n and q of at most
    // `bits` bits (n values below 2^bits average below 2^bits), so q is the
    // only quotient, not a field wrap-around.
    signal remainder;
    mean_floor <-- sum \ n;
    remainder <-- sum % n;
    sum === n * mean_floor + remainder;
    component quotientRange = Bits(bits);
    quotientRange.in <== mean_floor;
    component remainderBelow = LessThan(bits);
    remainderBelow.in[0] <== remainder;
    remainderBelow.in[1] <== n;
    remainderBelow.out === 1;
    component remainderRange = Bits(bits);
    remainderRange.in <== remainder;

    // Ties the proof to one job (see poseidon_preimage.circom).
    signal bindingSquare;
    bindingSquare <== binding * binding;
}

component main {public [threshold, commitment, binding]} = PrivateStats(16, 32);
