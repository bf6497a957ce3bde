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
    let (dir, seg) = damaged(3, |bytes| bytes[MAGIC.len() + RECORD_HEADER + 2] ^= 0x01);
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
    let mut record = (payload.len() as u32).to_le_bytes().to_vec();
    record.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    record.extend_from_slice(payload);
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
