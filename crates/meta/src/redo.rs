//! The redo log: how a commit becomes durable with one `fdatasync` of a small append instead of
//! a database commit.
//!
//! Every commit's write set (the last put or delete of each key it wrote) is appended to one
//! preallocated file as a record, and the commit itself goes into the store's memtable, not the
//! database. A commit is durable once its record is synced; [`crate::store::RedbStore`]
//! checkpoints now and then (a synced database commit of the memtable that also stores the
//! sequence number of the last record it holds). A full checkpoint starts the log over; a
//! periodic one leaves it as it is, since newer records may follow the ones it applied. At open,
//! the records up to the stored number are skipped and the ones after it applied again.
//!
//! Record: `len: u32 LE | crc32c(seq ‖ payload): u32 LE | seq: u64 LE | payload`. The log is
//! read from its start while records are whole, their checksums match and their sequence
//! numbers follow each other: a torn last record, or records left from before the log was
//! started over (lower numbers), end it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const HEADER: usize = 16;
/// Preallocated with zeros so that an append overwrites allocated blocks and `fdatasync` has no
/// file metadata to write.
pub const CAPACITY: u64 = 64 << 20;

/// An open redo log.
pub struct RedoLog {
    file: File,
    path: PathBuf,
    pos: u64,
    next_seq: u64,
    unsynced: bool,
}

/// A record read back at open.
pub struct Record {
    /// Its sequence number.
    pub seq: u64,
    /// The encoded write set.
    pub payload: Vec<u8>,
}

impl RedoLog {
    /// Open (creating and preallocating if needed) the log at `path` and read its records.
    pub fn open(path: &Path) -> std::io::Result<(RedoLog, Vec<Record>)> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let records = parse(&bytes);
        let len = bytes.len() as u64;
        if len < CAPACITY {
            if let Err(e) = preallocate(&file, len) {
                // The disk gets its space back; the next open preallocates again.
                let _ = file.set_len(len);
                return Err(e);
            }
        }
        file.seek(SeekFrom::Start(0))?;
        let log = RedoLog {
            file,
            path: path.to_path_buf(),
            pos: 0,
            next_seq: 1,
            unsynced: false,
        };
        Ok((log, records))
    }

    /// Where the log is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes written since the log was started over.
    pub fn len(&self) -> u64 {
        self.pos
    }

    /// Whether nothing was written since the log was started over.
    pub fn is_empty(&self) -> bool {
        self.pos == 0
    }

    /// The sequence number of the last record appended (0 if none ever).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Append one record (not yet durable: see [`RedoLog::sync`]); returns its number.
    pub fn append(&mut self, payload: &[u8]) -> std::io::Result<u64> {
        let seq = self.next_seq;
        let mut rec = Vec::with_capacity(HEADER + payload.len());
        rec.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        rec.extend_from_slice(&checksum(seq, payload).to_le_bytes());
        rec.extend_from_slice(&seq.to_le_bytes());
        rec.extend_from_slice(payload);
        self.file.write_all_at(&rec, self.pos)?;
        self.pos += rec.len() as u64;
        self.next_seq += 1;
        self.unsynced = true;
        Ok(seq)
    }

    /// Make every appended record durable.
    pub fn sync(&mut self) -> std::io::Result<()> {
        if self.unsynced {
            self.file.sync_data()?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// Start over from the beginning, after a checkpoint made every record redundant. Record
    /// numbers go on from where they were, so the old records left behind the new ones are not
    /// taken for their continuation.
    /// A log that grew past its preallocated size (checkpoints failing meanwhile) is cut back to
    /// it, giving the disk its space again.
    pub fn restart(&mut self, next_seq: u64) {
        if self.file.metadata().is_ok_and(|m| m.len() > CAPACITY) {
            if let Err(e) = self.file.set_len(CAPACITY) {
                tracing::debug!(path = %self.path.display(), "cannot shorten the redo log: {e}");
            }
        }
        self.pos = 0;
        self.next_seq = self.next_seq.max(next_seq);
        self.unsynced = false;
    }
}

fn preallocate(file: &File, from: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; 1 << 20];
    let mut at = from;
    while at < CAPACITY {
        let n = (CAPACITY - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    file.sync_all()
}

fn checksum(seq: u64, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&seq.to_le_bytes()), payload)
}

/// The valid prefix of a log's bytes.
fn parse(bytes: &[u8]) -> Vec<Record> {
    let mut out: Vec<Record> = Vec::new();
    let mut at = 0usize;
    while at + HEADER <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        let seq = u64::from_le_bytes(bytes[at + 8..at + 16].try_into().expect("8 bytes"));
        let Some(payload) = bytes.get(at + HEADER..at + HEADER + len) else {
            break;
        };
        if seq == 0 || checksum(seq, payload) != crc {
            break;
        }
        if let Some(prev) = out.last() {
            if seq != prev.seq + 1 {
                break;
            }
        }
        out.push(Record {
            seq,
            payload: payload.to_vec(),
        });
        at += HEADER + len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_torn_tail_ends_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("redo");
        {
            let (mut log, recs) = RedoLog::open(&p).unwrap();
            assert!(recs.is_empty());
            assert_eq!(std::fs::metadata(&p).unwrap().len(), CAPACITY);
            log.append(b"one").unwrap();
            log.append(b"two").unwrap();
            log.append(b"three").unwrap();
            log.sync().unwrap();
        }
        let (_, recs) = RedoLog::open(&p).unwrap();
        let got: Vec<_> = recs.iter().map(|r| (r.seq, r.payload.clone())).collect();
        assert_eq!(
            got,
            vec![
                (1, b"one".to_vec()),
                (2, b"two".to_vec()),
                (3, b"three".to_vec())
            ]
        );
        // Tear the third record: the first two remain.
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        let third = (HEADER + 3) * 2;
        f.write_all_at(b"X", (third + HEADER + 1) as u64).unwrap();
        let (_, recs) = RedoLog::open(&p).unwrap();
        assert_eq!(recs.len(), 2);
    }

    #[test]
    fn records_left_from_before_a_restart_are_not_read_as_new() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("redo");
        let (mut log, _) = RedoLog::open(&p).unwrap();
        for i in 0..5u8 {
            log.append(&[i; 40]).unwrap();
        }
        log.restart(6);
        log.append(b"new").unwrap();
        log.sync().unwrap();
        drop(log);
        let (_, recs) = RedoLog::open(&p).unwrap();
        let got: Vec<_> = recs.iter().map(|r| r.seq).collect();
        assert_eq!(got, vec![6]);
    }
}
