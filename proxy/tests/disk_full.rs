//! A disk that fills up and then has room again: the proxy refuses writes it
//! cannot log while the disk is full, keeps serving reads, and takes writes again
//! on its own once there is room, losing nothing it acknowledged.
//!
//! The disk is a small tmpfs mounted for the test; where mounting is not allowed
//! (not root, no mount namespace), the test says so and does nothing.
#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod support;

use std::path::Path;
use std::process::Command;

use support::{Client, Resp, eventually, single_dc_topology, start_meridian};

/// A tmpfs of `size` mounted at `at` for as long as it lives.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A reply, shortened for a failure message.
fn short(reply: &Resp) -> String {
    match reply {
        Resp::Bulk(b) => format!("{} bytes", b.len()),
        other => format!("{other:?}"),
    }
}

#[test]
fn a_full_disk_stops_writes_not_reads_and_they_resume_when_room_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let Some(_disk) = Tmpfs::mount(dir.path(), "8m") else {
        eprintln!("skipped: cannot mount a tmpfs here to fill a disk");
        return;
    };
    // Room to free later: more than what writes can fill. The log may fill the
    // disk before the committer stores any of it (it gathers for its period),
    // and the store then needs as much room again, at run time or in the replay
    // of a restart.
    let ballast = dir.path().join("ballast");
    std::fs::write(&ballast, vec![0u8; 5 << 20]).unwrap();
    let (topology, addr) = single_dc_topology(dir.path(), "always");
    let proxy = start_meridian(&topology, addr);
    let mut client = Client::connect(addr).unwrap();
    let value = vec![b'x'; 64 << 10];
    let mut acked = Vec::new();
    let mut refusal = None;
    for i in 0..400 {
        let key = format!("{{u}}:{i}");
        match client.cmd(&[b"SET", key.as_bytes(), &value]) {
            Resp::Simple(ok) if ok == "OK" => acked.push(key),
            Resp::Error(e) => {
                refusal = Some(e);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    let refusal = refusal.expect("the disk never filled up");
    assert!(!acked.is_empty(), "{refusal}");
    // Reads go on while the disk is full.
    for key in acked.iter().step_by(7) {
        let got = client.cmd(&[b"GET", key.as_bytes()]);
        assert!(
            got == Resp::Bulk(value.clone()),
            "{key} while the disk is full ({refusal}): {}",
            short(&got)
        );
    }
    // Room again: writes resume on their own.
    std::fs::remove_file(&ballast).unwrap();
    eventually("writes to resume once the disk has room", || {
        client.cmd(&[b"SET", b"{u}:after", b"1"]) == Resp::Simple("OK".into())
    });
    // Everything acknowledged is there, also after a restart from disk.
    drop(proxy);
    let _proxy = start_meridian(&topology, addr);
    let mut client = Client::connect(addr).unwrap();
    for key in &acked {
        let got = client.cmd(&[b"GET", key.as_bytes()]);
        assert!(
            got == Resp::Bulk(value.clone()),
            "{key} after the restart: {}",
            short(&got)
        );
    }
    assert_eq!(
        client.cmd(&[b"GET", b"{u}:after"]),
        Resp::Bulk(b"1".to_vec())
    );
}
