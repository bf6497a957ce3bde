//! Reading the log in order, from any record on, while it grows.
//!
//! The shipper of each peer reads the log this way, so a slow peer only falls behind
//! and catches up: nothing is queued in memory for it. A record still being written
//! at the tail reads as "nothing more yet", not as damage.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::record::{self, Format, MAGIC_LEN, Parsed};
use super::{LogError, io_err, list_segments};

/// An open segment and the position in it.
#[derive(Debug)]
struct Position {
    file: File,
    path: PathBuf,
    /// The LSN of the segment's first record.
    first: u64,
    offset: u64,
    /// Its record format.
    format: Format,
    /// Bytes of the segment read ahead, from file offset `buf_at` on: the first
    /// `filled` of `buf` (kept at its size, so a refill does not clear it again).
    buf: Vec<u8>,
    filled: usize,
    buf_at: u64,
}

/// Reads records in log order from a starting LSN.
#[derive(Debug)]
pub struct LogReader {
    dir: PathBuf,
    next_lsn: u64,
    position: Option<Position>,
    /// The LSN at `position.offset` (it lags `next_lsn` while skipping to the start).
    at_lsn: u64,
    /// The appender's count of cut-off appends, and its value when the read-ahead
    /// was read.
    rewrites: Arc<AtomicU64>,
    seen_rewrites: u64,
}

impl LogReader {
    /// A reader of the log in `dir` from `from_lsn` on.
    pub fn open(dir: &Path, from_lsn: u64) -> LogReader {
        Self::new(dir, from_lsn)
    }

    pub(super) fn new(dir: &Path, from_lsn: u64) -> LogReader {
        LogReader {
            dir: dir.to_owned(),
            next_lsn: from_lsn,
            position: None,
            at_lsn: 0,
            rewrites: Arc::default(),
            seen_rewrites: 0,
        }
    }

    /// Drops what it read ahead whenever the appender of the same log cut off a
    /// failed append (`rewrites` is [`super::Log::rewrites`]): bytes read past the
    /// end then are written over by later appends.
    pub fn watching(mut self, rewrites: Arc<AtomicU64>) -> LogReader {
        self.seen_rewrites = rewrites.load(Ordering::Acquire);
        self.rewrites = rewrites;
        self
    }

    /// The LSN of the next record this reader returns.
    pub fn next_lsn(&self) -> u64 {
        self.next_lsn
    }

    /// The next record and its LSN; `None` when the reader has caught up with the
    /// log (call again later for records appended since).
    pub fn next_record(&mut self) -> Result<Option<(u64, Vec<u8>)>, LogError> {
        loop {
            if self.position.is_none() && !self.open_segment()? {
                return Ok(None);
            }
            let Some(pos) = self.position.as_mut() else {
                return Ok(None);
            };
            let current = pos.first;
            let rewrites = self.rewrites.load(Ordering::Acquire);
            if rewrites != self.seen_rewrites {
                self.seen_rewrites = rewrites;
                pos.filled = 0;
                pos.buf_at = pos.offset;
            }
            match read_record(pos)? {
                Some(payload) => {
                    let lsn = self.at_lsn;
                    self.at_lsn += 1;
                    if lsn >= self.next_lsn {
                        self.next_lsn = lsn + 1;
                        return Ok(Some((lsn, payload)));
                    }
                }
                // The end of this segment: move on if another one starts here.
                None if self.another_segment_starts_at(self.at_lsn, current)? => {
                    self.position = None
                }
                None => return Ok(None),
            }
        }
    }

    /// Opens the segment holding `next_lsn` (or the one that will); false when the log
    /// has no segment yet.
    fn open_segment(&mut self) -> Result<bool, LogError> {
        let segments = list_segments(&self.dir)?;
        let start = segments.iter().map(|(first, _)| *first).min();
        let Some((first, path)) = segments
            .into_iter()
            .rev()
            .find(|(first, _)| *first <= self.next_lsn)
        else {
            // Segments, all of them later than the record needed: retention
            // removed it (a log not yet started has none).
            return match start {
                Some(start) => Err(LogError::Removed {
                    lsn: self.next_lsn,
                    start,
                }),
                None => Ok(false),
            };
        };
        let file = File::open(&path).map_err(io_err(&path))?;
        let mut magic = [0u8; MAGIC_LEN];
        if file.read_exact_at(&mut magic, 0).is_err() {
            // Created a moment ago, its magic not written yet: look again later.
            return Ok(false);
        }
        let Some(format) = Format::of(&magic) else {
            return Err(LogError::Corrupt {
                path,
                offset: 0,
                what: "not a meridian log segment (bad magic)".into(),
            });
        };
        self.at_lsn = first;
        self.position = Some(Position {
            file,
            path,
            first,
            offset: MAGIC_LEN as u64,
            format,
            buf: Vec::new(),
            filled: 0,
            buf_at: MAGIC_LEN as u64,
        });
        Ok(true)
    }

    /// Whether a segment other than the current one (which starts at `current`)
    /// starts at `lsn`. A freshly rolled, still empty segment starts where its
    /// predecessor ended, so the current segment must not count.
    /// Whether another segment starts at `lsn`, where the current one (starting
    /// at `current`) ends. A later segment but none at `lsn` means retention
    /// removed the one in between.
    fn another_segment_starts_at(&self, lsn: u64, current: u64) -> Result<bool, LogError> {
        let segments = list_segments(&self.dir)?;
        if segments
            .iter()
            .any(|(first, _)| *first == lsn && *first != current)
        {
            return Ok(true);
        }
        match segments
            .iter()
            .map(|(first, _)| *first)
            .find(|first| *first > lsn)
        {
            Some(start) => Err(LogError::Removed { lsn, start }),
            None => Ok(false),
        }
    }
}

/// Bytes read ahead at a time: a reader takes the records of a busy log in few
/// reads, not two reads and a `stat` per record.
const READ_AHEAD: usize = 256 << 10;

/// Reads the record at the position, advancing past it; `None` at the end of what is
/// written so far (including a record still being written).
fn read_record(pos: &mut Position) -> Result<Option<Vec<u8>>, LogError> {
    let header_len = pos.format.header_len();
    let mut refilled = false;
    loop {
        let rel = (pos.offset - pos.buf_at) as usize;
        let avail = pos.buf[..pos.filled].get(rel..).unwrap_or_default();
        let need = match avail.get(..4) {
            Some(len) if avail.len() >= header_len => {
                let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
                header_len + len.min(super::MAX_RECORD + 1)
            }
            _ => header_len,
        };
        if avail.len() < need && !refilled {
            refill(pos, need)?;
            refilled = true;
            continue;
        }
        if avail.len() < header_len {
            return Ok(None);
        }
        return match record::parse(&avail[..need.min(avail.len())], pos.format) {
            Parsed::Record(payload) => {
                let payload = payload.to_vec();
                pos.offset += (header_len + payload.len()) as u64;
                Ok(Some(payload))
            }
            // Still being written: the appender writes each batch with one call.
            Parsed::Incomplete(_) | Parsed::LastBadChecksum(_) | Parsed::BadHeader(_) => Ok(None),
            Parsed::Corrupt(what) => Err(LogError::Corrupt {
                path: pos.path.clone(),
                offset: pos.offset,
                what,
            }),
        };
    }
}

/// Reads ahead from the position: at least `need` bytes where the file has them.
fn refill(pos: &mut Position, need: usize) -> Result<(), LogError> {
    let want = need.max(READ_AHEAD);
    if pos.buf.len() < want {
        // Zeroed once: later refills read over it (at the log's tail a refill finds
        // a few bytes, and clearing the whole read-ahead each time cost more than
        // the read).
        pos.buf.resize(want, 0);
    }
    pos.filled = 0;
    pos.buf_at = pos.offset;
    let mut filled = 0;
    while filled < want {
        match pos
            .file
            .read_at(&mut pos.buf[filled..want], pos.offset + filled as u64)
        {
            Ok(0) => break,
            // A short read of a file is its end for now: asking again finds nothing
            // (a shipper at the log's tail read twice per refill, half of them empty).
            Ok(n) if n < want - filled => {
                filled += n;
                break;
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(&pos.path)(e)),
        }
    }
    pos.filled = filled;
    Ok(())
}
