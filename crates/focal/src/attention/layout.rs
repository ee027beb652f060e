//! Block-sparse attention layouts: for each query block, the key blocks it attends to.

use crate::{Error, Result};

/// For each block of `block_size` query rows, the sorted list of key blocks of
/// `block_size` keys it attends to. Query block `b` covers rows
/// `b * block_size .. (b + 1) * block_size` and key block `c` covers keys
/// `c * block_size .. (c + 1) * block_size`; the last block of each may be partial.
///
/// Stored in compressed sparse row form: `offsets[b]..offsets[b + 1]` indexes
/// `indices`, the key blocks of query block `b`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockSparseLayout {
    block_size: usize,
    q_blocks: usize,
    k_blocks: usize,
    offsets: Vec<u32>,
    indices: Vec<u32>,
}

/// Block sizes must be a multiple of this, so that the flash kernel's query tile
/// never straddles two query blocks.
pub const BLOCK_SIZE_MULTIPLE: usize = 8;

impl BlockSparseLayout {
    /// Builds a layout from one list of key blocks per query block.
    ///
    /// Errors when `block_size` is zero or not a multiple of 8, or a key block index is
    /// `k_blocks` or more. Duplicates are removed and each list is sorted.
    pub fn from_lists(block_size: usize, k_blocks: usize, lists: &[Vec<usize>]) -> Result<Self> {
        if block_size == 0 || !block_size.is_multiple_of(BLOCK_SIZE_MULTIPLE) {
            return Err(Error::MaskMismatch {
                mask: "block-sparse",
                detail: format!(
                    "block_size {block_size} is not a positive multiple of {BLOCK_SIZE_MULTIPLE}"
                ),
            });
        }
        let mut offsets = Vec::with_capacity(lists.len() + 1);
        let mut indices = Vec::new();
        offsets.push(0u32);
        for (q_block, list) in lists.iter().enumerate() {
            let mut sorted = list.clone();
            sorted.sort_unstable();
            sorted.dedup();
            if let Some(&bad) = sorted.iter().find(|&&c| c >= k_blocks) {
                return Err(Error::MaskMismatch {
                    mask: "block-sparse",
                    detail: format!(
                        "query block {q_block} lists key block {bad}, but there are only \
                         {k_blocks} key blocks"
                    ),
                });
            }
            indices.extend(sorted.iter().map(|&c| c as u32));
            let end = u32::try_from(indices.len()).map_err(|_| Error::MaskMismatch {
                mask: "block-sparse",
                detail: format!("{} listed blocks exceed the u32 range", indices.len()),
            })?;
            offsets.push(end);
        }
        Ok(Self {
            block_size,
            q_blocks: lists.len(),
            k_blocks,
            offsets,
            indices,
        })
    }

    /// Builds a layout from a dense block mask, row-major `[q_blocks, k_blocks]`:
    /// `mask[b * k_blocks + c]` is true when query block `b` attends to key block `c`.
    ///
    /// This is the builder for an arbitrary user mask at block granularity.
    pub fn from_block_mask(
        block_size: usize,
        q_blocks: usize,
        k_blocks: usize,
        mask: &[bool],
    ) -> Result<Self> {
        if mask.len() != q_blocks * k_blocks {
            return Err(Error::MaskMismatch {
                mask: "block-sparse",
                detail: format!(
                    "block mask has {} entries, expected q_blocks {q_blocks} x k_blocks {k_blocks}",
                    mask.len()
                ),
            });
        }
        let lists: Vec<Vec<usize>> = (0..q_blocks)
            .map(|b| (0..k_blocks).filter(|&c| mask[b * k_blocks + c]).collect())
            .collect();
        Self::from_lists(block_size, k_blocks, &lists)
    }

    /// Builds a BigBird-style layout for `q_len` query rows and `kv_len` keys: each query
    /// block sees the key blocks within `local` blocks of its own diagonal block, the
    /// first `global` key blocks, and `random` further key blocks drawn with `seed`.
    /// Global blocks are global keys only: no query block is made to see everything.
    ///
    /// The diagonal block of query block `b` is the key block that holds its last
    /// row's position under bottom-right alignment.
    pub fn local_global_random(
        block_size: usize,
        q_len: usize,
        kv_len: usize,
        local: usize,
        global: usize,
        random: usize,
        seed: u64,
    ) -> Result<Self> {
        if block_size == 0 {
            return Self::from_lists(block_size, 0, &[]);
        }
        let q_blocks = q_len.div_ceil(block_size);
        let k_blocks = kv_len.div_ceil(block_size);
        let offset = kv_len as i64 - q_len as i64;
        let mut rng = SplitMix64(seed);
        let mut lists = Vec::with_capacity(q_blocks);
        for b in 0..q_blocks {
            let last_row = ((b + 1) * block_size).min(q_len) as i64 - 1;
            let diagonal = ((last_row + offset).max(0) as usize / block_size).min(k_blocks);
            let mut list: Vec<usize> =
                (diagonal.saturating_sub(local)..(diagonal + local + 1).min(k_blocks)).collect();
            list.extend(0..global.min(k_blocks));
            let mut others: Vec<usize> = (0..k_blocks).filter(|c| !list.contains(c)).collect();
            for _ in 0..random.min(others.len()) {
                let pick = (rng.next() % others.len() as u64) as usize;
                list.push(others.swap_remove(pick));
            }
            lists.push(list);
        }
        Self::from_lists(block_size, k_blocks, &lists)
    }

    /// Builds a Longformer-style layout: local blocks around the diagonal plus the
    /// first `global` key blocks, without random blocks.
    pub fn local_global(
        block_size: usize,
        q_len: usize,
        kv_len: usize,
        local: usize,
        global: usize,
    ) -> Result<Self> {
        Self::local_global_random(block_size, q_len, kv_len, local, global, 0, 0)
    }

    /// Rows and keys per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Number of query blocks.
    pub fn q_blocks(&self) -> usize {
        self.q_blocks
    }

    /// Number of key blocks.
    pub fn k_blocks(&self) -> usize {
        self.k_blocks
    }

    /// Sorted key blocks seen by query block `q_block` (empty past the last block).
    pub fn key_blocks(&self, q_block: usize) -> &[u32] {
        if q_block >= self.q_blocks {
            return &[];
        }
        let start = self.offsets[q_block] as usize;
        let end = self.offsets[q_block + 1] as usize;
        &self.indices[start..end]
    }

    /// Compressed-row offsets, `q_blocks + 1` entries.
    pub fn offsets(&self) -> &[u32] {
        &self.offsets
    }

    /// Key block indices of every query block, concatenated.
    pub fn indices(&self) -> &[u32] {
        &self.indices
    }

    /// Fraction of (query block, key block) pairs that the layout lists.
    pub fn density(&self) -> f64 {
        let total = self.q_blocks * self.k_blocks;
        if total == 0 {
            return 0.0;
        }
        self.indices.len() as f64 / total as f64
    }

    /// Dense `[q_blocks, k_blocks]` visibility as 0/1 words, for kernels that test
    /// single entries.
    pub(crate) fn dense_words(&self) -> Vec<u32> {
        let mut words = vec![0u32; self.q_blocks * self.k_blocks];
        for b in 0..self.q_blocks {
            for &c in self.key_blocks(b) {
                words[b * self.k_blocks + c as usize] = 1;
            }
        }
        words
    }

    /// Returns an error unless the layout has exactly the blocks that `q_len` rows and
    /// `kv_len` keys need.
    pub fn check_fits(&self, q_len: usize, kv_len: usize) -> Result<()> {
        let q_blocks = q_len.div_ceil(self.block_size);
        let k_blocks = kv_len.div_ceil(self.block_size);
        if self.q_blocks != q_blocks || self.k_blocks != k_blocks {
            return Err(Error::MaskMismatch {
                mask: "block-sparse",
                detail: format!(
                    "layout has {} x {} blocks of {}, but q_len {q_len} and kv_len {kv_len} \
                     need {q_blocks} x {k_blocks}",
                    self.q_blocks, self.k_blocks, self.block_size
                ),
            });
        }
        Ok(())
    }
}

/// SplitMix64, enough to pick random blocks reproducibly without a dependency.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}
