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
//! Run file layout (little endian): an 8-byte magic; records
//! `[u32 key length][key][u8 flags][u64 revision][u32 checksum]`, the
//! checksum covering the record's bytes before it; an end record
//! `[u32::MAX][u64 record count][u32 checksum]`. Reading checks the magic,
//! every length bound and checksum, UTF-8, strictly ascending keys, the
//! count and that nothing follows the end record, so a truncated or damaged
//! run is an error and never a shorter listing.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::mem;
use std::path::{Path, PathBuf};

use crate::config::ScratchPolicy;
use crate::error::AppliedError;
use crate::scratch::{ScratchDir, ScratchKind};

const MAGIC: &[u8; 8] = b"SLRLRUN1";
/// The key length that marks the end record.
const END: u32 = u32::MAX;
/// The longest key a run holds; a larger length means a damaged file.
const MAX_KEY_LEN: u32 = 16 << 20;
/// The allocator's share of a key's heap block, counted with its bytes.
const KEY_ALLOC_OVERHEAD: usize = 16;
/// Runs merged at once: bounds open files and read buffers.
const FAN_IN: usize = 16;
const IO_BUFFER: usize = 64 << 10;
const FLAG_LIVE: u8 = 1;
const FLAG_REVISION: u8 = 2;

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
fn checksum(hash: u32, bytes: &[u8]) -> u32 {
    bytes
        .iter()
        .fold(hash, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193))
}

const CHECKSUM_SEED: u32 = 0x811c_9dc5;

fn write_run(
    path: &Path,
    records: impl Iterator<Item = Result<Record, AppliedError>>,
) -> Result<(), AppliedError> {
    let io_error = |source| AppliedError::RepairScratchIo {
        operation: "writing a run",
        path: path.to_owned(),
        source,
    };
    let file = File::create_new(path).map_err(io_error)?;
    let mut out = BufWriter::with_capacity(IO_BUFFER, file);
    out.write_all(MAGIC).map_err(io_error)?;
    let mut count = 0u64;
    for record in records {
        let record = record?;
        let len = u32::try_from(record.key.len())
            .ok()
            .filter(|l| *l <= MAX_KEY_LEN)
            .ok_or_else(|| {
                io_error(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a listed key is longer than a run allows",
                ))
            })?;
        let flags = if record.live { FLAG_LIVE } else { 0 }
            | if record.revision.is_some() {
                FLAG_REVISION
            } else {
                0
            };
        let tail = {
            let mut t = [0u8; 9];
            t[0] = flags;
            t[1..].copy_from_slice(&record.revision.unwrap_or(0).to_le_bytes());
            t
        };
        let len = len.to_le_bytes();
        let sum = [&len[..], record.key.as_bytes(), &tail]
            .iter()
            .fold(CHECKSUM_SEED, |h, part| checksum(h, part));
        for part in [&len[..], record.key.as_bytes(), &tail, &sum.to_le_bytes()] {
            out.write_all(part).map_err(io_error)?;
        }
        count += 1;
    }
    let end = END.to_le_bytes();
    let count = count.to_le_bytes();
    let sum = checksum(checksum(CHECKSUM_SEED, &end), &count);
    for part in [&end[..], &count, &sum.to_le_bytes()] {
        out.write_all(part).map_err(io_error)?;
    }
    out.flush().map_err(io_error)
}

/// Reads one run file back, checking it as it goes.
#[derive(Debug)]
struct RunReader {
    path: PathBuf,
    input: BufReader<File>,
    offset: u64,
    count: u64,
    last: Vec<u8>,
}

impl RunReader {
    fn open(path: &Path) -> Result<Self, AppliedError> {
        let file = File::open(path).map_err(|source| AppliedError::RepairScratchIo {
            operation: "opening a run",
            path: path.to_owned(),
            source,
        })?;
        let mut reader = Self {
            path: path.to_owned(),
            input: BufReader::with_capacity(IO_BUFFER, file),
            offset: 0,
            count: 0,
            last: Vec::new(),
        };
        let mut magic = [0u8; 8];
        reader.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(reader.corrupt("not a run file"));
        }
        Ok(reader)
    }

    fn corrupt(&self, problem: &'static str) -> AppliedError {
        AppliedError::RepairScratchCorrupt {
            path: self.path.clone(),
            offset: self.offset,
            problem,
        }
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), AppliedError> {
        match self.input.read_exact(buf) {
            Ok(()) => {
                self.offset += buf.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(self.corrupt("the file ends inside a record"))
            }
            Err(source) => Err(AppliedError::RepairScratchIo {
                operation: "reading a run",
                path: self.path.clone(),
                source,
            }),
        }
    }

    fn read_array<const N: usize>(&mut self) -> Result<[u8; N], AppliedError> {
        let mut buf = [0u8; N];
        self.read_exact(&mut buf)?;
        Ok(buf)
    }

    /// The next record; `None` after a valid end record.
    fn next_record(&mut self) -> Result<Option<Record>, AppliedError> {
        let len_bytes = self.read_array::<4>()?;
        let len = u32::from_le_bytes(len_bytes);
        if len == END {
            let count = self.read_array::<8>()?;
            let sum = u32::from_le_bytes(self.read_array::<4>()?);
            if sum != checksum(checksum(CHECKSUM_SEED, &len_bytes), &count) {
                return Err(self.corrupt("end record checksum mismatch"));
            }
            if u64::from_le_bytes(count) != self.count {
                return Err(self.corrupt("record count mismatch"));
            }
            let mut extra = [0u8; 1];
            return match self.input.read(&mut extra) {
                Ok(0) => Ok(None),
                Ok(_) => Err(self.corrupt("bytes after the end record")),
                Err(source) => Err(AppliedError::RepairScratchIo {
                    operation: "reading a run",
                    path: self.path.clone(),
                    source,
                }),
            };
        }
        if len > MAX_KEY_LEN {
            return Err(self.corrupt("key length out of bounds"));
        }
        let mut key = vec![0u8; len as usize];
        self.read_exact(&mut key)?;
        let tail = self.read_array::<9>()?;
        let sum = u32::from_le_bytes(self.read_array::<4>()?);
        let expected = [&len_bytes[..], &key, &tail]
            .iter()
            .fold(CHECKSUM_SEED, |h, part| checksum(h, part));
        if sum != expected {
            return Err(self.corrupt("record checksum mismatch"));
        }
        let flags = tail[0];
        if flags & !(FLAG_LIVE | FLAG_REVISION) != 0 {
            return Err(self.corrupt("unknown record flags"));
        }
        if self.count > 0 && key <= self.last {
            return Err(self.corrupt("keys out of order"));
        }
        self.last.clear();
        self.last.extend_from_slice(&key);
        let key = String::from_utf8(key).map_err(|_| self.corrupt("key is not UTF-8"))?;
        self.count += 1;
        let mut revision = [0u8; 8];
        revision.copy_from_slice(&tail[1..]);
        Ok(Some(Record {
            key,
            revision: (flags & FLAG_REVISION != 0).then(|| u64::from_le_bytes(revision)),
            live: flags & FLAG_LIVE != 0,
        }))
    }
}

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

#[cfg(test)]
mod tests;
