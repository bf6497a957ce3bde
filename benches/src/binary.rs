//! Finding the `meridian` binary the benchmarks start.

use std::path::PathBuf;
use std::process::Command;

/// The `meridian` binary of this workspace, built in the benchmark's own profile:
/// `$MERIDIAN_BIN` if set, else built with cargo (a no-op when it is up to date)
/// next to this program.
pub(crate) fn meridian() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("MERIDIAN_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let dir = exe
        .parent()
        .ok_or("this program's path has no directory")?
        .to_path_buf();
    let release = dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build.args(["build", "-p", "meridian-proxy", "--bin", "meridian"]);
    if release {
        build.arg("--release");
    }
    let status = build
        .status()
        .map_err(|e| format!("cannot run cargo to build meridian: {e} (or set MERIDIAN_BIN)"))?;
    if !status.success() {
        return Err(format!("building meridian failed ({status})"));
    }
    let binary = dir.join("meridian");
    if !binary.exists() {
        return Err(format!("{} is missing after the build", binary.display()));
    }
    Ok(binary)
}

/// A multi-threaded runtime for the benchmarks that drive a cluster.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}
