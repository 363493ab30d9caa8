// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {MessageHashUtils} from "@openzeppelin/contracts/utils/cryptography/MessageHashUtils.sol";

import {Groth16Verifier, jobBinding} from "./Groth16Verifier.sol";

/// @title Requester deposits, cumulative vouchers, provider earnings and stake
/// @notice docs/ledger.md is the specification. A requester deposits tokens;
/// for each requester->provider channel it signs (off chain, EIP-712) the
/// channel's cumulative total owed. Anyone may submit a batch of such vouchers:
/// each valid one moves `cumulative - settled` from the requester's deposit to
/// the provider's earnings, so the latest voucher covers every job before it
/// and an old one pays nothing. A bad voucher is skipped with a reason, never a
/// revert, so one hostile requester cannot make a provider's whole batch fail.
/// A requester takes a deposit back only after `unlockDelay`, which leaves its
/// providers time to settle what it owes them first.
///
/// zk jobs (an agreement naming a circuit): a provider whose requester refuses
/// to pay submits the requester-signed agreement and a proof bound to the job
/// (`claimWithProof`) and is paid from the deposit; a provider that signed a
/// result whose proof does not verify loses its stake to whoever submits that
/// evidence (`slash`). The Groth16 verifier is inherited, so the escrow is
/// also the circuit registry ComputeRequests verifies against.
contract SettlementEscrow is EIP712, Groth16Verifier {
    using SafeERC20 for IERC20;

    /// A voucher as submitted: the signed struct plus its 65-byte r||s||v signature.
    struct SignedVoucher {
        address requester;
        address provider;
        uint256 cumulative;
        bytes signature;
    }

    /// The agreement both parties sign (ledger/agreement.py AGREEMENT_TYPES, same order).
    struct Agreement {
        bytes32 jobId;
        string requesterPeer;
        address requester;
        string providerPeer;
        address provider;
        uint256 priceTotal;
        uint32 cpu;
        uint64 memoryMb;
        uint32 gpu;
        uint64 maxSeconds;
        uint64 maxFuel;
        uint64 deadline;
        string specCid;
        uint32 heartbeatIntervalMs;
        bytes32 circuitId;
    }

    /// Whose zk result: the ZkResult fields a provider signs besides the two hashes.
    struct ZkJob {
        bytes32 jobId;
        address requester;
        address provider;
        bytes32 circuitId;
    }

    /// A pending unlock or unstake: how much, and the earliest time it may be taken.
    struct Pending {
        uint256 amount;
        uint64 due;
    }

    bytes32 private constant VOUCHER_TYPEHASH =
        keccak256("Voucher(address requester,address provider,uint256 cumulative)");
    bytes32 private constant AGREEMENT_TYPEHASH = keccak256(
        "Agreement(bytes32 jobId,string requesterPeer,address requester,string providerPeer,address provider,"
        "uint256 priceTotal,uint32 cpu,uint64 memoryMb,uint32 gpu,uint64 maxSeconds,uint64 maxFuel,"
        "uint64 deadline,string specCid,uint32 heartbeatIntervalMs,bytes32 circuitId)"
    );
    bytes32 private constant ZK_RESULT_TYPEHASH = keccak256(
        "ZkResult(bytes32 jobId,address requester,address provider,bytes32 circuitId,bytes32 publicHash,"
        "bytes32 proofHash)"
    );

    /// How long after an agreement's deadline its provider may still claim with a proof.
    uint256 public constant CLAIM_WINDOW = 30 days;
    /// Where the burned half of a slashed stake goes (nobody holds its key).
    address public constant BURN_ADDRESS = 0x000000000000000000000000000000000000dEaD;

    // Skip reasons in VoucherSkipped (ledger/contracts.py mirrors them). Checked
    // in this order; a voucher gets the first that applies.
    uint8 private constant SKIP_BAD_SIGNATURE = 1;
    uint8 private constant SKIP_NOT_INCREASE = 2;
    uint8 private constant SKIP_INSUFFICIENT_DEPOSIT = 3;
    uint8 private constant SKIP_ZERO_ADDRESS = 4;

    IERC20 public immutable token;
    uint64 public immutable unlockDelay;
    uint64 public immutable unstakeDelay;

    mapping(address requester => uint256) public deposits;
    mapping(address requester => mapping(address provider => uint256)) public settled;
    mapping(address provider => uint256) public earnings;
    mapping(address provider => uint256) public stakes;
    mapping(address requester => Pending) private _unlocking;
    mapping(address provider => Pending) private _unstaking;
    // keccak256(abi.encode(jobId, provider)): a job placed again elsewhere keeps its id.
    mapping(bytes32 jobProvider => bool) private _claimed;
    mapping(bytes32 jobProvider => bool) private _slashed;

    // Names here are the ABI docs/ledger.md fixes. solc 0.8.37 warns that `at`
    // will become a keyword (0.9); build.js accepts that one warning for them.
    event Deposited(address indexed requester, uint256 amount);
    event UnlockRequested(address indexed requester, uint256 amount, uint64 unlockAt);
    event UnlockCancelled(address indexed requester);
    event Reclaimed(address indexed requester, uint256 amount);
    event VoucherSettled(address indexed requester, address indexed provider, uint256 cumulative, uint256 paid);
    event VoucherSkipped(address indexed requester, address indexed provider, uint256 cumulative, uint8 reason);
    event Withdrawn(address indexed provider, uint256 amount);
    event Staked(address indexed provider, uint256 amount);
    event UnstakeRequested(address indexed provider, uint256 amount, uint64 at);
    event Unstaked(address indexed provider, uint256 amount);
    event ProofClaimed(bytes32 indexed jobId, address indexed requester, address indexed provider, uint256 amount);
    event Slashed(address indexed provider, bytes32 indexed jobId, uint256 amount, address reporter);

    error ZeroAmount();
    error InsufficientDeposit(uint256 available, uint256 wanted);
    error NoUnlockPending();
    error UnlockNotDue(uint64 unlockAt);
    error NothingToWithdraw();
    error InsufficientStake(uint256 staked, uint256 wanted);
    error NoUnstakePending();
    error UnstakeNotDue(uint64 at);
    error NotZkJob();
    error BadAgreementSignature();
    error InvalidProof();
    error BindingMismatch(uint256 expected, uint256 got);
    error AlreadyClaimed(bytes32 jobId, address provider);
    error ClaimWindowClosed(uint256 closedAt);
    error BadResultSignature();
    error UnknownCircuit(bytes32 circuitId);
    error NotSlashable();
    error AlreadySlashed(bytes32 jobId, address provider);
    error NothingToSlash(address provider);

    constructor(IERC20 token_, uint64 unlockDelay_, uint64 unstakeDelay_) EIP712("maskd", "1") {
        token = token_;
        unlockDelay = unlockDelay_;
        unstakeDelay = unstakeDelay_;
    }

    // ------------------------------------------------------------------ deposits

    /// @notice Moves `amount` of the caller's tokens (approved beforehand) into its deposit.
    function deposit(uint256 amount) external {
        _deposit(amount);
    }

    /// @notice EIP-2612 permit and deposit in one transaction.
    /// @dev Anyone who saw the permit in the mempool can submit it first; the
    /// allowance is then already set, so a failing permit is ignored and
    /// `transferFrom` decides (it reverts when the allowance does not cover `amount`).
    function depositWithPermit(uint256 amount, uint256 deadline, uint8 v, bytes32 r, bytes32 s)
        external
    {
        if (amount == 0) revert ZeroAmount();
        try IERC20Permit(address(token)).permit(msg.sender, address(this), amount, deadline, v, r, s) {} catch {}
        _deposit(amount);
    }

    /// @notice Starts taking back `amount` of the caller's deposit; replaces any earlier request.
    /// The deposit stays settleable until `reclaim`, so providers can still be paid.
    function requestUnlock(uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        uint256 deposited = deposits[msg.sender];
        if (amount > deposited) revert InsufficientDeposit(deposited, amount);
        uint64 due = _afterDelay(unlockDelay);
        _unlocking[msg.sender] = Pending(amount, due);
        emit UnlockRequested(msg.sender, amount, due);
    }

    /// @notice Drops the caller's pending unlock request.
    function cancelUnlock() external {
        if (_unlocking[msg.sender].amount == 0) revert NoUnlockPending();
        delete _unlocking[msg.sender];
        emit UnlockCancelled(msg.sender);
    }

    /// @notice Once the unlock is due, pays back what is left of it (settlements
    /// since the request may have used part of the deposit) and clears the request.
    function reclaim() external {
        Pending memory pending = _unlocking[msg.sender];
        if (pending.amount == 0) revert NoUnlockPending();
        if (block.timestamp < pending.due) revert UnlockNotDue(pending.due);
        uint256 deposited = deposits[msg.sender];
        uint256 amount = pending.amount < deposited ? pending.amount : deposited;
        delete _unlocking[msg.sender];
        deposits[msg.sender] = deposited - amount;
        emit Reclaimed(msg.sender, amount);
        if (amount != 0) token.safeTransfer(msg.sender, amount);
    }

    // ---------------------------------------------------------------- settlement

    /// @notice Pays every valid voucher into its provider's earnings and skips
    /// the others with `VoucherSkipped`. Anyone may call it; it never reverts
    /// because of a voucher's content.
    /// @dev Per paid voucher the only storage writes are `settled` and
    /// `deposits`; earnings are summed over each run of vouchers for the same
    /// provider and written once per run (a provider settling its own channels
    /// writes its earnings once per batch).
    function settleBatch(SignedVoucher[] calldata vouchers) external {
        bytes32 separator = _domainSeparatorV4();
        address runProvider;
        uint256 runPaid;
        for (uint256 i; i < vouchers.length; ++i) {
            SignedVoucher calldata voucher = vouchers[i];
            (uint8 reason, uint256 paid) = _settleOne(separator, voucher);
            if (reason != 0) {
                emit VoucherSkipped(voucher.requester, voucher.provider, voucher.cumulative, reason);
                continue;
            }
            if (voucher.provider != runProvider) {
                if (runPaid != 0) earnings[runProvider] += runPaid;
                runProvider = voucher.provider;
                runPaid = 0;
            }
            runPaid += paid;
            emit VoucherSettled(voucher.requester, voucher.provider, voucher.cumulative, paid);
        }
        if (runPaid != 0) earnings[runProvider] += runPaid;
    }

    /// @notice Sends the caller's earnings to its wallet.
    function withdraw() external {
        uint256 amount = earnings[msg.sender];
        if (amount == 0) revert NothingToWithdraw();
        earnings[msg.sender] = 0;
        emit Withdrawn(msg.sender, amount);
        token.safeTransfer(msg.sender, amount);
    }

    // --------------------------------------------------------------------- stake

    /// @notice Adds `amount` of the caller's tokens (approved beforehand) to its stake.
    function stake(uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        token.safeTransferFrom(msg.sender, address(this), amount);
        stakes[msg.sender] += amount;
        emit Staked(msg.sender, amount);
    }

    /// @notice Starts taking back `amount` of the caller's stake; replaces any
    /// earlier request. The stake stays in `stakes` (slashable) until `withdrawStake`.
    function requestUnstake(uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        uint256 staked = stakes[msg.sender];
        if (amount > staked) revert InsufficientStake(staked, amount);
        uint64 due = _afterDelay(unstakeDelay);
        _unstaking[msg.sender] = Pending(amount, due);
        emit UnstakeRequested(msg.sender, amount, due);
    }

    /// @notice Once the unstake is due, pays back what is left of it and clears the request.
    function withdrawStake() external {
        Pending memory pending = _unstaking[msg.sender];
        if (pending.amount == 0) revert NoUnstakePending();
        if (block.timestamp < pending.due) revert UnstakeNotDue(pending.due);
        uint256 staked = stakes[msg.sender];
        uint256 amount = pending.amount < staked ? pending.amount : staked;
        delete _unstaking[msg.sender];
        stakes[msg.sender] = staked - amount;
        emit Unstaked(msg.sender, amount);
        if (amount != 0) token.safeTransfer(msg.sender, amount);
    }

    // ------------------------------------------------------------ zk disputes

    /// @notice Pays a zk job's provider from the requester's deposit when the
    /// requester did not: the requester signed `a` (which names a circuit) and
    /// `proof` verifies for it with the job's binding as the last public signal.
    /// Anyone may submit it; the price goes to `a.provider`'s earnings and is
    /// added to the channel's `settled`, so a voucher that already covers the
    /// job pays only the rest. Once per (job, provider), until CLAIM_WINDOW
    /// after the agreement's deadline. A failing claim reverts and moves nothing.
    function claimWithProof(
        Agreement calldata a,
        bytes calldata requesterSignature,
        uint256[8] calldata proof,
        uint256[] calldata publicSignals
    ) external {
        if (a.circuitId == bytes32(0)) revert NotZkJob();
        bytes32 key = keccak256(abi.encode(a.jobId, a.provider));
        if (_claimed[key]) revert AlreadyClaimed(a.jobId, a.provider);
        uint256 closedAt = uint256(a.deadline) + CLAIM_WINDOW;
        if (block.timestamp > closedAt) revert ClaimWindowClosed(closedAt);
        bytes32 digest = _hashTypedDataV4(_agreementHash(a));
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecoverCalldata(digest, requesterSignature);
        if (err != ECDSA.RecoverError.NoError || signer != a.requester || signer == address(0)) {
            revert BadAgreementSignature();
        }
        _checkBinding(a.jobId, a.requester, a.provider, publicSignals);
        if (!_verifyProof(a.circuitId, proof, publicSignals)) revert InvalidProof();

        uint256 price = a.priceTotal;
        uint256 deposited = deposits[a.requester];
        if (deposited < price) revert InsufficientDeposit(deposited, price);
        _claimed[key] = true;
        unchecked {
            deposits[a.requester] = deposited - price; // deposited >= price
        }
        settled[a.requester][a.provider] += price;
        earnings[a.provider] += price;
        emit ProofClaimed(a.jobId, a.requester, a.provider, price);
    }

    /// @notice Slashes `job.provider`'s whole stake on evidence that it signed a
    /// wrong zk result: its EIP-712 ZkResult signature over this job, circuit,
    /// public signals and proof, where the proof does not verify for them or
    /// the last signal is not the job's binding. Half goes to the caller, half
    /// to BURN_ADDRESS. Once per (job, provider). The circuit must be
    /// registered (anyone can register it) so "does not verify" is decided.
    function slash(
        ZkJob calldata job,
        bytes calldata providerSignature,
        uint256[8] calldata proof,
        uint256[] calldata publicSignals
    ) external {
        address provider = job.provider;
        bytes32 key = keccak256(abi.encode(job.jobId, provider));
        if (_slashed[key]) revert AlreadySlashed(job.jobId, provider);
        uint256 staked = stakes[provider];
        if (staked == 0) revert NothingToSlash(provider);
        bytes32 digest = _zkResultDigest(job, proof, publicSignals);
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecoverCalldata(digest, providerSignature);
        if (err != ECDSA.RecoverError.NoError || signer != provider) revert BadResultSignature();
        (bool registered,) = circuitInfo(job.circuitId);
        if (!registered) revert UnknownCircuit(job.circuitId);
        if (_resultHolds(job, proof, publicSignals)) revert NotSlashable();

        _slashed[key] = true;
        stakes[provider] = 0;
        uint256 bounty = staked / 2;
        emit Slashed(provider, job.jobId, staked, msg.sender);
        if (bounty != 0) token.safeTransfer(msg.sender, bounty);
        token.safeTransfer(BURN_ADDRESS, staked - bounty);
    }

    /// @notice Whether `provider` was paid for `jobId` by claimWithProof.
    function claimed(bytes32 jobId, address provider) external view returns (bool) {
        return _claimed[keccak256(abi.encode(jobId, provider))];
    }

    /// @notice Whether `provider` was slashed for `jobId`.
    function slashed(bytes32 jobId, address provider) external view returns (bool) {
        return _slashed[keccak256(abi.encode(jobId, provider))];
    }

    /// @notice The EIP-712 digest a requester signs for agreement `a`.
    function agreementDigest(Agreement calldata a) external view returns (bytes32) {
        return _hashTypedDataV4(_agreementHash(a));
    }

    /// @notice The EIP-712 digest a provider signs for a zk result.
    function zkResultDigest(ZkJob calldata job, uint256[8] calldata proof, uint256[] calldata publicSignals)
        external
        view
        returns (bytes32)
    {
        return _zkResultDigest(job, proof, publicSignals);
    }

    // --------------------------------------------------------------------- views

    /// @notice The requester's pending unlock (zeros when there is none).
    function unlocking(address requester) external view returns (uint256 amount, uint64 unlockAt) {
        Pending storage pending = _unlocking[requester];
        return (pending.amount, pending.due);
    }

    /// @notice What settlements can still draw on: the deposit minus the amount being unlocked.
    function available(address requester) external view returns (uint256) {
        uint256 deposited = deposits[requester];
        uint256 leaving = _unlocking[requester].amount;
        return leaving >= deposited ? 0 : deposited - leaving;
    }

    /// @notice The provider's pending unstake (zeros when there is none).
    function unstaking(address provider) external view returns (uint256 amount, uint64 at) {
        Pending storage pending = _unstaking[provider];
        return (pending.amount, pending.due);
    }

    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    /// @notice The EIP-712 digest a requester signs for this channel total.
    function voucherDigest(address requester, address provider, uint256 cumulative)
        external
        view
        returns (bytes32)
    {
        return MessageHashUtils.toTypedDataHash(_domainSeparatorV4(), _voucherHash(requester, provider, cumulative));
    }

    // ------------------------------------------------------------------ internal

    function _checkBinding(bytes32 jobId, address requester, address provider, uint256[] calldata publicSignals)
        private
        pure
    {
        uint256 expected = jobBinding(jobId, requester, provider);
        uint256 n = publicSignals.length;
        uint256 got = n == 0 ? 0 : publicSignals[n - 1];
        if (n == 0 || got != expected) revert BindingMismatch(expected, got);
    }

    /// True iff the last public signal is the job's binding and the proof verifies.
    function _resultHolds(ZkJob calldata job, uint256[8] calldata proof, uint256[] calldata publicSignals)
        private
        view
        returns (bool)
    {
        uint256 n = publicSignals.length;
        return n != 0 && publicSignals[n - 1] == jobBinding(job.jobId, job.requester, job.provider)
            && _verifyProof(job.circuitId, proof, publicSignals);
    }

    /// EIP-712 hashStruct(Agreement): strings hashed, everything else one word.
    /// Two abi.encode halves concatenated equal one (all words are static).
    function _agreementHash(Agreement calldata a) private pure returns (bytes32) {
        return keccak256(
            bytes.concat(
                abi.encode(
                    AGREEMENT_TYPEHASH,
                    a.jobId,
                    keccak256(bytes(a.requesterPeer)),
                    a.requester,
                    keccak256(bytes(a.providerPeer)),
                    a.provider,
                    a.priceTotal,
                    a.cpu
                ),
                abi.encode(
                    a.memoryMb,
                    a.gpu,
                    a.maxSeconds,
                    a.maxFuel,
                    a.deadline,
                    keccak256(bytes(a.specCid)),
                    a.heartbeatIntervalMs,
                    a.circuitId
                )
            )
        );
    }

    /// EIP-712 digest of ZkResult(jobId, requester, provider, circuitId,
    /// keccak256(abi.encodePacked(publicSignals)), keccak256(abi.encodePacked(proof))).
    function _zkResultDigest(ZkJob calldata job, uint256[8] calldata proof, uint256[] calldata publicSignals)
        private
        view
        returns (bytes32)
    {
        return _hashTypedDataV4(
            keccak256(
                abi.encode(
                    ZK_RESULT_TYPEHASH,
                    job.jobId,
                    job.requester,
                    job.provider,
                    job.circuitId,
                    keccak256(abi.encodePacked(publicSignals)),
                    keccak256(abi.encodePacked(proof))
                )
            )
        );
    }

    function _deposit(uint256 amount) private {
        if (amount == 0) revert ZeroAmount();
        token.safeTransferFrom(msg.sender, address(this), amount);
        deposits[msg.sender] += amount;
        emit Deposited(msg.sender, amount);
    }

    /// Checks one voucher (cheapest test first) and, if it pays, moves the
    /// increase out of the deposit. Returns a skip reason, or 0 and the amount paid.
    function _settleOne(bytes32 separator, SignedVoucher calldata voucher)
        private
        returns (uint8 reason, uint256 paid)
    {
        address requester = voucher.requester;
        address provider = voucher.provider;
        uint256 cumulative = voucher.cumulative;
        if (requester == address(0) || provider == address(0)) return (SKIP_ZERO_ADDRESS, 0);

        bytes32 digest = MessageHashUtils.toTypedDataHash(separator, _voucherHash(requester, provider, cumulative));
        // tryRecover: a malformed signature (length, high s, v not 27/28) is a skip, not a revert.
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecoverCalldata(digest, voucher.signature);
        if (err != ECDSA.RecoverError.NoError || signer != requester) return (SKIP_BAD_SIGNATURE, 0);

        uint256 before = settled[requester][provider];
        if (cumulative <= before) return (SKIP_NOT_INCREASE, 0);
        uint256 increase;
        unchecked {
            increase = cumulative - before; // cumulative > before
        }
        uint256 deposited = deposits[requester];
        // Checked before any write: a voucher larger than the deposit stays valid for later.
        if (deposited < increase) return (SKIP_INSUFFICIENT_DEPOSIT, 0);
        settled[requester][provider] = cumulative;
        unchecked {
            deposits[requester] = deposited - increase; // deposited >= increase
        }
        return (0, increase);
    }

    function _voucherHash(address requester, address provider, uint256 cumulative) private pure returns (bytes32) {
        return keccak256(abi.encode(VOUCHER_TYPEHASH, requester, provider, cumulative));
    }

    /// now + delay, clamped so a huge configured delay cannot overflow uint64 and brick the call.
    function _afterDelay(uint64 delay) private view returns (uint64) {
        uint256 due = block.timestamp + delay;
        return due > type(uint64).max ? type(uint64).max : uint64(due);
    }
}
