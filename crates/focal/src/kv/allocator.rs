//! CPU-side bookkeeping of the paged KV cache: block tables, reference counts, the free
//! list, prefix sharing and sliding-window eviction.
//!
//! Nothing here touches the GPU, so the allocator can be tested exhaustively on its own.
//! Physical block `b` stores token slots `b * block_size .. (b + 1) * block_size` in every
//! layer's K and V buffer, so one table serves all layers.

use std::collections::{BTreeMap, HashMap};

use super::prefix::{chain_hash, PrefixHash};
use crate::{Error, Result};

/// Identifier of a sequence in a KV cache. Ids are never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SequenceId(pub u64);

impl std::fmt::Display for SequenceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Sliding-window attention with attention sinks.
///
/// A query at position `p` attends to key `j <= p` when `j < sinks` or `p - j < size`: the
/// first `sinks` tokens plus the last `size` tokens, the query's own token included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Number of leading tokens that stay visible to every later query.
    pub sinks: usize,
    /// Number of most recent tokens visible to a query, itself included (at least 1).
    pub size: usize,
}

impl Window {
    /// Returns whether a query at position `query` attends to the key at position `key`.
    pub fn is_visible(&self, query: usize, key: usize) -> bool {
        key <= query && (key < self.sinks || query - key < self.size)
    }
}

/// One block copy that a copy-on-write requires, in every layer's K and V buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockCopy {
    pub src: u32,
    pub dst: u32,
}

/// The slots that [`BlockAllocator::reserve`] set aside for new tokens.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reservation {
    /// Position of the first new token in the sequence.
    pub start: usize,
    /// Physical slot (`block * block_size + offset`) of each new token, in order.
    pub slots: Vec<u32>,
    /// Copies that must run before the new rows are written, because the sequence's last
    /// block was shared and is now private to it.
    pub copies: Vec<BlockCopy>,
    /// Number of blocks this reservation returned to the free list by window eviction.
    pub released: usize,
}

#[derive(Clone, Debug)]
struct PrefixChain {
    /// Hash of the token prefix ending with each full block, in logical order.
    hashes: Vec<PrefixHash>,
    /// Tokens of the last, partly filled block.
    partial: Vec<u32>,
}

#[derive(Clone, Debug)]
struct Sequence {
    /// Physical block of each logical block; `None` once the window evicted it.
    table: Vec<Option<u32>>,
    len: usize,
    window: Option<Window>,
    /// First logical block that window eviction has not yet considered.
    evict_cursor: usize,
    /// Token hashes, kept while every token of the sequence is known.
    prefix: Option<PrefixChain>,
}

/// Block tables, reference counts and the free list of a pool of `num_blocks` blocks.
#[derive(Clone, Debug)]
pub struct BlockAllocator {
    block_size: usize,
    refcounts: Vec<u32>,
    free: Vec<u32>,
    sequences: BTreeMap<SequenceId, Sequence>,
    next_id: u64,
    prefix_index: HashMap<PrefixHash, u32>,
    block_hashes: Vec<Option<PrefixHash>>,
}

impl BlockAllocator {
    /// Creates an allocator with every block free.
    ///
    /// Errors when `block_size` or `num_blocks` is 0, or when the slot count
    /// `num_blocks * block_size` does not fit the kernels' 32-bit slot indices.
    pub fn new(num_blocks: usize, block_size: usize) -> Result<Self> {
        if block_size == 0 {
            crate::bail_arg!(
                "block_size",
                block_size,
                "a block must hold at least one token"
            );
        }
        if num_blocks == 0 {
            crate::bail_arg!(
                "num_blocks",
                num_blocks,
                "the pool needs at least one block"
            );
        }
        let slots = num_blocks.saturating_mul(block_size);
        if slots >= u32::MAX as usize {
            crate::bail_arg!(
                "num_blocks",
                num_blocks,
                "{num_blocks} blocks of {block_size} tokens exceed the 32-bit slot index limit"
            );
        }
        Ok(Self {
            block_size,
            refcounts: vec![0; num_blocks],
            // Reversed so that blocks are handed out from 0 upwards.
            free: (0..num_blocks as u32).rev().collect(),
            sequences: BTreeMap::new(),
            next_id: 0,
            prefix_index: HashMap::new(),
            block_hashes: vec![None; num_blocks],
        })
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Number of blocks in the pool.
    pub fn num_blocks(&self) -> usize {
        self.refcounts.len()
    }

    /// Number of blocks on the free list.
    pub fn free_blocks(&self) -> usize {
        self.free.len()
    }

    /// Number of blocks referenced by at least one sequence.
    pub fn used_blocks(&self) -> usize {
        self.num_blocks() - self.free.len()
    }

    /// Number of blocks referenced by more than one sequence.
    pub fn shared_blocks(&self) -> usize {
        self.refcounts.iter().filter(|&&count| count > 1).count()
    }

    /// Returns the free list, most recently freed block last.
    pub fn free_list(&self) -> &[u32] {
        &self.free
    }

    /// Number of block-table entries that point at `block` (0 for a block out of range).
    pub fn refcount(&self, block: u32) -> u32 {
        self.refcounts.get(block as usize).copied().unwrap_or(0)
    }

    /// Number of full blocks registered for prefix sharing.
    pub fn prefix_blocks(&self) -> usize {
        self.prefix_index.len()
    }

    /// Ids of the live sequences, in creation order.
    pub fn sequence_ids(&self) -> impl Iterator<Item = SequenceId> + '_ {
        self.sequences.keys().copied()
    }

    fn sequence(&self, id: SequenceId) -> Result<&Sequence> {
        self.sequences.get(&id).ok_or(Error::UnknownSequence(id.0))
    }

    /// Number of tokens appended to the sequence, evicted ones included.
    pub fn len(&self, id: SequenceId) -> Result<usize> {
        Ok(self.sequence(id)?.len)
    }

    /// Number of tokens whose K and V rows are still stored, summed over all sequences.
    pub fn resident_tokens(&self) -> usize {
        self.sequences
            .values()
            .map(|seq| {
                (0..seq.len)
                    .filter(|&pos| seq.table[pos / self.block_size].is_some())
                    .count()
            })
            .sum()
    }

    /// Returns the sequence's window, if it has one.
    pub fn window(&self, id: SequenceId) -> Result<Option<Window>> {
        Ok(self.sequence(id)?.window)
    }

    /// Returns the block table: the physical block of each logical block, `None` where
    /// evicted.
    pub fn block_table(&self, id: SequenceId) -> Result<&[Option<u32>]> {
        Ok(&self.sequence(id)?.table)
    }

    /// Returns the physical slot of the token at `position`, or `None` when its block
    /// was evicted. Errors for an unknown sequence or a position past its length.
    pub fn slot(&self, id: SequenceId, position: usize) -> Result<Option<u32>> {
        let seq = self.sequence(id)?;
        if position >= seq.len {
            crate::bail_arg!(
                "position",
                position,
                "sequence {id} holds {} tokens",
                seq.len
            );
        }
        let block = seq.table[position / self.block_size];
        Ok(block.map(|b| b * self.block_size as u32 + (position % self.block_size) as u32))
    }

    /// Creates an empty sequence, windowed when `window` is given.
    ///
    /// Errors when the window's size is 0.
    pub fn create(&mut self, window: Option<Window>) -> Result<SequenceId> {
        self.insert(window, Vec::new(), 0, None)
    }

    /// Creates a sequence that starts with the longest run of full blocks of `tokens`
    /// that another sequence already stored, sharing those blocks instead of copying.
    ///
    /// Returns the id and the number of tokens already cached. At most `tokens.len() - 1`
    /// tokens are reused, so the caller always computes at least the last token, whose
    /// logits it needs. The caller then reserves `tokens[cached..]` with
    /// [`BlockAllocator::reserve`], passing the tokens so that its own blocks become
    /// shareable too.
    pub fn create_with_prefix(
        &mut self,
        tokens: &[u32],
        window: Option<Window>,
    ) -> Result<(SequenceId, usize)> {
        let bs = self.block_size;
        let max_blocks = tokens.len().saturating_sub(1) / bs;
        let mut hashes = Vec::new();
        let mut table = Vec::new();
        for block_tokens in tokens.chunks_exact(bs).take(max_blocks) {
            let hash = chain_hash(hashes.last(), block_tokens);
            let Some(&block) = self.prefix_index.get(&hash) else {
                break;
            };
            hashes.push(hash);
            table.push(Some(block));
        }
        let cached = table.len() * bs;
        let chain = PrefixChain {
            hashes,
            partial: Vec::new(),
        };
        let id = self.insert(window, table, cached, Some(chain))?;
        let seq = &self.sequences[&id];
        for block in seq.table.iter().flatten() {
            self.refcounts[*block as usize] += 1;
        }
        Ok((id, cached))
    }

    fn insert(
        &mut self,
        window: Option<Window>,
        table: Vec<Option<u32>>,
        len: usize,
        prefix: Option<PrefixChain>,
    ) -> Result<SequenceId> {
        if let Some(w) = window {
            if w.size == 0 {
                crate::bail_arg!("window.size", w.size, "a query must see at least itself");
            }
        }
        let id = SequenceId(self.next_id);
        self.next_id += 1;
        let evict_cursor = window.map_or(0, |w| w.sinks.div_ceil(self.block_size));
        self.sequences.insert(
            id,
            Sequence {
                table,
                len,
                window,
                evict_cursor,
                prefix,
            },
        );
        Ok(id)
    }

    /// Creates a sequence that shares every block of `parent`: no K/V row is copied.
    /// The first write of either sequence into a shared block copies that block.
    pub fn fork(&mut self, parent: SequenceId) -> Result<SequenceId> {
        let mut child = self.sequence(parent)?.clone();
        let id = SequenceId(self.next_id);
        self.next_id += 1;
        for block in child.table.iter().flatten() {
            self.refcounts[*block as usize] += 1;
        }
        child.table.shrink_to_fit();
        self.sequences.insert(id, child);
        Ok(id)
    }

    /// Frees a sequence, returning the blocks no other sequence references to the pool.
    pub fn free(&mut self, id: SequenceId) -> Result<()> {
        let seq = self
            .sequences
            .remove(&id)
            .ok_or(Error::UnknownSequence(id.0))?;
        for block in seq.table.into_iter().flatten() {
            self.release(block);
        }
        Ok(())
    }

    fn release(&mut self, block: u32) {
        let count = &mut self.refcounts[block as usize];
        *count -= 1;
        if *count == 0 {
            self.free.push(block);
            if let Some(hash) = self.block_hashes[block as usize].take() {
                if self.prefix_index.get(&hash) == Some(&block) {
                    self.prefix_index.remove(&hash);
                }
            }
        }
    }

    fn take_free(&mut self) -> u32 {
        // Callers count free blocks before taking any, so the list is never empty here.
        let block = self.free.pop().unwrap_or(u32::MAX);
        self.refcounts[block as usize] = 1;
        block
    }

    /// Returns the logical blocks `cursor..end` of a windowed sequence that no query at
    /// position `first_query` or later can see: past the sink blocks and wholly before
    /// the window.
    fn evictable(&self, seq: &Sequence, first_query: usize) -> std::ops::Range<usize> {
        let Some(window) = seq.window else {
            return 0..0;
        };
        let bs = self.block_size;
        // Keys before this position are outside every later query's window.
        let horizon = (first_query + 1).saturating_sub(window.size);
        let end = (horizon / bs).min(seq.table.len());
        // Empty while the cursor is still past the table, as when the sinks fill blocks
        // the sequence has not reached yet.
        seq.evict_cursor..end.max(seq.evict_cursor)
    }

    /// Reserves slots for `n` new tokens at the end of a sequence.
    ///
    /// A windowed sequence first releases the blocks that no query from its current length
    /// on can see. If the last block is partly filled and shared, it is replaced by a
    /// private copy, listed in [`Reservation::copies`]. `tokens`, when given, are the new
    /// tokens' ids (`n` of them); they make the filled blocks shareable through
    /// [`BlockAllocator::create_with_prefix`]. Reserving without tokens stops that for
    /// this sequence.
    ///
    /// Errors with [`Error::PoolExhausted`] when the pool lacks blocks even after eviction,
    /// and then changes nothing. `needed` counts the blocks this reservation takes and
    /// `free` the blocks on the free list before any eviction.
    pub fn reserve(
        &mut self,
        id: SequenceId,
        n: usize,
        tokens: Option<&[u32]>,
    ) -> Result<Reservation> {
        if let Some(tokens) = tokens {
            if tokens.len() != n {
                crate::bail_arg!(
                    "tokens",
                    format!("{} token ids", tokens.len()),
                    "expected one id per reserved token ({n})"
                );
            }
        }
        let bs = self.block_size;
        let seq = self.sequence(id)?;
        let len = seq.len;
        if n == 0 {
            return Ok(Reservation {
                start: len,
                ..Default::default()
            });
        }

        let evict = self.evictable(seq, len);
        let released = seq
            .table
            .get(evict.clone())
            .unwrap_or(&[])
            .iter()
            .filter(|block| block.is_some_and(|p| self.refcounts[p as usize] == 1))
            .count();
        let last_shared = (!len.is_multiple_of(bs))
            .then(|| seq.table[len / bs])
            .flatten()
            .filter(|&p| self.refcounts[p as usize] > 1);
        let new_blocks = (len + n).div_ceil(bs) - len.div_ceil(bs);
        let needed = new_blocks + usize::from(last_shared.is_some());
        if needed > self.free.len() + released {
            return Err(Error::PoolExhausted {
                sequence: id.0,
                needed,
                free: self.free.len(),
                total: self.num_blocks(),
            });
        }

        // Nothing below can fail, so the reservation is all or nothing.
        let mut seq = self
            .sequences
            .remove(&id)
            .ok_or(Error::UnknownSequence(id.0))?;
        for b in evict.clone() {
            if let Some(block) = seq.table[b].take() {
                self.release(block);
            }
        }
        seq.evict_cursor = seq.evict_cursor.max(evict.end);

        let mut copies = Vec::new();
        if let Some(shared) = last_shared {
            let private = self.take_free();
            self.refcounts[shared as usize] -= 1;
            seq.table[len / bs] = Some(private);
            copies.push(BlockCopy {
                src: shared,
                dst: private,
            });
        }
        for _ in 0..new_blocks {
            let block = self.take_free();
            seq.table.push(Some(block));
        }

        let slots = (len..len + n)
            .map(|pos| {
                let block = seq.table[pos / bs].unwrap_or(u32::MAX);
                block * bs as u32 + (pos % bs) as u32
            })
            .collect();
        seq.len = len + n;
        match (tokens, seq.prefix.as_mut()) {
            (Some(tokens), Some(chain)) => {
                self.extend_prefix(chain, &seq.table, tokens);
            }
            _ => seq.prefix = None,
        }
        self.sequences.insert(id, seq);
        Ok(Reservation {
            start: len,
            slots,
            copies,
            released,
        })
    }

    /// Hashes the blocks that `tokens` fill and registers them for prefix sharing.
    fn extend_prefix(&mut self, chain: &mut PrefixChain, table: &[Option<u32>], tokens: &[u32]) {
        for &token in tokens {
            chain.partial.push(token);
            if chain.partial.len() < self.block_size {
                continue;
            }
            let hash = chain_hash(chain.hashes.last(), &chain.partial);
            let logical = chain.hashes.len();
            chain.hashes.push(hash);
            chain.partial.clear();
            let Some(Some(block)) = table.get(logical).copied() else {
                continue;
            };
            // The first block stored for a prefix stays its canonical copy.
            if !self.prefix_index.contains_key(&hash) && self.block_hashes[block as usize].is_none()
            {
                self.prefix_index.insert(hash, block);
                self.block_hashes[block as usize] = Some(hash);
            }
        }
    }
}
