//! Support for the workspace's benchmark runners: the PyTorch side of a side-by-side figure.
//!
//! Included by path (`#[path = ".../kernels/benches/support/mod.rs"] mod support;`) from each
//! bench that prints one, so that spawning Python stays out of every library. It lives in a
//! directory so that cargo does not take it for a bench target of its own.

// Each bench uses only some of these.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace's `tools/` directory. The including bench's crate (whose manifest directory
/// `env!` gives here) is the workspace root package or a member below it, so the nearest
/// ancestor holding `tools/` is the workspace's.
fn tools_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .map(|d| d.join("tools"))
        .find(|d| d.is_dir())
        .unwrap_or_else(|| manifest.join("../tools"))
}

/// Runs `tools/<script>` with `args` under the Python named by `GENREP_BENCH_PYTHON` (one with
/// torch) and returns its stdout lines; `None` when the variable is unset. Panics if the script
/// fails, so a benchmark never prints a half-empty comparison.
pub fn torch_reference(script: &str, args: &[&str]) -> Option<Vec<String>> {
    let python = std::env::var("GENREP_BENCH_PYTHON").ok()?;
    let path = tools_dir().join(script);
    let out = Command::new(&python)
        .arg(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot start {python}: {e}"));
    assert!(
        out.status.success(),
        "{python} {} failed:\n{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect(),
    )
}

/// The number just before `unit` in `line` (e.g. `"6.0 images/s"` → 6.0).
pub fn value_before(line: &str, unit: &str) -> Option<f64> {
    let head = &line[..line.find(unit)?];
    head.split_whitespace()
        .last()?
        .trim_end_matches(',')
        .parse()
        .ok()
}
