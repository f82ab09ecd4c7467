//! The object store alone: PUT then GET objects of a block's size, several at once, with no
//! filesystem in the way.
//!
//! This is the ceiling every filesystem of the data benchmark shares on the same machine: a
//! sequential write or cold read cannot move bytes faster than the store takes or serves them to
//! the lightest client there is (no FUSE, no page cache, no local copy, bodies discarded as they
//! arrive). `scripts/bench/data.sh` prints it beside the table so that a ratio between two
//! filesystems can be read against what the store leaves room for.
//!
//! Objects are written under a fresh prefix of the bucket and deleted at the end. The bytes are
//! random (one random buffer, each object starting with its own index), so no store can compress
//! or deduplicate them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use bytes::{Bytes, BytesMut};
use clap::Args;
use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use rand::RngCore;

use crate::report::PhaseResult;

/// What to move and how: the scripts pass the data benchmark's size and cairn's block size.
#[derive(Args, Debug)]
pub struct StoreArgs {
    /// S3 endpoint, e.g. http://127.0.0.1:8333 (credentials from AWS_ACCESS_KEY_ID and
    /// AWS_SECRET_ACCESS_KEY).
    #[arg(long)]
    pub endpoint: String,
    /// Bucket to write the objects into (under a fresh prefix, removed at the end).
    #[arg(long)]
    pub bucket: String,
    /// S3 region.
    #[arg(long, default_value = "us-east-1")]
    pub region: String,
    /// Bytes in all, MiB.
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub size_mib: u64,
    /// Size of each object, MiB (cairn's blocks are 4 MiB).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub object_mib: u64,
    /// Requests in flight at once (cairn's default for uploads and for downloads is 16).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub parallel: u64,
    /// Between the PUTs and the GETs, write dirty pages back and drop the page cache (needs root),
    /// so that the store serves the GETs from its disk, as it does a filesystem's cold read.
    #[arg(long)]
    pub drop_caches: bool,
    /// Seconds of rest after --drop-caches before the GETs: on a VM that hands freed memory back
    /// to its host, reads started at once after a large drop ran 20-35% slower (scripts/bench
    /// data.sh, BENCH_SETTLE).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=600))]
    pub settle_secs: u64,
}

/// Prints a `put` and a `get` line (see [`crate::report`]) with `mb_per_sec` appended.
pub fn run(a: &StoreArgs) -> Result<()> {
    if a.size_mib < a.object_mib {
        bail!(
            "--size-mib {} is less than --object-mib {}: give at least one object",
            a.size_mib,
            a.object_mib
        );
    }
    let key = std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_default();
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_default();
    if key.is_empty() || secret.is_empty() {
        bail!(
            "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for --endpoint {}",
            a.endpoint
        );
    }
    let store = AmazonS3Builder::new()
        .with_endpoint(a.endpoint.trim_end_matches('/'))
        .with_allow_http(a.endpoint.starts_with("http://"))
        .with_bucket_name(&a.bucket)
        .with_region(&a.region)
        .with_access_key_id(key)
        .with_secret_access_key(secret)
        .with_virtual_hosted_style_request(false)
        // As cairn sends to a loopback endpoint: the body left out of the signature.
        .with_unsigned_payload(true)
        .build()
        .with_context(|| format!("cannot configure the S3 store at {}", a.endpoint))?;
    let store: Arc<dyn ObjectStore> = Arc::new(store);
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(run_phases(store, a))
}

async fn run_phases(store: Arc<dyn ObjectStore>, a: &StoreArgs) -> Result<()> {
    let object_bytes = (a.object_mib << 20) as usize;
    let count = (a.size_mib / a.object_mib) as usize;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let prefix = format!("cairn-bench-store-{}-{nanos}", std::process::id());
    let paths: Arc<Vec<Path>> = Arc::new(
        (0..count)
            .map(|i| Path::from(format!("{prefix}/{i:08}")))
            .collect(),
    );
    let mut noise = vec![0u8; object_bytes];
    rand::rng().fill_bytes(&mut noise);
    let noise = Bytes::from(noise);

    let measured = async {
        let put = phase("put", &store, &paths, a, move |s, p, i| {
            let noise = noise.clone();
            async move {
                // Each object its own first bytes, the rest shared: no copy of the 4 MiB.
                let mut head = BytesMut::from(&noise[..8]);
                head.copy_from_slice(&(i as u64).to_le_bytes());
                let payload = PutPayload::from_iter([head.freeze(), noise.slice(8..)]);
                s.put(&p, payload).await?;
                Ok(())
            }
        })
        .await
        .map_err(|e| explain(e, a))?;
        println!("{}", put.line());
        if a.drop_caches {
            drop_caches()?;
            tokio::time::sleep(std::time::Duration::from_secs(a.settle_secs)).await;
        }
        phase("get", &store, &paths, a, move |s, p, _| async move {
            let mut body = s.get(&p).await?.into_stream();
            let mut n = 0usize;
            while let Some(chunk) = body.next().await {
                n += chunk?.len();
            }
            if n != object_bytes {
                bail!("{p}: read {n} bytes, wrote {object_bytes}");
            }
            Ok(())
        })
        .await
    }
    .await;
    // Clean up whatever was written, also after a failure.
    let mut left = 0usize;
    for p in paths.iter() {
        if store.delete(p).await.is_err() {
            left += 1;
        }
    }
    if left > 0 {
        eprintln!(
            "warning: {left} objects under {prefix}/ not deleted (never written, or the DELETE failed)"
        );
    }
    let get = measured?;
    println!("{}", get.line());
    Ok(())
}

/// A PUT that finds nothing there means the bucket is missing: say so, not the store's XML.
fn explain(e: anyhow::Error, a: &StoreArgs) -> anyhow::Error {
    let missing = e.chain().any(|c| {
        matches!(
            c.downcast_ref::<object_store::Error>(),
            Some(object_store::Error::NotFound { .. })
        )
    });
    if missing {
        anyhow::anyhow!(
            "bucket `{}` not found at {}: create it first (e.g. `aws s3 mb s3://{}`)",
            a.bucket,
            a.endpoint,
            a.bucket
        )
    } else {
        e
    }
}

/// `sync` and `echo 3 > /proc/sys/vm/drop_caches`.
fn drop_caches() -> Result<()> {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3\n")
        .context("write /proc/sys/vm/drop_caches for --drop-caches (needs root)")
}

/// Runs `op` on every path with `--parallel` at once; one latency per object.
async fn phase<F, Fut>(
    name: &'static str,
    store: &Arc<dyn ObjectStore>,
    paths: &Arc<Vec<Path>>,
    a: &StoreArgs,
    op: F,
) -> Result<PhaseResult>
where
    F: Fn(Arc<dyn ObjectStore>, Path, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..a.parallel {
        let (store, paths, next, op) = (store.clone(), paths.clone(), next.clone(), op.clone());
        tasks.spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(p) = paths.get(i) else {
                    return Ok::<_, anyhow::Error>(lat);
                };
                let t = Instant::now();
                op(store.clone(), p.clone(), i)
                    .await
                    .with_context(|| format!("{name} {p}"))?;
                lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
            }
        });
    }
    let mut latencies_us = Vec::with_capacity(paths.len());
    while let Some(done) = tasks.join_next().await {
        latencies_us.extend(done.context("a request task panicked")??);
    }
    let elapsed = start.elapsed();
    let mb = (paths.len() as u64 * (a.object_mib << 20)) as f64 / 1e6;
    Ok(PhaseResult {
        phase: name,
        threads: a.parallel as usize,
        ops: paths.len() as u64,
        elapsed,
        latencies_us,
        extra: vec![
            (
                "mb_per_sec",
                format!(
                    "{:.1}",
                    mb / elapsed.max(Duration::from_micros(1)).as_secs_f64()
                ),
            ),
            ("object_mib", a.object_mib.to_string()),
        ],
    })
}
