//! Runs one phase on T threads and times it.
//!
//! 1. Each thread is spawned and prepares (nothing timed), then waits on a barrier.
//! 2. The clock starts when the barrier releases them all, so thread start-up is not counted.
//! 3. Each thread runs its share of operations, timing each one.
//! 4. The clock stops when the last thread is done: the phase's time is the slowest thread's,
//!    so a filesystem that serialises threads shows it.
//!
//! The first error of any thread fails the phase (with the path in the message): a benchmark
//! that skips failed operations would report the speed of failing.

use crate::report::PhaseResult;
use anyhow::{anyhow, Context, Result};
use std::sync::{Arc, Barrier};
use std::time::Instant;

/// Runs `op(thread, i)` for `i` in `0..counts[thread]` on `counts.len()` threads.
pub fn run_phase<F>(phase: &'static str, counts: &[u64], op: F) -> Result<PhaseResult>
where
    F: Fn(usize, u64) -> Result<()> + Send + Sync + 'static,
{
    let threads = counts.len();
    let op = Arc::new(op);
    let barrier = Arc::new(Barrier::new(threads + 1));
    let mut handles = Vec::with_capacity(threads);
    for (t, &n) in counts.iter().enumerate() {
        let (op, barrier) = (op.clone(), barrier.clone());
        handles.push(std::thread::spawn(move || -> Result<Vec<u32>> {
            let mut lat = Vec::with_capacity(n as usize);
            barrier.wait();
            for i in 0..n {
                let t0 = Instant::now();
                op(t, i)?;
                lat.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
            }
            Ok(lat)
        }));
    }
    barrier.wait();
    let start = Instant::now();
    let mut latencies = Vec::new();
    let mut first_err = None;
    for h in handles {
        match h.join() {
            Ok(Ok(l)) => latencies.extend(l),
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(_) => {
                first_err.get_or_insert(anyhow!("a {phase} thread panicked"));
            }
        }
    }
    let elapsed = start.elapsed();
    if let Some(e) = first_err {
        return Err(e.context(format!("{phase} phase")));
    }
    Ok(PhaseResult {
        phase,
        threads,
        ops: counts.iter().sum(),
        elapsed,
        latencies_us: latencies,
        extra: Vec::new(),
    })
}

/// Marks the start and end of each phase in the kernel's trace buffer (when enabled), so that a
/// trace of FUSE requests taken around a whole run can be attributed to phases.
pub struct Marker {
    enabled: bool,
}

impl Marker {
    const PATH: &'static str = "/sys/kernel/tracing/trace_marker";

    pub fn new(enabled: bool) -> Marker {
        Marker { enabled }
    }

    /// Runs `f` between `cairn-bench phase=NAME begin` and `... end` markers.
    pub fn around<T>(&self, phase: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.mark(phase, "begin")?;
        let r = f()?;
        self.mark(phase, "end")?;
        Ok(r)
    }

    fn mark(&self, phase: &str, what: &str) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        std::fs::write(Self::PATH, format!("cairn-bench phase={phase} {what}\n")).with_context(
            || {
                format!(
                    "write {} for --trace-marker (needs root and tracefs)",
                    Self::PATH
                )
            },
        )
    }
}

/// Splits `total` operations over `threads` as evenly as possible.
pub fn split(total: u64, threads: usize) -> Vec<u64> {
    let t = threads as u64;
    (0..t)
        .map(|i| total / t + u64::from(i < total % t))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn split_is_even_and_complete() {
        assert_eq!(split(10, 4), vec![3, 3, 2, 2]);
        assert_eq!(split(4000, 4), vec![1000; 4]);
        assert_eq!(split(3, 1), vec![3]);
    }

    #[test]
    fn runs_every_operation_once() {
        let done = Arc::new(AtomicU64::new(0));
        let d = done.clone();
        let r = run_phase("x", &split(101, 3), move |_, _| {
            d.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
        .unwrap();
        assert_eq!(done.load(Ordering::Relaxed), 101);
        assert_eq!(r.ops, 101);
        assert_eq!(r.latencies_us.len(), 101);
    }

    #[test]
    fn an_error_fails_the_phase() {
        let e = run_phase("x", &split(10, 2), |t, i| {
            if t == 1 && i == 3 {
                Err(anyhow!("boom"))
            } else {
                Ok(())
            }
        })
        .err()
        .expect("fails");
        assert!(format!("{e:#}").contains("boom"));
    }
}
