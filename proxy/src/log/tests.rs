use super::*;

fn payloads(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| format!("change number {i}").into_bytes())
        .collect()
}

fn append_all(log: &mut Log, items: &[Vec<u8>]) {
    log.append(items.iter().map(Vec::as_slice)).unwrap();
}

fn only_segment(dir: &Path) -> PathBuf {
    list_segments(dir).unwrap().pop().unwrap().1
}

#[test]
fn records_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, rec) = Log::open(dir.path()).unwrap();
    assert!(rec.records.is_empty());
    append_all(&mut log, &payloads(3));
    assert_eq!(log.append([&b"more"[..]]).unwrap(), 3);
    log.sync().unwrap();
    drop(log);
    let (log, rec) = Log::open(dir.path()).unwrap();
    assert_eq!(rec.records.len(), 4);
    assert_eq!(rec.records[3], (3, b"more".to_vec()));
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
    assert_eq!(rec.records.len(), 4);
    assert!(rec.truncated_bytes > 0);
    append_all(&mut log, &[b"after".to_vec()]);
    drop(log);
    let (_, rec) = Log::open(dir.path()).unwrap();
    assert_eq!(rec.records.last().unwrap(), &(4, b"after".to_vec()));
}

#[test]
fn a_bad_checksum_on_the_last_record_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path()).unwrap();
    append_all(&mut log, &payloads(3));
    drop(log);
    let seg = only_segment(dir.path());
    let mut bytes = fs::read(&seg).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&seg, bytes).unwrap();
    let (_, rec) = Log::open(dir.path()).unwrap();
    assert_eq!(rec.records.len(), 2);
}

#[test]
fn corruption_before_the_tail_is_reported_with_segment_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path()).unwrap();
    append_all(&mut log, &payloads(3));
    drop(log);
    let seg = only_segment(dir.path());
    let mut bytes = fs::read(&seg).unwrap();
    // Damage the payload of the first record (it starts after the magic and header).
    bytes[MAGIC.len() + RECORD_HEADER + 2] ^= 0x01;
    fs::write(&seg, bytes).unwrap();
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
