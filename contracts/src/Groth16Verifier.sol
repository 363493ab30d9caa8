// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

// r: the order of BN254's G1, the field circom signals (public inputs) live in.
uint256 constant SNARK_SCALAR_FIELD = 21888242871839275222246405745257275088548364400416034343698204186575808495617;
// q: the base field of BN254 (alt_bn128); every point coordinate is below it.
uint256 constant BN254_BASE_FIELD = 21888242871839275222246405745257275088696311157297823662689037894645226208583;

/// @notice The job binding, the LAST public signal of every circuit maskd runs
/// (zkp/binding.py computes the same): a proof for one job, requester and
/// provider cannot be replayed for another job or claimed by another provider.
function jobBinding(bytes32 jobId, address requester, address provider) pure returns (uint256) {
    return uint256(keccak256(abi.encode(jobId, requester, provider))) % SNARK_SCALAR_FIELD;
}

/// @title Groth16 verification over BN254 with registered, content-addressed keys
/// @notice Written for this project (not the snarkjs template). docs/ledger.md is
/// the specification. Anyone registers a verifying key; its id is
/// keccak256(abi.encode(alpha1, beta2, gamma2, delta2, ic)) (zkp.formats.vk_id),
/// so an id names one key and cannot be re-pointed. `verifyProof` never reverts
/// for bad input: an unknown circuit, a wrong number of public signals, a scalar
/// >= r, a coordinate >= q or a point the precompiles refuse is simply `false`.
/// @dev A key is stored as the code of a small data contract (SSTORE2 style):
/// reading it costs one cold account access (2,600 gas) plus 3 gas a word,
/// where storage would cost 2,100 a slot (14 + 2(n+1) slots). Every precompile
/// call gets exactly its EIP-1108 price and the caller must have that much to
/// give: a call starved of gas reverts (VerifierOutOfGas) rather than answer
/// `false`, so nobody can make a valid proof look invalid by sending too little
/// gas (which would let them slash an honest provider).
abstract contract Groth16Verifier {
    /// G2 points in EIP-197 order: (x.c1, x.c0, y.c1, y.c0). `ic` has one point
    /// more than the circuit has public signals.
    struct VerifyingKey {
        uint256[2] alpha1;
        uint256[4] beta2;
        uint256[4] gamma2;
        uint256[4] delta2;
        uint256[2][] ic;
    }

    /// At most this many public signals per circuit (the key's data contract
    /// stays far below EIP-170's 24,576 bytes).
    uint256 public constant MAX_PUBLIC = 256;

    // EIP-1108 prices: each precompile call is given exactly this much gas.
    uint256 private constant ADD_GAS = 150;
    uint256 private constant MUL_GAS = 6000;
    uint256 private constant PAIRING_GAS = 45000 + 4 * 34000;
    // Word offsets in a key's data (after the data contract's leading STOP byte).
    uint256 private constant VK_FIXED_BYTES = 14 * 32; // alpha1, beta2, gamma2, delta2

    /// circuitId => data contract address (low 160 bits) | nPublic << 160; 0 = unknown.
    mapping(bytes32 circuitId => uint256) private _circuits;

    event CircuitRegistered(bytes32 indexed circuitId, uint256 nPublic);

    // A malformed key (no string arguments: eth-tester garbles those).
    error InvalidKeyIcLength(uint256 points);
    error InvalidKeyCoordinate();
    error InvalidKeyPoint();
    error KeyStoreFailed();
    error VerifierOutOfGas();

    /// @notice Registers `vk` (permissionless, idempotent) and returns its id.
    /// @dev Checks what is cheap to check: the number of ic points, every
    /// coordinate < q, and the G1 points (alpha1, ic) on the curve. A key with
    /// bad G2 points is accepted and simply verifies nothing.
    function registerCircuit(VerifyingKey calldata vk) external returns (bytes32 circuitId) {
        uint256 points = vk.ic.length;
        if (points == 0 || points > MAX_PUBLIC + 1) revert InvalidKeyIcLength(points);
        circuitId = keccak256(abi.encode(vk.alpha1, vk.beta2, vk.gamma2, vk.delta2, vk.ic));
        if (_circuits[circuitId] != 0) return circuitId;

        if (!_g1OnCurve(vk.alpha1[0], vk.alpha1[1])) revert InvalidKeyPoint();
        for (uint256 i; i < 4; ++i) {
            if (
                vk.beta2[i] >= BN254_BASE_FIELD || vk.gamma2[i] >= BN254_BASE_FIELD
                    || vk.delta2[i] >= BN254_BASE_FIELD
            ) revert InvalidKeyCoordinate();
        }
        for (uint256 i; i < points; ++i) {
            if (!_g1OnCurve(vk.ic[i][0], vk.ic[i][1])) revert InvalidKeyPoint();
        }

        // Data contract: PUSH2 size, DUP1, PUSH1 10, RETURNDATASIZE, CODECOPY,
        // RETURNDATASIZE, RETURN; its code is STOP followed by the key's words.
        uint256 dataBytes = VK_FIXED_BYTES + points * 64;
        bytes memory init = new bytes(11 + dataBytes);
        uint256[2][] calldata ic = vk.ic;
        assembly ("memory-safe") {
            let p := add(init, 32)
            mstore(p, or(shl(248, 0x61), shl(232, add(dataBytes, 1))))
            mstore(add(p, 3), shl(192, 0x80600a3d393df300))
            calldatacopy(add(p, 11), vk, VK_FIXED_BYTES)
            calldatacopy(add(p, add(11, VK_FIXED_BYTES)), ic.offset, mul(points, 64))
        }
        address store;
        assembly ("memory-safe") {
            store := create(0, add(init, 32), mload(init))
        }
        if (store == address(0)) revert KeyStoreFailed();
        _circuits[circuitId] = uint256(uint160(store)) | ((points - 1) << 160);
        emit CircuitRegistered(circuitId, points - 1);
    }

    /// @notice Whether `circuitId` is registered, and how many public signals its proofs carry.
    function circuitInfo(bytes32 circuitId) public view returns (bool registered, uint256 nPublic) {
        uint256 packed = _circuits[circuitId];
        return (packed != 0, packed >> 160);
    }

    /// @notice True iff `proof` (EIP-197 order: A.x, A.y, B.x.c1, B.x.c0, B.y.c1,
    /// B.y.c0, C.x, C.y) is a valid Groth16 proof of `publicSignals` for the
    /// registered circuit. False, never a revert, for any malformed input.
    function verifyProof(bytes32 circuitId, uint256[8] calldata proof, uint256[] calldata publicSignals)
        public
        view
        returns (bool)
    {
        return _verifyProof(circuitId, proof, publicSignals);
    }

    function _verifyProof(bytes32 circuitId, uint256[8] calldata proof, uint256[] calldata publicSignals)
        internal
        view
        returns (bool ok)
    {
        uint256 packed = _circuits[circuitId];
        if (packed == 0) return false;
        uint256 n = publicSignals.length;
        if (n != packed >> 160) return false;
        for (uint256 i; i < 8; ++i) {
            if (proof[i] >= BN254_BASE_FIELD) return false;
        }
        for (uint256 i; i < n; ++i) {
            if (publicSignals[i] >= SNARK_SCALAR_FIELD) return false;
        }
        address store = address(uint160(packed));
        bytes4 outOfGas = VerifierOutOfGas.selector;
        assembly ("memory-safe") {
            // Each precompile call gets exactly `cap`; refuse to run one that could get less.
            function guard(cap, selector) {
                if lt(gas(), add(div(mul(cap, 64), 63), 2000)) {
                    mstore(0, selector)
                    revert(0, 4)
                }
            }

            // The pairing input, 24 words: -A, B, alpha1, beta2, vk_x, gamma2, C, delta2.
            let buf := mload(0x40)
            mstore(buf, calldataload(proof))
            mstore(add(buf, 32), mod(sub(BN254_BASE_FIELD, calldataload(add(proof, 32))), BN254_BASE_FIELD))
            calldatacopy(add(buf, 64), add(proof, 64), 128) // B
            extcodecopy(store, add(buf, 192), 1, 192) // alpha1, beta2
            extcodecopy(store, add(buf, 448), 193, 128) // gamma2
            calldatacopy(add(buf, 576), add(proof, 192), 64) // C
            extcodecopy(store, add(buf, 640), 321, 128) // delta2

            // vk_x = ic[0] + sum(publicSignals[i] * ic[i + 1]) with 0x07 and 0x06.
            // Scratch at t: the sum (2 words), then the term (x, y, scalar).
            let ic := add(buf, 768)
            extcodecopy(store, ic, add(1, VK_FIXED_BYTES), mul(add(n, 1), 64))
            let t := add(ic, mul(add(n, 1), 64))
            mstore(t, mload(ic))
            mstore(add(t, 32), mload(add(ic, 32)))
            ok := 1
            for { let i := 0 } and(ok, lt(i, n)) { i := add(i, 1) } {
                let s := calldataload(add(publicSignals.offset, mul(i, 32)))
                if s {
                    let point := add(ic, mul(add(i, 1), 64))
                    mstore(add(t, 64), mload(point))
                    mstore(add(t, 96), mload(add(point, 32)))
                    mstore(add(t, 128), s)
                    guard(MUL_GAS, outOfGas)
                    // Yul evaluates arguments right to left: read returndatasize after the call.
                    ok := staticcall(MUL_GAS, 0x07, add(t, 64), 96, add(t, 64), 64)
                    ok := and(ok, eq(returndatasize(), 64))
                    if ok {
                        guard(ADD_GAS, outOfGas)
                        ok := staticcall(ADD_GAS, 0x06, t, 128, t, 64)
                        ok := and(ok, eq(returndatasize(), 64))
                    }
                }
            }
            if ok {
                mstore(add(buf, 384), mload(t))
                mstore(add(buf, 416), mload(add(t, 32)))
                // e(-A, B) e(alpha1, beta2) e(vk_x, gamma2) e(C, delta2) == 1
                guard(PAIRING_GAS, outOfGas)
                ok := staticcall(PAIRING_GAS, 0x08, buf, 768, buf, 32)
                ok := and(ok, and(eq(returndatasize(), 32), eq(mload(buf), 1)))
            }
        }
    }

    /// (0, 0) is the point at infinity; otherwise y^2 == x^3 + 3 (mod q), coordinates < q.
    function _g1OnCurve(uint256 x, uint256 y) private pure returns (bool) {
        if (x >= BN254_BASE_FIELD || y >= BN254_BASE_FIELD) return false;
        if (x == 0 && y == 0) return true;
        uint256 q = BN254_BASE_FIELD;
        return mulmod(y, y, q) == addmod(mulmod(mulmod(x, x, q), x, q), 3, q);
    }
}
