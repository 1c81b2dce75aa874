//! A fixed-size, lock-free table of stacks with counters, for the profiles that record
//! where they happen (heap samples in the allocator, waits in block and mutex profiles).
//!
//! A table is a static array of atomics: zero pages until entries are used, no
//! allocation ever, usable from the allocator and from any thread. An entry is claimed
//! with compare-and-swap and published with a release store of its hash; a table that is
//! full, or a probe that meets an entry still being written, gives up (the caller counts
//! a loss) rather than waiting, so recording never blocks anyone.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::frames::MAX_DEPTH;

/// Entries per table.
pub const ENTRIES: usize = 4096;
/// Counters per entry (the heap uses all four; waits use two).
pub const VALUES: usize = 4;
/// Longest probe sequence before giving up.
const MAX_PROBES: usize = 64;

const EMPTY: u64 = 0;
const WRITING: u64 = 1;

/// One stack and its counters.
pub struct Entry {
    /// 0: empty; 1: being written; otherwise the stack's hash (never 0 or 1).
    hash: AtomicU64,
    depth: AtomicU32,
    frames: [AtomicU64; MAX_DEPTH],
    values: [AtomicU64; VALUES],
}

impl Entry {
    /// Adds `amount` to counter `index`.
    pub fn add(&self, index: usize, amount: u64) {
        self.values[index].fetch_add(amount, Ordering::Relaxed);
    }
}

/// A table of stacks; see the module documentation.
pub struct StackTable {
    entries: [Entry; ENTRIES],
}

/// One entry's stack and counters, copied out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counted {
    /// Return addresses, innermost first.
    pub frames: Vec<u64>,
    pub values: [u64; VALUES],
}

impl StackTable {
    #[allow(clippy::declare_interior_mutable_const)] // only as an array initialiser
    const ENTRY: Entry = Entry {
        hash: AtomicU64::new(EMPTY),
        depth: AtomicU32::new(0),
        frames: [const { AtomicU64::new(0) }; MAX_DEPTH],
        values: [const { AtomicU64::new(0) }; VALUES],
    };

    pub const fn new() -> StackTable {
        StackTable {
            entries: [Self::ENTRY; ENTRIES],
        }
    }

    /// The entry of `stack`, added if new; `None` when there is no room.
    pub fn intern(&self, stack: &[u64]) -> Option<(usize, &Entry)> {
        let hash = stack_hash(stack);
        for probe in 0..MAX_PROBES {
            let index = (hash as usize).wrapping_add(probe) % ENTRIES;
            let entry = &self.entries[index];
            match entry.hash.load(Ordering::Acquire) {
                EMPTY => {
                    if entry
                        .hash
                        .compare_exchange(EMPTY, WRITING, Ordering::Acquire, Ordering::Relaxed)
                        .is_err()
                    {
                        continue; // another thread took it: look further
                    }
                    for (slot, &frame) in entry.frames.iter().zip(stack) {
                        slot.store(frame, Ordering::Relaxed);
                    }
                    entry.depth.store(stack.len() as u32, Ordering::Relaxed);
                    entry.hash.store(hash, Ordering::Release);
                    return Some((index, entry));
                }
                h if h == hash && same_stack(entry, stack) => return Some((index, entry)),
                _ => {}
            }
        }
        None
    }

    /// The entry at `index` (as `intern` returned it).
    pub fn get(&self, index: usize) -> Option<&Entry> {
        self.entries.get(index)
    }

    /// Every entry with its counters (allocates: not for the allocator).
    pub fn snapshot(&self) -> Vec<Counted> {
        self.entries
            .iter()
            .filter(|entry| entry.hash.load(Ordering::Acquire) > WRITING)
            .map(|entry| {
                let depth = (entry.depth.load(Ordering::Relaxed) as usize).min(MAX_DEPTH);
                Counted {
                    frames: entry.frames[..depth]
                        .iter()
                        .map(|f| f.load(Ordering::Relaxed))
                        .collect(),
                    values: std::array::from_fn(|i| entry.values[i].load(Ordering::Relaxed)),
                }
            })
            .collect()
    }
}

impl Default for StackTable {
    fn default() -> Self {
        StackTable::new()
    }
}

/// `after - before`, stack by stack, leaving out stacks that did not change (the delta
/// profiles of `?seconds=N`).
pub fn difference(before: &[Counted], after: &[Counted]) -> Vec<Counted> {
    after
        .iter()
        .filter_map(|a| {
            let b = before.iter().find(|b| b.frames == a.frames);
            let values: [u64; VALUES] =
                std::array::from_fn(|i| a.values[i].saturating_sub(b.map_or(0, |b| b.values[i])));
            values.iter().any(|&v| v > 0).then(|| Counted {
                frames: a.frames.clone(),
                values,
            })
        })
        .collect()
}

fn same_stack(entry: &Entry, stack: &[u64]) -> bool {
    entry.depth.load(Ordering::Relaxed) as usize == stack.len()
        && entry
            .frames
            .iter()
            .zip(stack)
            .all(|(slot, &frame)| slot.load(Ordering::Relaxed) == frame)
}

/// FNV-1a over the frames, kept clear of the EMPTY and WRITING markers.
fn stack_hash(stack: &[u64]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &frame in stack {
        for byte in frame.to_le_bytes() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash.max(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stack_is_interned_once_and_counted() {
        static TABLE: StackTable = StackTable::new();
        let stack = [0x1111, 0x2222, 0x3333_0000_0000_0001];
        let (first, entry) = TABLE.intern(&stack).expect("room");
        entry.add(0, 2);
        entry.add(1, 64);
        let (again, _) = TABLE.intern(&stack).expect("room");
        assert_eq!(again, first);
        assert_ne!(TABLE.intern(&[0x1111, 0x2223]).map(|(i, _)| i), Some(first));
        let counted = TABLE.snapshot();
        let mine = counted.iter().find(|c| c.frames == stack).expect("listed");
        assert_eq!(mine.values, [2, 64, 0, 0]);
    }

    #[test]
    fn differences_subtract_stack_by_stack() {
        let counted = |frames: &[u64], n| Counted {
            frames: frames.to_vec(),
            values: [n, n * 10, 0, 0],
        };
        let before = [counted(&[1], 5), counted(&[2], 7)];
        let after = [counted(&[1], 8), counted(&[2], 7), counted(&[3], 1)];
        assert_eq!(
            difference(&before, &after),
            [counted(&[1], 3), counted(&[3], 1)]
        );
    }
}
