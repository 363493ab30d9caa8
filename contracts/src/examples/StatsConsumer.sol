// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";

import {ComputeRequests, IComputeCallback} from "../ComputeRequests.sol";

/// @title Example DApp: verified statistics over a private dataset
/// @notice A DApp that knows the Poseidon commitment of a dataset it cannot
/// see asks the mesh, through ComputeRequests, for the shipped `private_stats`
/// circuit's statistics over it: how many values lie above a threshold, their
/// sum and the floor of their mean. The proof says those numbers are right for
/// the committed data; the DApp learns them and nothing else. Public signals
/// (circuits/src/private_stats.json): sum, count_above, mean_floor (outputs),
/// threshold, commitment (inputs), the job binding. docs/ledger.md,
/// "ComputeRequests".
contract StatsConsumer is IComputeCallback {
    using SafeERC20 for IERC20;

    struct Stats {
        uint256 sum;
        uint256 countAbove;
        uint256 meanFloor;
        uint256 threshold;
        bool answered;
    }

    uint8 public constant N_OUTPUTS = 3;

    ComputeRequests public immutable requests;
    IERC20 public immutable token;
    bytes32 public immutable circuitId;
    uint256 public immutable commitment;
    /// Where providers find the (encrypted) dataset.
    string public datasetCid;

    /// Requests this contract made (only their results are taken).
    mapping(uint256 requestId => bool) public asked;
    mapping(uint256 requestId => Stats) public results;
    uint256 public latestAnswered;

    event Asked(uint256 indexed requestId, uint256 threshold, uint256 payment);
    event StatsReceived(uint256 indexed requestId, uint256 sum, uint256 countAbove, uint256 meanFloor);

    error NotComputeRequests(address caller);
    error NotOurRequest(uint256 requestId);

    constructor(
        ComputeRequests requests_,
        bytes32 circuitId_,
        uint256 commitment_,
        string memory datasetCid_
    ) {
        requests = requests_;
        token = requests_.token();
        circuitId = circuitId_;
        commitment = commitment_;
        datasetCid = datasetCid_;
    }

    /// @notice Asks for the statistics above `threshold`, paid by the caller
    /// (approve this contract for `payment` first). A refund after the
    /// deadline returns the payment to this contract, not to the caller.
    function ask(uint256 threshold, uint256 payment, uint64 deadline) external returns (uint256 requestId) {
        token.safeTransferFrom(msg.sender, address(this), payment);
        token.forceApprove(address(requests), payment);
        uint256[] memory inputs = new uint256[](2);
        inputs[0] = threshold;
        inputs[1] = commitment;
        requestId = requests.request(circuitId, inputs, N_OUTPUTS, datasetCid, payment, deadline, address(this));
        asked[requestId] = true;
        emit Asked(requestId, threshold, payment);
    }

    /// @notice Called by ComputeRequests with a verified result: stores it.
    function onComputeResult(uint256 requestId, uint256[] calldata publicSignals) external {
        if (msg.sender != address(requests)) revert NotComputeRequests(msg.sender);
        if (!asked[requestId]) revert NotOurRequest(requestId);
        // ComputeRequests checked the layout: 3 outputs, our 2 inputs, the binding.
        // (Its circuit id and inputs are ours: the DApp made the request.)
        results[requestId] = Stats({
            sum: publicSignals[0],
            countAbove: publicSignals[1],
            meanFloor: publicSignals[2],
            threshold: publicSignals[3],
            answered: true
        });
        latestAnswered = requestId;
        emit StatsReceived(requestId, publicSignals[0], publicSignals[1], publicSignals[2]);
    }
}
