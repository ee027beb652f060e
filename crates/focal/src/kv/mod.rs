//! Paged KV cache: K and V rows of every sequence stored in fixed-size blocks of a GPU
//! pool, with copy-on-write forks, prefix sharing and sliding-window eviction, and the
//! paged attention kernels that read through the block tables.
//!
//! Per generated token, a model calls, for each sequence:
//!
//! 1. [`KvCache::reserve`] (or [`KvCache::reserve_tokens`]) once, to set aside slots for
//!    the new tokens in every layer. It fails with [`crate::Error::PoolExhausted`] and
//!    changes nothing when the pool is full.
//! 2. Per layer, [`KvCache::write_into`] with the layer's new K and V rows, then
//!    [`KvCache::attention_into`] for the layer's queries.
//!
//! The CPU-side bookkeeping lives in [`BlockAllocator`], which has no GPU dependency.

mod allocator;
mod attention;
mod cache;
mod prefix;

pub use allocator::{BlockAllocator, BlockCopy, Reservation, SequenceId, Window};
pub use attention::{paged_tiles, PagedAttentionOptions, PagedTiles};
pub use cache::{KvBudget, KvCache, KvCacheConfig, KvPart, KvStats};

/// Default number of tokens per block.
pub const DEFAULT_BLOCK_SIZE: usize = 16;
