//! An external sort of a relist's listed keys (R2), so a repair's memory
//! does not grow with the bucket.
//!
//! Records are held in memory up to [`ScratchPolicy::relist_memory`] bytes
//! (the keys' heap bytes plus the buffer's capacity; the sort's scratch
//! comes on top), then sorted and written as a run file into a
//! subdirectory of [`ScratchPolicy::dir`] made for this repair and removed
//! when the sorter or its output is dropped. Finishing merges the runs and
//! the in-memory tail into one key-ordered stream of the live keys.
//!
//! Per key, the record with the highest revision wins; a record without a
//! revision loses to one with a revision, and among equals the later push
//! wins. A run keeps one record per key, dead ones included: a delete in an
//! early run must still beat an older put that lands in a later run.
//!
//! The run file format is in [`run`].

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs;
use std::mem;
use std::path::{Path, PathBuf};

use self::run::{RunReader, write_run};
use crate::config::ScratchPolicy;
use crate::error::AppliedError;
use crate::scratch::{ScratchDir, ScratchKind};

/// The allocator's share of a key's heap block, counted with its bytes.
const KEY_ALLOC_OVERHEAD: usize = 16;
/// Runs merged at once: bounds open files and read buffers.
const FAN_IN: usize = 16;

/// One listed record: a put (`live`) or a delete/purge marker of `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    key: String,
    revision: Option<u64>,
    live: bool,
}

/// Collects listed records and sorts them externally.
#[derive(Debug)]
pub(crate) struct KeySorter {
    buffer: Vec<Record>,
    /// The buffered keys' heap bytes.
    key_bytes: usize,
    limit: usize,
    runs: Vec<PathBuf>,
    files: u64,
    // Last: dropped after everything that may hold its files.
    dir: ScratchDir,
}

/// A full buffer to write as a run; [`PendingRun::write`] blocks, so the
/// caller runs it off the async runtime.
#[derive(Debug)]
pub(crate) struct PendingRun {
    records: Vec<Record>,
    path: PathBuf,
}

impl PendingRun {
    /// The run file this writes.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Sort the records, keep each key's winner and write them.
    pub(crate) fn write(self) -> Result<(), AppliedError> {
        let records = sorted_winners(self.records);
        write_run(&self.path, records.into_iter().map(Ok))
    }
}

impl KeySorter {
    /// A sorter with its own new subdirectory of `policy.dir`.
    pub(crate) fn new(policy: &ScratchPolicy) -> Result<Self, AppliedError> {
        Ok(Self {
            buffer: Vec::new(),
            key_bytes: 0,
            limit: policy.relist_memory.max(1),
            runs: Vec::new(),
            files: 0,
            dir: ScratchDir::create(&policy.dir, ScratchKind::Relist).map_err(|e| {
                AppliedError::RepairScratchIo {
                    operation: "creating the scratch directory",
                    path: e.path,
                    source: e.source,
                }
            })?,
        })
    }

    /// The scratch subdirectory of this sorter.
    #[cfg(test)]
    fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Add a record. `Some` when the memory bound is reached: the caller
    /// must [write](PendingRun::write) that run before calling
    /// [`KeySorter::finish`].
    pub(crate) fn push(
        &mut self,
        key: String,
        revision: Option<u64>,
        live: bool,
    ) -> Option<PendingRun> {
        self.key_bytes = self
            .key_bytes
            .saturating_add(key.len() + KEY_ALLOC_OVERHEAD);
        self.buffer.push(Record {
            key,
            revision,
            live,
        });
        // The buffer's capacity, not its length: growth doubles it.
        let used = self
            .key_bytes
            .saturating_add(self.buffer.capacity() * mem::size_of::<Record>());
        if used < self.limit {
            return None;
        }
        self.key_bytes = 0;
        let path = self.next_path();
        self.runs.push(path.clone());
        Some(PendingRun {
            records: mem::take(&mut self.buffer),
            path,
        })
    }

    fn next_path(&mut self) -> PathBuf {
        self.files += 1;
        self.dir.path().join(format!("run-{:06}", self.files))
    }

    /// Merge everything pushed into the live keys in ascending order.
    /// Blocks (reads and may merge run files).
    pub(crate) fn finish(mut self) -> Result<SortedKeys, AppliedError> {
        let tail = sorted_winners(mem::take(&mut self.buffer));
        // Merge consecutive groups, so a merged run keeps its place in
        // push order for ties.
        while self.runs.len() > FAN_IN {
            let runs = mem::take(&mut self.runs);
            for group in runs.chunks(FAN_IN) {
                if let [single] = group {
                    self.runs.push(single.clone());
                    continue;
                }
                let path = self.next_path();
                let mut merge = Merge::open(group, Vec::new())?;
                write_run(
                    &path,
                    std::iter::from_fn(|| merge.next_winner().transpose()),
                )?;
                drop(merge);
                for done in group {
                    fs::remove_file(done).map_err(|source| AppliedError::RepairScratchIo {
                        operation: "removing a merged run",
                        path: done.clone(),
                        source,
                    })?;
                }
                self.runs.push(path);
            }
        }
        let merge = Merge::open(&self.runs, tail)?;
        Ok(SortedKeys {
            merge,
            head: None,
            failed: false,
            _dir: self.dir,
        })
    }
}

/// The live listed keys in ascending order; the scratch subdirectory goes
/// when this is dropped.
#[derive(Debug)]
pub(crate) struct SortedKeys {
    merge: Merge,
    /// A key read ahead by [`SortedKeys::contains`].
    head: Option<String>,
    failed: bool,
    _dir: ScratchDir,
}

impl SortedKeys {
    fn next_live(&mut self) -> Result<Option<String>, AppliedError> {
        while let Some(record) = self.merge.next_winner()? {
            if record.live {
                return Ok(Some(record.key));
            }
        }
        Ok(None)
    }

    /// Whether `key` is listed live. Probes must come in ascending key
    /// order: keys before `key` are skipped for good.
    pub(crate) fn contains(&mut self, key: &str) -> Result<bool, AppliedError> {
        loop {
            if self.head.is_none() {
                match self.next() {
                    Some(Ok(next)) => self.head = Some(next),
                    Some(Err(e)) => return Err(e),
                    None => return Ok(false),
                }
            }
            match self.head.as_deref() {
                Some(head) if head < key => self.head = None,
                Some(head) => return Ok(head == key),
                None => return Ok(false),
            }
        }
    }
}

impl Iterator for SortedKeys {
    type Item = Result<String, AppliedError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(head) = self.head.take() {
            return Some(Ok(head));
        }
        if self.failed {
            return None;
        }
        let next = self.next_live();
        self.failed = next.is_err();
        next.transpose()
    }
}

/// Sort by key and keep each key's winner, in place.
fn sorted_winners(mut records: Vec<Record>) -> Vec<Record> {
    // Reversed and stably sorted by descending revision, each key's winner
    // comes first: later pushes win ties.
    records.reverse();
    records.sort_by(|a, b| a.key.cmp(&b.key).then_with(|| b.revision.cmp(&a.revision)));
    records.dedup_by(|later, first| later.key == first.key);
    records
}

/// FNV-1a, continued from `hash`.
/// One input of a merge: a run file, or the sorted in-memory tail.
#[derive(Debug)]
enum Source {
    Run(RunReader),
    Tail(std::vec::IntoIter<Record>),
}

impl Source {
    fn next(&mut self) -> Result<Option<Record>, AppliedError> {
        match self {
            Self::Run(reader) => reader.next_record(),
            Self::Tail(records) => Ok(records.next()),
        }
    }
}

/// A source's current record: (key, source index, revision, live); the
/// heap orders by key, then source.
type Head = (String, usize, Option<u64>, bool);

/// A k-way merge of sources, each sorted with one record per key; a
/// source's index is its place in push order.
#[derive(Debug)]
struct Merge {
    sources: Vec<Source>,
    heads: BinaryHeap<Reverse<Head>>,
}

impl Merge {
    fn open(runs: &[PathBuf], tail: Vec<Record>) -> Result<Self, AppliedError> {
        let mut sources = runs
            .iter()
            .map(|p| RunReader::open(p).map(Source::Run))
            .collect::<Result<Vec<_>, _>>()?;
        sources.push(Source::Tail(tail.into_iter()));
        let mut merge = Self {
            heads: BinaryHeap::with_capacity(sources.len()),
            sources,
        };
        for index in 0..merge.sources.len() {
            merge.refill(index)?;
        }
        Ok(merge)
    }

    fn refill(&mut self, index: usize) -> Result<(), AppliedError> {
        if let Some(r) = self.sources[index].next()? {
            self.heads.push(Reverse((r.key, index, r.revision, r.live)));
        }
        Ok(())
    }

    /// The winning record of the smallest key left, dead or live.
    fn next_winner(&mut self) -> Result<Option<Record>, AppliedError> {
        let Some(Reverse((key, index, revision, live))) = self.heads.pop() else {
            return Ok(None);
        };
        self.refill(index)?;
        let mut best = (revision, index, live);
        while let Some(Reverse((next, ..))) = self.heads.peek()
            && *next == key
        {
            let Some(Reverse((_, index, revision, live))) = self.heads.pop() else {
                break;
            };
            self.refill(index)?;
            if (revision, index) > (best.0, best.1) {
                best = (revision, index, live);
            }
        }
        Ok(Some(Record {
            key,
            revision: best.0,
            live: best.2,
        }))
    }
}

mod run;
#[cfg(test)]
mod tests;
