//! A run file: one sorted run of a relist's listed records.
//!
//! Layout (little endian): an 8-byte magic; records
//! `[u32 key length][key][u8 flags][u64 revision][u32 checksum]`, the
//! checksum covering the record's bytes before it; an end record
//! `[u32::MAX][u64 record count][u32 checksum]`. Reading checks the magic,
//! every length bound and checksum, UTF-8, strictly ascending keys, the
//! count and that nothing follows the end record, so a truncated or damaged
//! run is an error and never a shorter listing.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::Record;
use crate::error::AppliedError;

const MAGIC: &[u8; 8] = b"SLRLRUN1";
/// The key length that marks the end record.
const END: u32 = u32::MAX;
/// The longest key a run holds; a larger length means a damaged file.
const MAX_KEY_LEN: u32 = 16 << 20;
const IO_BUFFER: usize = 64 << 10;
const FLAG_LIVE: u8 = 1;
const FLAG_REVISION: u8 = 2;

fn checksum(hash: u32, bytes: &[u8]) -> u32 {
    bytes
        .iter()
        .fold(hash, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193))
}

const CHECKSUM_SEED: u32 = 0x811c_9dc5;

pub(super) fn write_run(
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
pub(super) struct RunReader {
    path: PathBuf,
    input: BufReader<File>,
    offset: u64,
    count: u64,
    last: Vec<u8>,
}

impl RunReader {
    pub(super) fn open(path: &Path) -> Result<Self, AppliedError> {
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
    pub(super) fn next_record(&mut self) -> Result<Option<Record>, AppliedError> {
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
