//! Property tests of the KV cache's block allocator, on the CPU only.
//!
//! Random programs of create / append / fork / free steps (with windowed and
//! prefix-sharing sequences among them) run against the allocator and a simulated
//! pool memory. After every step the tests check that reference counts equal the number
//! of block-table entries pointing at each block, that the free list holds exactly the
//! unreferenced blocks once each, and that every stored position of every sequence reads
//! back the value appended at that position.

use std::collections::BTreeMap;

use focal::kv::{BlockAllocator, SequenceId, Window};
use focal::Error;
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Step {
    /// Creates a plain or windowed sequence.
    Create {
        window: Option<(usize, usize)>,
    },
    /// Creates a sequence from the first `prompt` tokens of token stream `topic`, sharing
    /// cached blocks, and appends the tokens that were not cached.
    CreateWithPrefix {
        topic: u64,
        prompt: usize,
    },
    Append {
        pick: usize,
        n: usize,
    },
    Fork {
        pick: usize,
    },
    Free {
        pick: usize,
    },
    FreeUnknown,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => prop::option::of((0usize..5, 1usize..9)).prop_map(|window| Step::Create { window }),
        2 => (0u64..3, 1usize..40).prop_map(|(topic, prompt)| Step::CreateWithPrefix { topic, prompt }),
        5 => (any::<usize>(), 1usize..12).prop_map(|(pick, n)| Step::Append { pick, n }),
        2 => any::<usize>().prop_map(|pick| Step::Fork { pick }),
        2 => any::<usize>().prop_map(|pick| Step::Free { pick }),
        1 => Just(Step::FreeUnknown),
    ]
}

/// What the test expects of one sequence.
#[derive(Clone, Debug)]
struct Expected {
    /// Value appended at each position.
    values: Vec<u64>,
    /// Token stream of a prefix-sharing sequence: the value at a position depends only on
    /// the topic and the position, as K and V depend only on the token prefix.
    topic: Option<u64>,
    window: Option<Window>,
}

fn topic_token(topic: u64, position: usize) -> u32 {
    (topic * 1000 + position as u64) as u32
}

fn topic_value(topic: u64, position: usize) -> u64 {
    (topic + 1) << 32 | position as u64
}

struct Harness {
    allocator: BlockAllocator,
    /// Simulated pool: the value stored in each slot.
    memory: Vec<u64>,
    expected: BTreeMap<SequenceId, Expected>,
    next_value: u64,
    freed: Vec<SequenceId>,
}

impl Harness {
    fn new(num_blocks: usize, block_size: usize) -> Self {
        Self {
            allocator: BlockAllocator::new(num_blocks, block_size).unwrap(),
            memory: vec![0; num_blocks * block_size],
            expected: BTreeMap::new(),
            next_value: 1,
            freed: Vec::new(),
        }
    }

    fn pick(&self, pick: usize) -> Option<SequenceId> {
        let ids: Vec<_> = self.expected.keys().copied().collect();
        (!ids.is_empty()).then(|| ids[pick % ids.len()])
    }

    /// Snapshot of everything a failed reservation must leave unchanged.
    fn snapshot(&self) -> (Vec<u32>, Vec<u32>, Vec<Vec<Option<u32>>>) {
        let a = &self.allocator;
        let refcounts = (0..a.num_blocks() as u32).map(|b| a.refcount(b)).collect();
        let tables = a
            .sequence_ids()
            .map(|id| a.block_table(id).unwrap().to_vec())
            .collect();
        (a.free_list().to_vec(), refcounts, tables)
    }

    /// Reserves `n` tokens and stores their values; returns false when the pool is full.
    fn append(&mut self, id: SequenceId, n: usize) -> bool {
        let expected = self.expected[&id].clone();
        let start = expected.values.len();
        let tokens: Option<Vec<u32>> = expected
            .topic
            .map(|topic| (start..start + n).map(|p| topic_token(topic, p)).collect());
        let before = self.snapshot();
        let reservation = match self.allocator.reserve(id, n, tokens.as_deref()) {
            Ok(r) => r,
            Err(Error::PoolExhausted { sequence, .. }) => {
                assert_eq!(sequence, id.0, "error names another sequence");
                assert_eq!(
                    self.snapshot(),
                    before,
                    "failed reserve changed the allocator"
                );
                return false;
            }
            Err(e) => panic!("reserve failed unexpectedly: {e}"),
        };
        assert_eq!(reservation.start, start);
        assert_eq!(reservation.slots.len(), n);

        let bs = self.allocator.block_size();
        for copy in &reservation.copies {
            let (src, dst) = (copy.src as usize * bs, copy.dst as usize * bs);
            self.memory.copy_within(src..src + bs, dst);
        }
        let values: Vec<u64> = (start..start + n)
            .map(|p| match expected.topic {
                Some(topic) => topic_value(topic, p),
                None => {
                    self.next_value += 1;
                    self.next_value
                }
            })
            .collect();
        for (&slot, &value) in reservation.slots.iter().zip(&values) {
            self.memory[slot as usize] = value;
        }
        self.expected.get_mut(&id).unwrap().values.extend(values);
        true
    }

    fn run(&mut self, step: &Step) {
        match *step {
            Step::Create { window } => {
                let window = window.map(|(sinks, size)| Window { sinks, size });
                let id = self.allocator.create(window).unwrap();
                let expected = Expected {
                    values: Vec::new(),
                    topic: None,
                    window,
                };
                self.expected.insert(id, expected);
            }
            Step::CreateWithPrefix { topic, prompt } => {
                let tokens: Vec<u32> = (0..prompt).map(|p| topic_token(topic, p)).collect();
                let (id, cached) = self.allocator.create_with_prefix(&tokens, None).unwrap();
                let bs = self.allocator.block_size();
                assert!(
                    cached < prompt,
                    "all {prompt} prompt tokens came from the cache"
                );
                assert_eq!(cached % bs, 0, "cached {cached} is not a block multiple");
                assert_eq!(self.allocator.len(id).unwrap(), cached);
                let expected = Expected {
                    values: (0..cached).map(|p| topic_value(topic, p)).collect(),
                    topic: Some(topic),
                    window: None,
                };
                self.expected.insert(id, expected);
                if !self.append(id, prompt - cached) {
                    self.allocator.free(id).unwrap();
                    self.expected.remove(&id);
                }
            }
            Step::Append { pick, n } => {
                if let Some(id) = self.pick(pick) {
                    self.append(id, n);
                }
            }
            Step::Fork { pick } => {
                if let Some(id) = self.pick(pick) {
                    let used = self.allocator.used_blocks();
                    let child = self.allocator.fork(id).unwrap();
                    assert_eq!(self.allocator.used_blocks(), used, "fork allocated blocks");
                    let expected = self.expected[&id].clone();
                    self.expected.insert(child, expected);
                }
            }
            Step::Free { pick } => {
                if let Some(id) = self.pick(pick) {
                    self.allocator.free(id).unwrap();
                    self.expected.remove(&id);
                    self.freed.push(id);
                }
            }
            Step::FreeUnknown => {
                let id = self.freed.last().copied().unwrap_or(SequenceId(u64::MAX));
                assert!(matches!(
                    self.allocator.free(id),
                    Err(Error::UnknownSequence(n)) if n == id.0
                ));
                assert!(matches!(
                    self.allocator.reserve(id, 1, None),
                    Err(Error::UnknownSequence(_))
                ));
            }
        }
    }

    fn check(&self) {
        let a = &self.allocator;
        let total = a.num_blocks();

        let mut references = vec![0u32; total];
        for id in a.sequence_ids() {
            for block in a.block_table(id).unwrap().iter().flatten() {
                references[*block as usize] += 1;
            }
        }
        for (block, &count) in references.iter().enumerate() {
            assert_eq!(
                a.refcount(block as u32),
                count,
                "block {block}: refcount differs from the tables pointing at it"
            );
        }

        let mut on_free_list = vec![false; total];
        for &block in a.free_list() {
            assert!(!on_free_list[block as usize], "block {block} freed twice");
            on_free_list[block as usize] = true;
        }
        for block in 0..total {
            assert_eq!(
                on_free_list[block],
                references[block] == 0,
                "block {block} with {} references is on the free list: {}",
                references[block],
                on_free_list[block]
            );
        }
        let used = references.iter().filter(|&&c| c > 0).count();
        assert_eq!(a.used_blocks(), used);
        assert_eq!(a.free_blocks() + a.used_blocks(), total);
        let shared = references.iter().filter(|&&c| c > 1).count();
        assert_eq!(a.shared_blocks(), shared);

        let live: Vec<_> = a.sequence_ids().collect();
        let modelled: Vec<_> = self.expected.keys().copied().collect();
        assert_eq!(live, modelled, "live sequences differ from the model");

        for (&id, expected) in &self.expected {
            let len = expected.values.len();
            assert_eq!(a.len(id).unwrap(), len, "sequence {id}: length");
            for (position, &value) in expected.values.iter().enumerate() {
                match a.slot(id, position).unwrap() {
                    Some(slot) => assert_eq!(
                        self.memory[slot as usize], value,
                        "sequence {id} position {position}: wrong value"
                    ),
                    None => {
                        let window = expected.window.expect("a plain sequence lost a block");
                        assert!(
                            !window.is_visible(len - 1, position),
                            "sequence {id}: evicted position {position} is still visible"
                        );
                    }
                }
            }
        }
    }
}

proptest! {
    // Failing seeds are saved beside this file (kv_allocator.proptest-regressions) and
    // replayed first on every run.
    #![proptest_config(ProptestConfig {
        cases: 1024,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn allocator_invariants_hold(
        num_blocks in 1usize..24,
        block_size in prop::sample::select(vec![1usize, 2, 4, 16]),
        steps in prop::collection::vec(step(), 1..60),
    ) {
        let mut harness = Harness::new(num_blocks, block_size);
        for step in &steps {
            harness.run(step);
            harness.check();
        }
        // Freeing every sequence returns every block.
        let ids: Vec<_> = harness.expected.keys().copied().collect();
        for id in ids {
            harness.allocator.free(id).unwrap();
            harness.expected.remove(&id);
        }
        harness.check();
        prop_assert_eq!(harness.allocator.free_blocks(), num_blocks);
        prop_assert_eq!(harness.allocator.prefix_blocks(), 0);
    }
}

#[test]
fn prefix_shares_full_blocks() {
    let mut allocator = BlockAllocator::new(16, 4).unwrap();
    let tokens: Vec<u32> = (0..10).collect();
    let (first, cached) = allocator.create_with_prefix(&tokens, None).unwrap();
    assert_eq!(cached, 0);
    allocator.reserve(first, 10, Some(&tokens)).unwrap();
    assert_eq!(allocator.prefix_blocks(), 2);

    let (second, cached) = allocator.create_with_prefix(&tokens, None).unwrap();
    assert_eq!(cached, 8);
    let first_table = allocator.block_table(first).unwrap().to_vec();
    let second_table = allocator.block_table(second).unwrap().to_vec();
    assert_eq!(&second_table[..], &first_table[..2]);
    assert_eq!(allocator.shared_blocks(), 2);

    // A prompt that differs in its second block shares only the first.
    let mut other = tokens.clone();
    other[5] = 99;
    let (third, cached) = allocator.create_with_prefix(&other, None).unwrap();
    assert_eq!(cached, 4);
    assert_eq!(allocator.block_table(third).unwrap()[0], first_table[0]);
}

#[test]
fn prefix_keeps_last_token_uncached() {
    let mut allocator = BlockAllocator::new(16, 4).unwrap();
    let tokens: Vec<u32> = (0..8).collect();
    let (first, _) = allocator.create_with_prefix(&tokens, None).unwrap();
    allocator.reserve(first, 8, Some(&tokens)).unwrap();
    let (_, cached) = allocator.create_with_prefix(&tokens, None).unwrap();
    assert_eq!(
        cached, 4,
        "the last token must be left for the caller to compute"
    );
}

#[test]
fn fork_copies_shared_partial_block_on_write() {
    let mut allocator = BlockAllocator::new(8, 4).unwrap();
    let parent = allocator.create(None).unwrap();
    allocator.reserve(parent, 6, None).unwrap();
    let child = allocator.fork(parent).unwrap();
    assert_eq!(allocator.used_blocks(), 2);
    assert_eq!(allocator.shared_blocks(), 2);

    let shared_last = allocator.block_table(parent).unwrap()[1].unwrap();
    let reservation = allocator.reserve(child, 1, None).unwrap();
    assert_eq!(reservation.copies.len(), 1);
    assert_eq!(reservation.copies[0].src, shared_last);
    let private = allocator.block_table(child).unwrap()[1].unwrap();
    assert_eq!(reservation.copies[0].dst, private);
    assert_ne!(private, shared_last);
    assert_eq!(allocator.refcount(shared_last), 1);

    // The parent's block is now private to it: no copy.
    let reservation = allocator.reserve(parent, 1, None).unwrap();
    assert!(reservation.copies.is_empty());
}

#[test]
fn window_releases_blocks_but_keeps_sinks() {
    let window = Window { sinks: 2, size: 4 };
    let mut allocator = BlockAllocator::new(64, 2).unwrap();
    let id = allocator.create(Some(window)).unwrap();
    for _ in 0..30 {
        allocator.reserve(id, 1, None).unwrap();
    }
    let len = allocator.len(id).unwrap();
    for position in 0..len {
        let resident = allocator.slot(id, position).unwrap().is_some();
        if window.is_visible(len - 1, position) {
            assert!(resident, "visible position {position} was evicted");
        }
    }
    // Sinks (one block) plus the blocks of the last 4 tokens and the one before them.
    assert!(
        allocator.used_blocks() <= 4,
        "{} blocks in use",
        allocator.used_blocks()
    );
}

#[test]
fn windowed_sequence_evicts_instead_of_failing() {
    let mut allocator = BlockAllocator::new(3, 4).unwrap();
    let id = allocator
        .create(Some(Window { sinks: 0, size: 4 }))
        .unwrap();
    for _ in 0..100 {
        allocator.reserve(id, 1, None).unwrap();
    }
    assert_eq!(allocator.len(id).unwrap(), 100);
}

#[test]
fn exhausted_pool_names_sequence_and_counts() {
    let mut allocator = BlockAllocator::new(2, 4).unwrap();
    let id = allocator.create(None).unwrap();
    allocator.reserve(id, 5, None).unwrap();
    match allocator.reserve(id, 4, None) {
        Err(Error::PoolExhausted {
            sequence,
            needed,
            free,
            total,
        }) => {
            assert_eq!(sequence, id.0);
            assert_eq!(needed, 1);
            assert_eq!(free, 0);
            assert_eq!(total, 2);
        }
        other => panic!("expected PoolExhausted, got {other:?}"),
    }
    assert_eq!(allocator.len(id).unwrap(), 5);
}

#[test]
fn invalid_sizes_are_rejected() {
    let err = BlockAllocator::new(4, 0).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidArgument {
                name: "block_size",
                ..
            }
        ),
        "{err}"
    );
    let err = BlockAllocator::new(0, 16).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidArgument {
                name: "num_blocks",
                ..
            }
        ),
        "{err}"
    );
    let mut allocator = BlockAllocator::new(4, 4).unwrap();
    let err = allocator
        .create(Some(Window { sinks: 1, size: 0 }))
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidArgument {
                name: "window.size",
                ..
            }
        ),
        "{err}"
    );
    let id = allocator.create(None).unwrap();
    let err = allocator.reserve(id, 2, Some(&[1])).unwrap_err();
    assert!(
        matches!(err, Error::InvalidArgument { name: "tokens", .. }),
        "{err}"
    );
}
