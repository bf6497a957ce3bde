use super::*;

fn payloads(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| format!("change number {i}").into_bytes())
        .collect()
}

fn append_all(log: &mut Log, items: &[Vec<u8>]) {
    log.append(items.iter().map(Vec::as_slice)).unwrap();
}

/// Every record from `from` on, through a reader.
fn all(log: &Log, from: u64) -> Vec<(u64, Vec<u8>)> {
    let mut reader = log.reader(from);
    let mut out = Vec::new();
    while let Some(record) = reader.next_record().unwrap() {
        out.push(record);
    }
    out
}

/// A closed log of `n` records whose only segment `damage` then rewrites.
fn damaged(n: usize, damage: impl FnOnce(&mut Vec<u8>)) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path()).unwrap();
    append_all(&mut log, &payloads(n));
    drop(log);
    let seg = only_segment(dir.path());
    let mut bytes = fs::read(&seg).unwrap();
    damage(&mut bytes);
    fs::write(&seg, bytes).unwrap();
    (dir, seg)
}

fn only_segment(dir: &Path) -> PathBuf {
    list_segments(dir).unwrap().pop().unwrap().1
}

#[test]
fn records_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, rec) = Log::open(dir.path()).unwrap();
    assert_eq!(rec.records, 0);
    append_all(&mut log, &payloads(3));
    assert_eq!(log.append([&b"more"[..]]).unwrap(), 3);
    log.sync().unwrap();
    drop(log);
    let (log, rec) = Log::open(dir.path()).unwrap();
    assert_eq!(rec.records, 4);
    assert_eq!(all(&log, 0)[3], (3, b"more".to_vec()));
    assert_eq!(log.next_lsn(), 4);
}

#[test]
fn a_torn_tail_is_truncated_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path()).unwrap();
    append_all(&mut log, &payloads(5));
    drop(log);
    let seg = only_segment(dir.path());
    let len = fs::metadata(&seg).unwrap().len();
    // Cut the last record in half, as a crash in the middle of a write would.
    OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 6)
        .unwrap();
    let (mut log, rec) = Log::open(dir.path()).unwrap();
    assert_eq!(rec.records, 4);
    assert!(rec.truncated_bytes > 0);
    append_all(&mut log, &[b"after".to_vec()]);
    drop(log);
    let (log, _) = Log::open(dir.path()).unwrap();
    assert_eq!(all(&log, 0).last().unwrap(), &(4, b"after".to_vec()));
}

#[test]
fn a_bad_checksum_on_the_last_record_is_a_torn_tail() {
    let (dir, _) = damaged(3, |bytes| {
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
    });
    let (_, rec) = Log::open(dir.path()).unwrap();
    assert_eq!(rec.records, 2);
}

#[test]
fn corruption_before_the_tail_is_reported_with_segment_and_offset() {
    // Damage the payload of the first record (it starts after the magic and header).
    let (dir, seg) = damaged(3, |bytes| bytes[8 + RECORD_HEADER + 2] ^= 0x01);
    let err = Log::open(dir.path()).unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(err, LogError::Corrupt { offset: 8, .. }),
        "{message}"
    );
    assert!(
        message.contains(&seg.display().to_string()) && message.contains("checksum mismatch"),
        "{message}"
    );
}

#[test]
fn a_file_that_is_not_a_segment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("00000000000000000000.seg"),
        b"hello world, not a log",
    )
    .unwrap();
    let err = Log::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("bad magic"), "{err}");
}

#[test]
fn a_reader_starts_anywhere_and_follows_appends_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    // Tiny segments: every batch below rolls to a new one.
    let (mut log, _) = Log::open_sized(dir.path(), 20).unwrap();
    append_all(&mut log, &payloads(3));
    let mut reader = log.reader(1);
    assert_eq!(
        reader.next_record().unwrap(),
        Some((1, b"change number 1".to_vec()))
    );
    assert_eq!(
        reader.next_record().unwrap(),
        Some((2, b"change number 2".to_vec()))
    );
    assert_eq!(reader.next_record().unwrap(), None, "caught up");
    for batch in 0..4 {
        append_all(&mut log, &[format!("later {batch}").into_bytes()]);
    }
    assert!(
        list_segments(dir.path()).unwrap().len() > 2,
        "the log rolled"
    );
    let later: Vec<u64> = std::iter::from_fn(|| reader.next_record().unwrap())
        .map(|(lsn, _)| lsn)
        .collect();
    assert_eq!(later, vec![3, 4, 5, 6]);
    assert_eq!(all(&log, 0).len(), 7);
    assert_eq!(
        all(&log, 5).iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![5, 6]
    );
    drop(log);
    let (log, rec) = Log::open_sized(dir.path(), 20).unwrap();
    assert_eq!(rec.records, 7);
    assert_eq!(all(&log, 0).len(), 7, "reopening reads every segment");
}

#[test]
fn a_record_still_being_written_reads_as_not_yet() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path()).unwrap();
    append_all(&mut log, &payloads(2));
    let seg = only_segment(dir.path());
    // Half of a third record, as a reader might see mid-write.
    let payload = b"change number 2";
    let mut record = Vec::new();
    super::record::encode(&mut record, payload);
    let mut file = OpenOptions::new().append(true).open(&seg).unwrap();
    file.write_all(&record[..10]).unwrap();
    let mut reader = log.reader(0);
    assert_eq!(reader.next_record().unwrap().map(|r| r.0), Some(0));
    assert_eq!(reader.next_record().unwrap().map(|r| r.0), Some(1));
    assert_eq!(
        reader.next_record().unwrap(),
        None,
        "the half-written record is not returned"
    );
    file.write_all(&record[10..]).unwrap();
    assert_eq!(
        reader.next_record().unwrap(),
        Some((2, payload.to_vec())),
        "and is once complete"
    );
}

#[test]
fn truncation_keeps_whole_segments_records_a_base_and_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open_sized(dir.path(), 200).unwrap();
    let items = payloads(60);
    for item in &items {
        append_all(&mut log, std::slice::from_ref(item));
    }
    let before = segments(dir.path()).unwrap();
    assert!(before.len() > 3, "{before:?}");
    // Cut before record 30: the segments wholly before the one holding it go.
    let start = truncate_before(dir.path(), 30, |lsn| {
        Ok::<_, String>(format!("vector at {lsn}").into_bytes())
    })
    .unwrap()
    .unwrap();
    assert!(start <= 30 && start > 0, "{start}");
    let after = segments(dir.path()).unwrap();
    assert_eq!(after[0].0, start);
    assert_eq!(all(&log, start)[0], (start, items[start as usize].clone()));
    drop(log);
    let (log, recovered) = Log::open_sized(dir.path(), 200).unwrap();
    assert_eq!(
        recovered.base,
        (start, format!("vector at {start}").into_bytes())
    );
    assert_eq!(recovered.records, 60);
    assert_eq!(all(&log, start).len(), 60 - start as usize);
    // Nothing before the newest segment's start can go twice; the newest stays.
    assert_eq!(
        truncate_before(dir.path(), start, |_| Ok::<_, String>(Vec::new())).unwrap(),
        None
    );
    truncate_before(dir.path(), u64::MAX, |_| Ok::<_, String>(Vec::new())).unwrap();
    assert_eq!(segments(dir.path()).unwrap().len(), 1);
}

/// A reader behind what retention removed says so, whether it starts there or
/// reaches the gap while reading, rather than taking the gap for the log's end.
#[test]
fn a_reader_behind_the_retained_log_is_told_its_records_were_removed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open_sized(dir.path(), 200).unwrap();
    for item in &payloads(60) {
        append_all(&mut log, std::slice::from_ref(item));
    }
    // A reader in the first segment, which has read part of it.
    let mut behind = log.reader(0);
    assert_eq!(behind.next_record().unwrap().map(|(lsn, _)| lsn), Some(0));
    let start = truncate_before(dir.path(), 40, |_| Ok::<_, String>(Vec::new()))
        .unwrap()
        .unwrap();
    assert!(start > 5, "{start}");
    let removed = |r: Result<Option<(u64, Vec<u8>)>, LogError>| matches!(r, Err(LogError::Removed { start: s, .. }) if s == start);
    // It reads on to the end of its (unlinked, still open) segment, then learns
    // the next one is gone.
    let mut result = behind.next_record();
    while let Ok(Some(_)) = result {
        result = behind.next_record();
    }
    assert!(removed(result), "reading on");
    assert!(
        removed(log.reader(2).next_record()),
        "starting before the log"
    );
    assert_eq!(
        log.reader(start).next_record().unwrap().map(|(lsn, _)| lsn),
        Some(start)
    );
}

#[test]
fn a_truncation_cut_short_by_a_crash_is_finished_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open_sized(dir.path(), 200).unwrap();
    for item in &payloads(40) {
        append_all(&mut log, std::slice::from_ref(item));
    }
    drop(log);
    let second = segments(dir.path()).unwrap()[1].0;
    // The base is written first; the crash came before any segment was removed.
    write_base(dir.path(), second, b"v").unwrap();
    let (log, recovered) = Log::open_sized(dir.path(), 200).unwrap();
    assert_eq!(recovered.base.0, second);
    assert_eq!(segments(dir.path()).unwrap()[0].0, second);
    assert_eq!(all(&log, second).len(), 40 - second as usize);
}

#[test]
fn a_damaged_base_or_a_gap_before_the_first_segment_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open_sized(dir.path(), 200).unwrap();
    for item in &payloads(40) {
        append_all(&mut log, std::slice::from_ref(item));
    }
    drop(log);
    let start = truncate_before(dir.path(), 20, |_| Ok::<_, String>(b"v".to_vec()))
        .unwrap()
        .unwrap();
    let base = dir.path().join("base");
    let mut bytes = fs::read(&base).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&base, bytes).unwrap();
    let err = Log::open_sized(dir.path(), 200).unwrap_err().to_string();
    assert!(err.contains("base") && err.contains("checksum"), "{err}");
    // Without its base file the log would start at `start` with no account of
    // the records before it.
    fs::remove_file(&base).unwrap();
    let err = Log::open_sized(dir.path(), 200).unwrap_err().to_string();
    assert!(
        err.contains(&format!(
            "the log starts at record {start}, but its base file says 0"
        )),
        "{err}"
    );
}

/// The offset of record `index` in a segment of `payloads(n)` written now.
fn offset_of(index: usize) -> usize {
    8 + payloads(index)
        .iter()
        .map(|p| RECORD_HEADER + p.len())
        .sum::<usize>()
}

#[test]
fn a_damaged_length_mid_segment_is_corruption_and_nothing_is_truncated() {
    // One bit flipped in the high byte of a length in the middle of the newest
    // segment: once taken for a torn write, which dropped the half of the log
    // after it. Now it stops the start, naming the segment and the offset.
    let at = offset_of(1500);
    let (dir, seg) = damaged(3000, |bytes| bytes[at + 3] ^= 0x40);
    let size = fs::metadata(&seg).unwrap().len();
    let err = Log::open(dir.path()).unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(&err, LogError::Corrupt { offset, .. } if *offset == at as u64),
        "{message}"
    );
    assert!(
        message.contains(&seg.display().to_string()) && message.contains("intact record follows"),
        "{message}"
    );
    assert_eq!(
        fs::metadata(&seg).unwrap().len(),
        size,
        "the segment was cut"
    );
}

#[test]
fn a_header_cut_short_or_garbled_at_the_very_end_is_still_a_torn_tail() {
    let at = offset_of(9);
    for damage in [
        // The last record's header cut in the middle.
        Box::new(move |bytes: &mut Vec<u8>| bytes.truncate(at + 5))
            as Box<dyn FnOnce(&mut Vec<u8>)>,
        // The last record's length garbled (a crash mid-write), nothing after it.
        Box::new(move |bytes: &mut Vec<u8>| bytes[at + 3] ^= 0x40),
        // Zeros after the last record (a file extended by a crash).
        Box::new(|bytes: &mut Vec<u8>| bytes.extend_from_slice(&[0; 100])),
    ] {
        let (dir, seg) = damaged(10, damage);
        let (_, rec) = Log::open(dir.path()).unwrap();
        assert!(rec.records >= 9 && rec.truncated_bytes > 0, "{rec:?}");
        let (log, _) = Log::open(dir.path()).unwrap();
        assert_eq!(all(&log, 0).len() as u64, rec.records);
        assert!(fs::metadata(&seg).unwrap().len() <= offset_of(10) as u64);
    }
}

#[test]
fn a_format_1_segment_is_read_and_appends_go_to_a_format_2_segment() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = b"MRDNLOG1".to_vec();
    for p in payloads(3) {
        bytes.extend_from_slice(&(p.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(&p).to_le_bytes());
        bytes.extend_from_slice(&p);
    }
    fs::write(dir.path().join("00000000000000000000.seg"), &bytes).unwrap();
    let (mut log, rec) = Log::open(dir.path()).unwrap();
    assert_eq!(rec.records, 3);
    log.append([b"the fourth".as_slice()]).unwrap();
    drop(log);
    let segments = list_segments(dir.path()).unwrap();
    assert_eq!(segments.len(), 2, "{segments:?}");
    assert_eq!(&fs::read(&segments[1].1).unwrap()[..8], b"MRDNLOG2");
    let (log, rec) = Log::open(dir.path()).unwrap();
    assert_eq!(rec.records, 4);
    let read = all(&log, 0);
    assert_eq!(read[0].1, b"change number 0");
    assert_eq!(read[3], (3, b"the fourth".to_vec()));
}

/// A failed append is cut off and written over by the next one: a reader that
/// read the failed append's bytes ahead returns what was written over them.
#[test]
fn a_reader_drops_its_read_ahead_when_a_failed_append_is_written_over() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path()).unwrap();
    append_all(&mut log, &payloads(2));
    // What a failed append leaves: a whole record past the log's end.
    let mut stray = Vec::new();
    record::encode(&mut stray, b"never acknowledged");
    {
        use std::io::Write as _;
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(&log.file_path)
            .unwrap();
        f.write_all(&stray).unwrap();
    }
    let mut reader = log.reader(0).watching(log.rewrites());
    assert_eq!(reader.next_record().unwrap().unwrap().0, 0);
    // The appender cuts it off and appends over it.
    log.file.set_len(log.file_len).unwrap();
    log.rewrites.fetch_add(1, Ordering::Release);
    log.append([&b"acknowledged"[..]]).unwrap();
    assert_eq!(reader.next_record().unwrap().unwrap().0, 1);
    assert_eq!(
        reader.next_record().unwrap(),
        Some((2, b"acknowledged".to_vec()))
    );
}
