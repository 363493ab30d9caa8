// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";

import {SNARK_SCALAR_FIELD, jobBinding} from "./Groth16Verifier.sol";

/// @notice What ComputeRequests calls back with a verified result.
interface IComputeCallback {
    /// `publicSignals`: the outputs, then the request's inputs, then the binding.
    function onComputeResult(uint256 requestId, uint256[] calldata publicSignals) external;
}

/// @notice The verifier ComputeRequests checks proofs with (SettlementEscrow is one).
interface IZkVerifier {
    function verifyProof(bytes32 circuitId, uint256[8] calldata proof, uint256[] calldata publicSignals)
        external
        view
        returns (bool);

    function circuitInfo(bytes32 circuitId) external view returns (bool registered, uint256 nPublic);
}

/// @title zk jobs requested on chain, paid on a verified proof
/// @notice docs/ledger.md is the specification. A contract (a DApp's back end)
/// asks for a zk job: a registered circuit, its public inputs, how many
/// outputs it expects, where the private inputs are (a CID), a payment in MASK
/// held here, a deadline and a contract to call back. A maskd gateway places
/// the job on the mesh and anyone submits the provider's proof with
/// `fulfill`: the public signals must be the outputs, then exactly the
/// requested inputs, then the binding of (jobIdOf(requestId), this contract,
/// provider). The binding names the provider, so a front-runner copying the
/// proof can only pay the same provider. The payment goes to the provider
/// before the callback, which gets a fixed gas allowance and cannot block it.
/// Unfulfilled by the deadline, the payment goes back with `refund`.
contract ComputeRequests {
    using SafeERC20 for IERC20;

    enum Status {
        None,
        Open,
        Fulfilled,
        Refunded
    }

    struct Request {
        address requester;
        uint64 deadline;
        uint8 nOutputs;
        uint8 nInputs;
        Status status;
        address callback;
        uint256 payment;
        bytes32 circuitId;
        bytes32 inputsHash; // keccak256(abi.encodePacked(inputs))
    }

    /// Gas the callback gets; `fulfill` refuses to run with less left to give it.
    uint256 public constant CALLBACK_GAS = 500_000;
    /// Bytes of `inputCid` at most.
    uint256 public constant MAX_CID_BYTES = 256;

    IERC20 public immutable token;
    IZkVerifier public immutable verifier;
    /// The number of requests made; ids run from 1.
    uint256 public requestCount;
    mapping(uint256 requestId => Request) public requests;

    event Requested(
        uint256 indexed requestId,
        address indexed requester,
        bytes32 indexed circuitId,
        uint256[] inputs,
        uint8 nOutputs,
        string inputCid,
        uint256 payment,
        uint64 deadline,
        address callback
    );
    event Fulfilled(uint256 indexed requestId, address indexed provider, uint256[] outputs);
    event CallbackFailed(uint256 indexed requestId, address callback);
    event Refunded(uint256 indexed requestId, address indexed requester, uint256 amount);

    error ZeroPayment();
    error DeadlinePassed(uint64 deadline);
    error UnknownCircuit(bytes32 circuitId);
    error PublicCountMismatch(uint256 expected, uint256 got);
    error InputOutOfField(uint256 index);
    error CidTooLong(uint256 length);
    error TooManyInputs(uint256 count);
    error UnknownRequest(uint256 requestId);
    error AlreadyFulfilled(uint256 requestId);
    error AlreadyRefunded(uint256 requestId);
    error RequestExpired(uint256 requestId, uint64 deadline);
    error NotExpired(uint256 requestId, uint64 deadline);
    error ZeroProvider();
    error InputsMismatch(uint256 requestId);
    error BindingMismatch(uint256 expected, uint256 got);
    error InvalidProof();
    error InsufficientGasForCallback();

    constructor(IERC20 token_, IZkVerifier verifier_) {
        token = token_;
        verifier = verifier_;
    }

    /// @notice Asks for a zk job and escrows `payment` from the caller (approve
    /// this contract first). The circuit must be registered with
    /// nOutputs + inputs.length + 1 public signals.
    function request(
        bytes32 circuitId,
        uint256[] calldata inputs,
        uint8 nOutputs,
        string calldata inputCid,
        uint256 payment,
        uint64 deadline,
        address callback
    ) external returns (uint256 requestId) {
        if (payment == 0) revert ZeroPayment();
        if (deadline <= block.timestamp) revert DeadlinePassed(deadline);
        if (bytes(inputCid).length > MAX_CID_BYTES) revert CidTooLong(bytes(inputCid).length);
        if (inputs.length > type(uint8).max) revert TooManyInputs(inputs.length);
        (bool registered, uint256 nPublic) = verifier.circuitInfo(circuitId);
        if (!registered) revert UnknownCircuit(circuitId);
        uint256 wanted = uint256(nOutputs) + inputs.length + 1;
        if (nPublic != wanted) revert PublicCountMismatch(nPublic, wanted);
        for (uint256 i; i < inputs.length; ++i) {
            if (inputs[i] >= SNARK_SCALAR_FIELD) revert InputOutOfField(i);
        }

        requestId = ++requestCount;
        requests[requestId] = Request({
            requester: msg.sender,
            deadline: deadline,
            nOutputs: nOutputs,
            nInputs: uint8(inputs.length), // checked above
            status: Status.Open,
            callback: callback,
            payment: payment,
            circuitId: circuitId,
            inputsHash: keccak256(abi.encodePacked(inputs))
        });
        token.safeTransferFrom(msg.sender, address(this), payment);
        emit Requested(requestId, msg.sender, circuitId, inputs, nOutputs, inputCid, payment, deadline, callback);
    }

    /// @notice The job id a request is placed on the mesh with: bound into its proof.
    function jobIdOf(uint256 requestId) public view returns (bytes32) {
        return keccak256(abi.encode(block.chainid, address(this), requestId));
    }

    /// @notice Anyone submits `provider`'s proof before the deadline: it is
    /// checked, `provider` is paid, and the requester's callback is called.
    function fulfill(uint256 requestId, address provider, uint256[8] calldata proof, uint256[] calldata publicSignals)
        external
    {
        Request storage r = _open(requestId);
        if (block.timestamp > r.deadline) revert RequestExpired(requestId, r.deadline);
        if (provider == address(0)) revert ZeroProvider();
        uint256 nOutputs = r.nOutputs;
        uint256 expected = nOutputs + r.nInputs + 1;
        if (publicSignals.length != expected) revert PublicCountMismatch(expected, publicSignals.length);
        if (keccak256(abi.encodePacked(publicSignals[nOutputs:expected - 1])) != r.inputsHash) {
            revert InputsMismatch(requestId);
        }
        uint256 binding = jobBinding(jobIdOf(requestId), address(this), provider);
        if (publicSignals[expected - 1] != binding) revert BindingMismatch(binding, publicSignals[expected - 1]);
        if (!verifier.verifyProof(r.circuitId, proof, publicSignals)) revert InvalidProof();

        r.status = Status.Fulfilled;
        token.safeTransfer(provider, r.payment);
        emit Fulfilled(requestId, provider, publicSignals[:nOutputs]);
        _callBack(requestId, r.callback, publicSignals);
    }

    /// @notice After the deadline, an unfulfilled request's payment goes back to
    /// its requester (anyone may call it).
    function refund(uint256 requestId) external {
        Request storage r = _open(requestId);
        if (block.timestamp <= r.deadline) revert NotExpired(requestId, r.deadline);
        r.status = Status.Refunded;
        emit Refunded(requestId, r.requester, r.payment);
        token.safeTransfer(r.requester, r.payment);
    }

    function _open(uint256 requestId) private view returns (Request storage r) {
        r = requests[requestId];
        Status status = r.status;
        if (status == Status.None) revert UnknownRequest(requestId);
        if (status == Status.Fulfilled) revert AlreadyFulfilled(requestId);
        if (status == Status.Refunded) revert AlreadyRefunded(requestId);
    }

    /// Calls `callback` with CALLBACK_GAS exactly, copying no return data, so a
    /// reverting, gas-eating or return-bombing callback costs the caller at
    /// most that and the payment stands. No callback: the zero address.
    function _callBack(uint256 requestId, address callback, uint256[] calldata publicSignals) private {
        if (callback == address(0)) return;
        if (callback.code.length == 0) {
            emit CallbackFailed(requestId, callback);
            return;
        }
        bytes memory data = abi.encodeCall(IComputeCallback.onComputeResult, (requestId, publicSignals));
        // With less gas left the callback would get less than CALLBACK_GAS (the
        // 63/64 rule) and a fulfiller could make it fail on purpose.
        if (gasleft() < CALLBACK_GAS + CALLBACK_GAS / 63 + 5000) revert InsufficientGasForCallback();
        bool ok;
        assembly ("memory-safe") {
            ok := call(CALLBACK_GAS, callback, 0, add(data, 32), mload(data), 0, 0)
        }
        if (!ok) emit CallbackFailed(requestId, callback);
    }
}
