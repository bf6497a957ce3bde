//! The durable replication log: every change this datacenter commits, in order.
//!
//! The log is a directory of segment files `<first lsn, 20 digits>.seg`. A segment
//! starts with an 8-byte magic and holds records, each with a header of its length
//! and checksums (see [`record`]). A log sequence number (LSN) counts records from
//! the start of the log.
//!
//! Retention removes whole segments from the front. The file `base` then records
//! where the log starts: the first kept LSN and an opaque description of everything
//! before it (the engine stores the version vector those records reach). It is
//! written, synced and renamed into place before any segment is removed.
//!
//! On open, a record cut short at the end of the newest segment (a torn write from a
//! crash) is truncated with a warning; a damaged record with an intact record
//! anywhere after it is corruption, and opening fails naming the segment and
//! offset, because truncating it would lose acknowledged writes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

mod reader;
mod record;

pub use reader::LogReader;
use record::{Format, MAGIC_LEN, Parsed};

/// Bytes of a record's header in the format written now.
#[cfg(test)]
pub(crate) const RECORD_HEADER: usize = 12;
/// A segment is closed and a new one started past this size (tests; the engine
/// passes its own setting).
#[cfg(test)]
const SEGMENT_BYTES: u64 = 64 << 20;
/// The largest record the log accepts (a change of a few large values).
pub const MAX_RECORD: usize = 512 << 20;

/// Why the log could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A file operation failed.
    #[error("replication log {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// A damaged record that is not a torn tail: the log cannot be trusted past it.
    #[error(
        "replication log segment {path} is corrupt at byte offset {offset}: {what}; \
         the proxy will not start on a damaged log (restore the segment or bootstrap this datacenter again)"
    )]
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// Where the bad record starts.
        offset: u64,
        /// What is wrong with it.
        what: String,
    },
    /// A record larger than [`MAX_RECORD`].
    #[error("a change of {0} bytes is larger than the log's limit of {MAX_RECORD} bytes")]
    RecordTooLarge(usize),
    /// The records a reader needs next were removed by log retention.
    #[error(
        "replication log records from {lsn} on were removed by log retention (the log now starts at {start})"
    )]
    Removed {
        /// The record the reader needed.
        lsn: u64,
        /// Where the log starts now.
        start: u64,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_owned(),
        source,
    }
}

/// An open log, positioned for appending.
#[derive(Debug)]
pub struct Log {
    dir: PathBuf,
    file: File,
    file_path: PathBuf,
    file_len: u64,
    next_lsn: u64,
    dirty: bool,
    segment_bytes: u64,
    /// Times a failed append was cut off again: bytes past the end were written
    /// and will be written over, so readers drop what they read ahead.
    rewrites: Arc<AtomicU64>,
    /// The write buffer, kept between appends.
    buf: Vec<u8>,
}

/// Largest write buffer kept between appends.
const KEEP_BUFFER: usize = 1 << 20;

/// What opening the log found.
#[derive(Debug)]
pub struct Recovered {
    /// Records in the log (read them with [`Log::reader`]): the next LSN.
    pub records: u64,
    /// Where the log starts and what its owner recorded of the records before it
    /// (`(0, empty)` for a log never truncated).
    pub base: (u64, Vec<u8>),
    /// Bytes cut from a torn tail, if any.
    pub truncated_bytes: u64,
}

impl Log {
    /// Opens (or creates) the log in `dir`, checking every record, truncating a torn
    /// tail and refusing a damaged log.
    #[cfg(test)]
    pub fn open(dir: &Path) -> Result<(Log, Recovered), LogError> {
        Self::open_sized(dir, SEGMENT_BYTES)
    }

    /// [`Log::open`] with segments closed past `segment_bytes`.
    pub fn open_sized(dir: &Path, segment_bytes: u64) -> Result<(Log, Recovered), LogError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let base = read_base(dir)?;
        let mut segments = segments_from(dir, base.0)?;
        let (records, truncated_bytes, format) = recover(&segments, base.0)?;
        let (first, mut file_path) = segments.pop().unwrap_or_else(|| (0, segment_path(dir, 0)));
        if format != Format::CURRENT {
            // Appends go to a segment of the current format.
            if first == records {
                fs::remove_file(&file_path).map_err(io_err(&file_path))?;
            } else {
                file_path = segment_path(dir, records);
            }
            create_segment(&file_path)?;
        }
        let file = OpenOptions::new()
            .append(true)
            .open(&file_path)
            .map_err(io_err(&file_path))?;
        let file_len = file.metadata().map_err(io_err(&file_path))?.len();
        let log = Log {
            dir: dir.to_owned(),
            file,
            file_path,
            file_len,
            next_lsn: records,
            dirty: false,
            segment_bytes,
            rewrites: Arc::default(),
            buf: Vec::new(),
        };
        Ok((
            log,
            Recovered {
                records,
                base,
                truncated_bytes,
            },
        ))
    }

    /// A reader of the records from `from_lsn` on, including those appended later.
    pub fn reader(&self, from_lsn: u64) -> reader::LogReader {
        reader::LogReader::new(&self.dir, from_lsn)
    }

    /// The LSN the next record will get.
    pub fn next_lsn(&self) -> u64 {
        self.next_lsn
    }

    /// Appends `payloads` as records (see [`Log::append_with`]).
    #[cfg(test)]
    pub fn append<'a>(
        &mut self,
        payloads: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<u64, LogError> {
        self.append_with(payloads, |payload, out| out.extend_from_slice(payload))
    }

    /// Appends a record for each of `items`, its payload written by `encode`
    /// straight into the write buffer, with one write; returns the LSN of the
    /// first. The records are in the operating system's hands when this returns
    /// (they survive the process being killed); call [`Log::sync`] to make them
    /// survive a power loss.
    pub fn append_with<T>(
        &mut self,
        items: impl IntoIterator<Item = T>,
        mut encode: impl FnMut(T, &mut Vec<u8>),
    ) -> Result<u64, LogError> {
        if self.file_len >= self.segment_bytes {
            self.roll()?;
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let mut count = 0;
        for item in items {
            let len = record::encode_with(&mut buf, |out| encode(item, out));
            if len > MAX_RECORD {
                return Err(LogError::RecordTooLarge(len));
            }
            count += 1;
        }
        let written = self.write_buffer(&buf, count);
        // Kept for the next append, unless a big batch made it big.
        if buf.capacity() <= KEEP_BUFFER {
            self.buf = buf;
        }
        written
    }

    fn write_buffer(&mut self, buf: &[u8], count: u64) -> Result<u64, LogError> {
        let first = self.next_lsn;
        if let Err(e) = self.file.write_all(buf) {
            // A partial write leaves a torn record; cut it so later appends stay readable.
            let _ = self.file.set_len(self.file_len);
            self.rewrites.fetch_add(1, Ordering::Release);
            return Err(io_err(&self.file_path)(e));
        }
        self.file_len += buf.len() as u64;
        self.next_lsn += count;
        self.dirty = true;
        Ok(first)
    }

    /// The count of failed appends cut off again, for readers (see
    /// [`LogReader::watching`]).
    pub fn rewrites(&self) -> Arc<AtomicU64> {
        self.rewrites.clone()
    }

    /// Whether records were appended since the last sync.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Flushes appended records to stable storage, if any are pending.
    pub fn sync(&mut self) -> Result<(), LogError> {
        if self.dirty {
            self.file.sync_data().map_err(io_err(&self.file_path))?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Flushes the current segment to stable storage whether or not records are
    /// pending here (a sync handed over with [`Log::take_sync`] may still be running).
    pub fn sync_now(&mut self) -> Result<(), LogError> {
        self.file.sync_data().map_err(io_err(&self.file_path))?;
        self.dirty = false;
        Ok(())
    }

    /// Hands over the sync of what is appended so far: a second handle on the
    /// current segment (its `sync_data` covers every append before this call) and
    /// the segment's path for errors; `None` when nothing is pending. The log counts
    /// the records as synced; the caller must sync the handle.
    pub fn take_sync(&mut self) -> Result<Option<(File, PathBuf)>, LogError> {
        if !self.dirty {
            return Ok(None);
        }
        let file = self.file.try_clone().map_err(io_err(&self.file_path))?;
        self.dirty = false;
        Ok(Some((file, self.file_path.clone())))
    }

    /// Closes the current segment and starts the next at the current position.
    pub fn roll(&mut self) -> Result<(), LogError> {
        if self.file_len <= MAGIC_LEN as u64 {
            return Ok(()); // The current segment is empty: it already starts here.
        }
        self.sync()?;
        let path = segment_path(&self.dir, self.next_lsn);
        create_segment(&path)?;
        self.file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        self.file_path = path;
        self.file_len = MAGIC_LEN as u64;
        Ok(())
    }
}

/// Removes the segments wholly before `lsn` (never the newest), after recording the
/// new start and `describe(start)` of the records before it in `base`. Returns the
/// new start, or `None` when no segment could go. Safe beside a running appender and
/// readers: the appender only touches the newest segment, and a reader holding a
/// removed segment open reads on to its end.
pub fn truncate_before<E: std::fmt::Display>(
    dir: &Path,
    lsn: u64,
    describe: impl FnOnce(u64) -> Result<Vec<u8>, E>,
) -> Result<Option<u64>, LogError> {
    let segments = list_segments(dir)?;
    let Some(start) = segments
        .iter()
        .skip(1)
        .map(|(first, _)| *first)
        .take_while(|first| *first <= lsn)
        .last()
    else {
        return Ok(None);
    };
    let bytes = describe(start).map_err(|what| LogError::Corrupt {
        path: dir.to_owned(),
        offset: 0,
        what: what.to_string(),
    })?;
    write_base(dir, start, &bytes)?;
    for (_, path) in segments.iter().take_while(|(first, _)| *first < start) {
        fs::remove_file(path).map_err(io_err(path))?;
    }
    Ok(Some(start))
}

/// The segments from the base on, oldest first: finishes a truncation a crash
/// interrupted (the base is written first), and creates the first segment of a
/// new log.
fn segments_from(dir: &Path, base: u64) -> Result<Vec<(u64, PathBuf)>, LogError> {
    let mut segments = list_segments(dir)?;
    while segments.len() > 1 && segments[1].0 <= base {
        let (_, path) = segments.remove(0);
        fs::remove_file(&path).map_err(io_err(&path))?;
    }
    if segments.is_empty() {
        let path = segment_path(dir, base);
        create_segment(&path)?;
        segments.push((base, path));
    }
    Ok(segments)
}

/// Checks every record of every segment, truncating a torn tail of the last one;
/// returns the next LSN, how many bytes were truncated, and the last segment's
/// format.
fn recover(segments: &[(u64, PathBuf)], base: u64) -> Result<(u64, u64, Format), LogError> {
    let mut records = segments.first().map_or(base, |s| s.0);
    if records != base {
        return Err(LogError::Corrupt {
            path: segments[0].1.clone(),
            offset: 0,
            what: format!("the log starts at record {records}, but its base file says {base}"),
        });
    }
    let mut truncated_bytes = 0;
    let mut format = Format::CURRENT;
    let last = segments.len().saturating_sub(1);
    for (i, (first_lsn, path)) in segments.iter().enumerate() {
        if *first_lsn != records {
            let what = format!(
                "segment starts at record {first_lsn}, but the segments before it end at record {records}"
            );
            return Err(LogError::Corrupt {
                path: path.clone(),
                offset: 0,
                what,
            });
        }
        let scan = scan_segment(path, i == last)?;
        records += scan.records;
        format = scan.format;
        if scan.torn > 0 {
            tracing::warn!(segment = %path.display(), offset = scan.good_len, bytes = scan.torn, "truncating a torn record at the end of the replication log");
            let f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(io_err(path))?;
            f.set_len(scan.good_len).map_err(io_err(path))?;
            f.sync_all().map_err(io_err(path))?;
            truncated_bytes = scan.torn;
        }
    }
    Ok((records, truncated_bytes, format))
}

/// The first LSN of each segment, oldest first, with its size in bytes.
pub fn segments(dir: &Path) -> Result<Vec<(u64, u64)>, LogError> {
    list_segments(dir)?
        .into_iter()
        .map(|(first, path)| Ok((first, fs::metadata(&path).map_err(io_err(&path))?.len())))
        .collect()
}

const BASE_FILE: &str = "base";
const BASE_MAGIC: &[u8; 8] = b"MRDNBAS1";

fn read_base(dir: &Path) -> Result<(u64, Vec<u8>), LogError> {
    let path = dir.join(BASE_FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((0, Vec::new())),
        Err(e) => return Err(io_err(&path)(e)),
    };
    let corrupt = |what: &str| LogError::Corrupt {
        path: path.clone(),
        offset: 0,
        what: what.to_owned(),
    };
    if bytes.len() < 20 || &bytes[..8] != BASE_MAGIC {
        return Err(corrupt("not a meridian log base file"));
    }
    let lsn = u64::from_le_bytes(bytes[8..16].try_into().unwrap_or_default());
    let crc = u32::from_le_bytes(bytes[16..20].try_into().unwrap_or_default());
    let body = &bytes[20..];
    if crc32fast::hash(body) != crc {
        return Err(corrupt("checksum mismatch"));
    }
    Ok((lsn, body.to_vec()))
}

fn write_base(dir: &Path, lsn: u64, body: &[u8]) -> Result<(), LogError> {
    let tmp = dir.join("base.tmp");
    let mut bytes = BASE_MAGIC.to_vec();
    bytes.extend_from_slice(&lsn.to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    bytes.extend_from_slice(body);
    {
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(&bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    let path = dir.join(BASE_FILE);
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

pub(crate) fn segment_path(dir: &Path, first_lsn: u64) -> PathBuf {
    dir.join(format!("{first_lsn:020}.seg"))
}

fn create_segment(path: &Path) -> Result<(), LogError> {
    let mut f = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(Format::CURRENT.magic()).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
    }
    Ok(())
}

pub(crate) fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, LogError> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(first) = name
            .strip_suffix(".seg")
            .and_then(|n| n.parse::<u64>().ok())
        {
            segments.push((first, path));
        }
    }
    segments.sort();
    Ok(segments)
}

/// What checking one segment found.
struct Scan {
    records: u64,
    good_len: u64,
    torn: u64,
    format: Format,
}

/// Checks one segment's records. For the newest segment, a bad record with no
/// intact record after it is a torn tail to cut; anything else bad is corruption.
fn scan_segment(path: &Path, newest: bool) -> Result<Scan, LogError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io_err(path))?;
    let corrupt = |offset: usize, what: String| LogError::Corrupt {
        path: path.to_owned(),
        offset: offset as u64,
        what,
    };
    let Some(format) = Format::of(&bytes) else {
        if newest && bytes.len() < MAGIC_LEN && Format::CURRENT.magic().starts_with(&bytes) {
            return rewrite_magic(path);
        }
        return Err(corrupt(0, "not a meridian log segment (bad magic)".into()));
    };
    let mut at = MAGIC_LEN;
    let mut records = 0;
    while at < bytes.len() {
        let what = match record::parse(&bytes[at..], format) {
            Parsed::Record(payload) => {
                at += format.header_len() + payload.len();
                records += 1;
                continue;
            }
            Parsed::Corrupt(what) => return Err(corrupt(at, what)),
            Parsed::Incomplete(what) | Parsed::LastBadChecksum(what) | Parsed::BadHeader(what) => {
                what
            }
        };
        if !newest {
            return Err(corrupt(at, what));
        }
        if format == Format::V2
            && let Some(next) = record::intact_record_after(&bytes, at + 1)
        {
            return Err(corrupt(
                at,
                format!(
                    "{what}, and an intact record follows at byte offset {next}: this is damage, not a write cut short by a crash"
                ),
            ));
        }
        return Ok(Scan {
            records,
            good_len: at as u64,
            torn: (bytes.len() - at) as u64,
            format,
        });
    }
    Ok(Scan {
        records,
        good_len: at as u64,
        torn: 0,
        format,
    })
}

/// A newest segment whose magic was cut short by a crash right after creation.
fn rewrite_magic(path: &Path) -> Result<Scan, LogError> {
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(Format::CURRENT.magic())
        .and_then(|_| f.sync_all())
        .map_err(io_err(path))?;
    Ok(Scan {
        records: 0,
        good_len: MAGIC_LEN as u64,
        torn: 0,
        format: Format::CURRENT,
    })
}

#[cfg(test)]
mod tests;
