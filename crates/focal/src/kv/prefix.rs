//! Hashes that identify a token prefix for prefix sharing.

use std::hash::{Hash, Hasher};

/// Hash of a token prefix that ends at a block boundary: two independent 64-bit SipHash
/// values, so an accidental match of two different prefixes has a chance near 2^-128.
pub(crate) type PrefixHash = (u64, u64);

/// Returns the hash of the prefix made of the prefix hashed as `parent` (none for the
/// first block) followed by the tokens of one full block.
pub(crate) fn chain_hash(parent: Option<&PrefixHash>, block_tokens: &[u32]) -> PrefixHash {
    let hash_with = |salt: u8| {
        // DefaultHasher::new() uses fixed keys, so hashes agree across sequences and runs.
        let mut hasher = std::hash::DefaultHasher::new();
        salt.hash(&mut hasher);
        parent.hash(&mut hasher);
        block_tokens.hash(&mut hasher);
        hasher.finish()
    };
    (hash_with(0), hash_with(1))
}
