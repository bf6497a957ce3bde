//! `meridian check FILE`: validate a topology file and explain what it does.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use meridian_topology::{ConfigErrors, Plan, Topology};

use crate::{EX_NOINPUT, EX_USAGE};

/// Synthetic users whose homes estimate each datacenter's share.
const SAMPLE_USERS: usize = 100_000;

pub(crate) fn run(file: &Path) -> ExitCode {
    match load(file) {
        Ok(topology) => {
            // A reader that stops early (`| head`) is no error of ours.
            use std::io::Write as _;
            let text = format!(
                "{}{}{}\n{}: valid\n",
                Plan::of(&topology),
                homes(&topology),
                forwarding(&topology),
                file.display()
            );
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
            ExitCode::SUCCESS
        }
        Err(LoadError::Unreadable(message)) => {
            eprintln!("{message}");
            ExitCode::from(EX_NOINPUT)
        }
        Err(LoadError::Invalid(errors)) => {
            eprintln!("{errors}");
            ExitCode::from(EX_USAGE)
        }
    }
}

/// Why a topology file could not be loaded.
#[derive(Debug)]
pub(crate) enum LoadError {
    /// The file could not be read; the message names it and the reason.
    Unreadable(String),
    /// The file was read and has problems.
    Invalid(ConfigErrors),
}

/// Loads a topology file for a command, or prints why not and gives the exit code.
pub(crate) fn load_or_exit(file: &Path) -> Result<Topology, ExitCode> {
    load(file).map_err(|e| match e {
        LoadError::Unreadable(message) => {
            eprintln!("{message}");
            ExitCode::from(EX_NOINPUT)
        }
        LoadError::Invalid(errors) => {
            eprintln!("{errors}");
            ExitCode::from(EX_USAGE)
        }
    })
}

/// Reads and parses a topology file; relative paths in it resolve against its directory.
pub(crate) fn load(file: &Path) -> Result<Topology, LoadError> {
    let unreadable = |why: String| {
        LoadError::Unreadable(format!(
            "{}: cannot read the topology file: {why}",
            file.display()
        ))
    };
    let bytes = std::fs::read(file).map_err(|e| unreadable(e.kind().to_string()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        unreadable(format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })?;
    let dir = file.parent().unwrap_or(Path::new("."));
    let base = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    Topology::parse(&text, &file.display().to_string(), &base).map_err(LoadError::Invalid)
}

/// The path a write forwarded from each datacenter to each home travels, and its
/// one-way delay where `[links]` gives every link on it.
fn forwarding(t: &Topology) -> String {
    if t.homes.writes == meridian_topology::Writes::Local {
        return "\nwrites run where they arrive (writes = \"local\"); nothing is forwarded\n"
            .into();
    }
    let mut out = String::from("\nwrites forwarded to their home travel:\n");
    let n = t.datacenters.len();
    for from in (0..n).map(|i| meridian_topology::DcIdx(i as u8)) {
        for to in (0..n).map(|i| meridian_topology::DcIdx(i as u8)) {
            if from == to {
                continue;
            }
            let Some(path) = t.forward_path(from, to) else {
                let _ = writeln!(out, "  {} -> {}: no path", t.dc(from).id, t.dc(to).id);
                continue;
            };
            let names: Vec<&str> = path.iter().map(|&d| t.dc(d).id.as_str()).collect();
            let delay = t.path_delay(&path).map_or_else(String::new, |d| {
                format!(", {} ms one way", d.as_secs_f64() * 1_000.0)
            });
            let _ = writeln!(out, "  {}{delay}", names.join(" -> "));
        }
    }
    out
}

/// Where users live: pins, and each datacenter's share of a large sample of users.
fn homes(t: &Topology) -> String {
    let mut out = String::from("\nhomes:\n");
    let rendezvous = match meridian_proxy::user_homes(t) {
        Ok(r) => r,
        Err(e) => return format!("{out}  cannot assign homes: {e}\n"),
    };
    for (user, dc) in &t.homes.pins {
        let _ = writeln!(out, "  {user} is pinned to {}", t.dc(*dc).id);
    }
    let mut counts = vec![0usize; t.datacenters.len()];
    for i in 0..SAMPLE_USERS {
        counts[rendezvous.home_of(&format!("user-{i}"))] += 1;
    }
    for (dc, count) in t.datacenters.iter().zip(counts) {
        let share = 100.0 * count as f64 / SAMPLE_USERS as f64;
        let _ = writeln!(
            out,
            "  {:>5.1}% of other users live in {} (weight {})",
            share, dc.id, dc.weight
        );
    }
    if t.homes.default == meridian_topology::DefaultHome::FirstWrite {
        out.push_str("  default = \"first-write\": a user nobody placed yet lives where its first write comes from (the shares above are who places it)\n");
    }
    out.push_str(&follow(t));
    out.push_str(&takeover(t, &rendezvous));
    out
}

/// Whether homes follow their users, and by which rule.
fn follow(t: &Topology) -> String {
    match t.homes.follow {
        None => "  follow: off (homes move only by hand, MERIDIAN HOME <user> <dc>)\n".to_owned(),
        Some(f) => format!(
            "  follow: a home moves to the datacenter that sent {:.0}% or more of its user's writes in each half of {} ms (at least {} writes), at most once per {} ms per user; pinned users never move\n",
            f64::from(f.share_milli) / 10.0,
            f.window.as_millis(),
            f.min_writes,
            f.min_interval.as_millis()
        ),
    }
}

/// What happens to a user's writes while its home is out, and, under
/// `next-in-line`, the order in which datacenters take them over for a few users.
fn takeover(t: &Topology, rendezvous: &meridian_policies::Rendezvous) -> String {
    use meridian_topology::OnHomeDown;
    match t.homes.on_home_down {
        OnHomeDown::Reject => {
            "  on_home_down = \"reject\": while a user's home is out, its writes are refused\n"
                .to_owned()
        }
        OnHomeDown::NextInLine => {
            let mut out = String::from(
                "  on_home_down = \"next-in-line\": while a user's home is out (a majority cannot hear it), the next in its order that is in service takes its writes:\n",
            );
            let pinned = t.homes.pins.iter().map(|(user, _)| user.clone());
            let sample = (0..4).map(|i| format!("user-{i}"));
            for user in pinned.take(2).chain(sample) {
                let order: Vec<&str> = rendezvous
                    .ranking(&user)
                    .into_iter()
                    .map(|dc| t.datacenters[dc].id.as_str())
                    .collect();
                let _ = writeln!(out, "    {user}: {}", order.join(" -> "));
            }
            out
        }
    }
}
