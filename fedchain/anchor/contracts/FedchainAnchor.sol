// SPDX-License-Identifier: Apache-2.0
// fedchain's anchor: digests of a federation's final blocks, stamped with the EVM block that saw them.
pragma solidity 0.8.28;

contract FedchainAnchor {
    struct Stamp {
        uint64 blockNumber;
        uint64 timestamp;
    }

    mapping(bytes32 => Stamp) private stamps;

    /// `federation` is the ledger's genesis hash and `height` the anchored block's height, so a
    /// verifier can list one sender's anchors of one federation; `digest` binds the statement.
    event Anchored(
        address indexed sender,
        bytes32 indexed federation,
        uint64 height,
        bytes32 digest,
        uint64 blockNumber,
        uint64 timestamp
    );

    /// Record `digest` with the current block's number and time (the first record of a digest
    /// stands) and log who anchored which height of which federation.
    function anchor(bytes32 federation, uint64 height, bytes32 digest) external {
        if (stamps[digest].blockNumber == 0) {
            stamps[digest] = Stamp(uint64(block.number), uint64(block.timestamp));
        }
        emit Anchored(msg.sender, federation, height, digest, uint64(block.number), uint64(block.timestamp));
    }

    /// The EVM block number and time at which `digest` was first anchored (0, 0 if never).
    function stampOf(bytes32 digest) external view returns (uint64 blockNumber, uint64 timestamp) {
        Stamp memory s = stamps[digest];
        return (s.blockNumber, s.timestamp);
    }
}
