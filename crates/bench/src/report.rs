//! The one output format: one line per phase, `PHASE key=value ...`, space separated.
//!
//! Fields, in this order: `threads`, `files` (operations in the phase, all threads together),
//! `secs` (wall time from the moment all threads were released to the moment the last one
//! finished), `ops_per_sec` (`files / secs`, rounded), then the per-operation latency
//! percentiles `p50_us`, `p99_us` and `max_us` over all threads, then any extra fields of the
//! workload (e.g. `caches=dropped`). Scripts match fields by name, so new fields may be appended.

use std::time::Duration;

/// What one phase measured.
pub struct PhaseResult {
    pub phase: &'static str,
    pub threads: usize,
    pub ops: u64,
    pub elapsed: Duration,
    /// Latency of every operation, in microseconds (unsorted).
    pub latencies_us: Vec<u32>,
    pub extra: Vec<(&'static str, String)>,
}

impl PhaseResult {
    pub fn line(&self) -> String {
        let secs = self.elapsed.as_secs_f64();
        let rate = if secs > 0.0 {
            self.ops as f64 / secs
        } else {
            0.0
        };
        let mut lat = self.latencies_us.clone();
        lat.sort_unstable();
        let mut s = format!(
            "{} threads={} files={} secs={:.3} ops_per_sec={:.0} p50_us={} p99_us={} max_us={}",
            self.phase,
            self.threads,
            self.ops,
            secs,
            rate,
            percentile(&lat, 50.0),
            percentile(&lat, 99.0),
            lat.last().copied().unwrap_or(0),
        );
        for (k, v) in &self.extra {
            s.push_str(&format!(" {k}={v}"));
        }
        s
    }
}

/// Nearest-rank percentile of sorted values (0 for none).
fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
    }

    #[test]
    fn line_has_the_fields_scripts_parse() {
        let r = PhaseResult {
            phase: "create",
            threads: 4,
            ops: 4000,
            elapsed: Duration::from_millis(1230),
            latencies_us: vec![10, 20, 30],
            extra: vec![("caches", "dropped".into())],
        };
        assert_eq!(
            r.line(),
            "create threads=4 files=4000 secs=1.230 ops_per_sec=3252 p50_us=20 p99_us=30 max_us=30 caches=dropped"
        );
    }
}
