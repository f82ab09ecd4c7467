//! Log files of the processes a test started: tails for failure reports, and the panic check.

use std::path::{Path, PathBuf};

/// The last `lines` lines of a log file (lossy UTF-8); a note if it cannot be read.
pub fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            all[start..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Prints the tail of each log to stderr (libtest shows it for failing tests).
pub fn print_log_tails(logs: &[PathBuf], lines: usize) {
    for log in logs {
        eprintln!("----- last {lines} lines of {} -----", log.display());
        eprintln!("{}", tail(log, lines));
    }
}

/// Lines that report a panic in any of `logs`, as "path: line" (with the next few lines, which
/// hold the message and location).
pub fn find_panics(logs: &[PathBuf]) -> Vec<String> {
    let mut found = Vec::new();
    for log in logs {
        let Ok(bytes) = std::fs::read(log) else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.contains("panicked") {
                let end = (i + 4).min(lines.len());
                found.push(format!(
                    "{}: {}",
                    log.display(),
                    lines[i..end].join("\n    ")
                ));
            }
        }
    }
    found
}

/// Panics if any of `logs` reports a panic (STYLE 4.4: a test fails on log lines it did not allow).
pub fn assert_no_panics_in(logs: &[PathBuf]) {
    let found = find_panics(logs);
    assert!(
        found.is_empty(),
        "a cairn process panicked:\n{}",
        found.join("\n")
    );
}
