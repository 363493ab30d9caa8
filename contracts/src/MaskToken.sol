// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";

/// @title MASK, the token jobs are paid in
/// @notice A plain OpenZeppelin ERC-20 with EIP-2612 permits (so a requester
/// can approve and deposit into the escrow in one transaction), 18 decimals.
/// The whole supply is minted once to `treasury`; on a devnet the treasury's
/// key is the faucet. No owner, no further minting.
contract MaskToken is ERC20, ERC20Permit {
    constructor(address treasury, uint256 supply) ERC20("MASK", "MASK") ERC20Permit("MASK") {
        _mint(treasury, supply);
    }
}
