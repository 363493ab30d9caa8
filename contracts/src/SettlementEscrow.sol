// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {MessageHashUtils} from "@openzeppelin/contracts/utils/cryptography/MessageHashUtils.sol";

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
contract SettlementEscrow is EIP712 {
    using SafeERC20 for IERC20;

    /// A voucher as submitted: the signed struct plus its 65-byte r||s||v signature.
    struct SignedVoucher {
        address requester;
        address provider;
        uint256 cumulative;
        bytes signature;
    }

    /// A pending unlock or unstake: how much, and the earliest time it may be taken.
    struct Pending {
        uint256 amount;
        uint64 due;
    }

    bytes32 private constant VOUCHER_TYPEHASH =
        keccak256("Voucher(address requester,address provider,uint256 cumulative)");

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

    error ZeroAmount();
    error InsufficientDeposit(uint256 available, uint256 wanted);
    error NoUnlockPending();
    error UnlockNotDue(uint64 unlockAt);
    error NothingToWithdraw();
    error InsufficientStake(uint256 staked, uint256 wanted);
    error NoUnstakePending();
    error UnstakeNotDue(uint64 at);

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
