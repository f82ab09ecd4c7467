//! A decorator that retries transient object store failures with backoff, within a time budget.
//!
//! Why our own retries: `object_store` retries only *safe* requests on timeout (arrow-rs #5580),
//! so a PUT that timed out is never retried, and a write would fail where waiting would have
//! done. Block objects are immutable and written create-if-absent, so every request we send may
//! be repeated: a PUT whose first attempt landed answers "already exists" the second time, and
//! [`crate::BlockStore::put`] then reads the object back and compares.
//!
//! The rules:
//! 1. Which errors are retried is decided by [`crate::error::store_error_is_permanent`], the same
//!    function that backs [`crate::BlockError::is_permanent`].
//! 2. Backoff starts at 100 ms, doubles up to 5 s, with jitter (each sleep is between half and all
//!    of the current delay) so that many clients do not retry in step.
//! 3. Retries stop once the next sleep would pass the budget (2 minutes for data, a few seconds for
//!    [`crate::BlockStore::check`]); the last error is returned. Every attempt signs its request
//!    afresh, so expiring credentials are not the bound here; a writer that waits minutes for one
//!    block is.
//! 4. A GET retries the request *and* its body: the body is read into memory inside the retried
//!    step (blocks are at most 16 MiB), so a connection cut mid-body is retried too. A body whose
//!    length differs from the range the store announced is treated as cut.
//! 5. The first retry of an operation on a path logs one WARN with the path and the error; later
//!    ones log at DEBUG; the final failure is logged by the caller, once.
//!
//! Not retried here (passed through): list, copy and multipart uploads, which blocks do not use.

use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::pool::BufferPool;
use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

use crate::error::store_error_is_permanent;

/// How long and how often to retry.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RetryPolicy {
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
    /// No retry starts after this much time since the first attempt.
    pub budget: Duration,
}

impl RetryPolicy {
    /// For block reads and writes: 100 ms doubling to 5 s, for up to 2 minutes.
    pub(crate) const DATA: RetryPolicy = RetryPolicy {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(5),
        budget: Duration::from_secs(120),
    };

    /// For [`crate::BlockStore::check`]: an unreachable store must be reported in seconds.
    pub(crate) const PROBE: RetryPolicy = RetryPolicy {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(1),
        budget: Duration::from_secs(3),
    };

    /// Runs `attempt` until it succeeds, fails permanently, or the budget is spent. With
    /// `quiet`, retries log at DEBUG only (the caller reports failures its own way).
    pub(crate) async fn run<T, F, Fut>(
        &self,
        store: &(dyn fmt::Display + Sync),
        op: &'static str,
        path: &Path,
        quiet: bool,
        mut attempt: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let start = Instant::now();
        let mut delay = self.initial;
        let mut retries = 0u32;
        loop {
            let err = match attempt().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if store_error_is_permanent(&err) {
                return Err(err);
            }
            let sleep = jitter(delay);
            if start.elapsed() + sleep > self.budget {
                return Err(err);
            }
            retries += 1;
            if retries == 1 && !quiet {
                tracing::warn!(
                    %store, op, %path, error = %err,
                    "object store {op} failed; retrying for up to {:?}", self.budget
                );
            } else {
                tracing::debug!(%store, op, %path, error = %err, retries, "retrying object store {op}");
            }
            tokio::time::sleep(sleep).await;
            delay = (delay * 2).min(self.max);
        }
    }
}

/// Between half and all of `delay`.
fn jitter(delay: Duration) -> Duration {
    delay.mul_f64(0.5 + rand::random::<f64>() / 2.0)
}

/// The delays of [`RetryPolicy`] without its budget, for callers that retry forever (the
/// writeback uploader).
#[derive(Debug)]
pub(crate) struct Backoff {
    delay: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(policy: &RetryPolicy) -> Backoff {
        Backoff {
            delay: policy.initial,
            max: policy.max,
        }
    }

    /// The next sleep: jittered, doubling up to the policy's largest delay.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let sleep = jitter(self.delay);
        self.delay = (self.delay * 2).min(self.max);
        sleep
    }
}

/// An [`ObjectStore`] that retries the operations of another. See the module doc.
#[derive(Debug)]
pub(crate) struct RetryingStore {
    inner: Arc<dyn ObjectStore>,
    policy: RetryPolicy,
    quiet: bool,
    pool: Option<Arc<BufferPool>>,
}

impl RetryingStore {
    pub(crate) fn new(inner: Arc<dyn ObjectStore>, policy: RetryPolicy) -> Self {
        Self {
            inner,
            policy,
            quiet: false,
            pool: None,
        }
    }

    /// Bodies of block size read into buffers of `pool` ([`crate::pool`]).
    pub(crate) fn with_pool(self, pool: Arc<BufferPool>) -> Self {
        Self {
            pool: Some(pool),
            ..self
        }
    }

    /// Retries logged at DEBUG only: for the writeback uploader, which logs failures once per
    /// object and rate-limited.
    pub(crate) fn quiet(inner: Arc<dyn ObjectStore>, policy: RetryPolicy) -> Self {
        Self {
            inner,
            policy,
            quiet: true,
            pool: None,
        }
    }
}

impl fmt::Display for RetryingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Retrying({}, within {:?})",
            self.inner, self.policy.budget
        )
    }
}

/// Reads the whole body of `result` and returns it as a one-chunk stream, checking its length
/// against the range the store announced. A body of block size goes into a buffer of `pool`.
async fn buffer(result: GetResult, pool: Option<&Arc<BufferPool>>) -> Result<GetResult> {
    let range: Range<u64> = result.range.clone();
    let meta = result.meta.clone();
    let attributes = result.attributes.clone();
    let extensions = result.extensions.clone();
    let expected = range.end - range.start;
    let pooled = pool.and_then(|p| Some((p, p.take(usize::try_from(expected).ok()?)?)));
    let bytes = match pooled {
        Some((pool, mut buf)) => {
            let mut body = result.into_stream();
            while let Some(chunk) = body.next().await {
                // A body longer than announced outgrows the buffer; the check below reports it.
                buf.extend_from_slice(&chunk?);
            }
            pool.freeze(buf)
        }
        None => result.bytes().await?,
    };
    if bytes.len() as u64 != expected {
        return Err(object_store::Error::Generic {
            store: "RetryingStore",
            source: Box::new(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "body of {} has {} bytes, expected {expected}",
                    meta.location,
                    bytes.len()
                ),
            )),
        });
    }
    Ok(GetResult {
        payload: GetResultPayload::Stream(futures::stream::once(async move { Ok(bytes) }).boxed()),
        meta,
        range,
        attributes,
        extensions,
    })
}

#[async_trait]
impl ObjectStore for RetryingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let inner = &self.inner;
        let (payload, opts) = (&payload, &opts);
        self.policy
            .run(&self.inner, "put", location, self.quiet, || async move {
                inner
                    .put_opts(location, payload.clone(), opts.clone())
                    .await
            })
            .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let inner = &self.inner;
        let options = &options;
        let pool = self.pool.as_ref();
        if options.head {
            return self
                .policy
                .run(&self.inner, "head", location, self.quiet, || async move {
                    inner.get_opts(location, options.clone()).await
                })
                .await;
        }
        self.policy
            .run(&self.inner, "get", location, self.quiet, || async move {
                buffer(inner.get_opts(location, options.clone()).await?, pool).await
            })
            .await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let inner = Arc::clone(&self.inner);
        let (policy, quiet) = (self.policy, self.quiet);
        locations
            .then(move |location| {
                let inner = Arc::clone(&inner);
                async move {
                    let location = location?;
                    let store = &inner;
                    policy
                        .run(&inner, "delete", &location, quiet, || async {
                            store.delete(&location).await
                        })
                        .await?;
                    Ok(location)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::{flaky, FAST};
    use object_store::memory::InMemory;
    use object_store::PutMode;
    use std::sync::atomic::Ordering;

    #[tokio::test]
    async fn retries_transient_failures() {
        let inner = flaky(3, false);
        let store = RetryingStore::new(inner.clone(), FAST);
        let path = Path::from("a/b");
        store.put(&path, "hello".into()).await.unwrap();
        assert_eq!(inner.calls.load(Ordering::SeqCst), 4);
        inner.fail.store(2, Ordering::SeqCst);
        let got = store.get(&path).await.unwrap().bytes().await.unwrap();
        assert_eq!(&got[..], b"hello");
    }

    #[tokio::test]
    async fn a_retried_create_that_landed_reports_already_exists() {
        let store = RetryingStore::new(flaky(1, true), FAST);
        let path = Path::from("a/b");
        let err = store
            .put_opts(&path, "x".into(), PutMode::Create.into())
            .await
            .unwrap_err();
        assert!(
            matches!(err, object_store::Error::AlreadyExists { .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn permanent_errors_are_not_retried() {
        let inner = flaky(0, false);
        let store = RetryingStore::new(inner.clone(), FAST);
        let err = store.get(&Path::from("missing")).await.unwrap_err();
        assert!(matches!(err, object_store::Error::NotFound { .. }));
        assert_eq!(inner.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn gives_up_within_the_budget() {
        let inner = flaky(u32::MAX, false);
        let policy = RetryPolicy {
            budget: Duration::from_millis(200),
            ..FAST
        };
        let store = RetryingStore::new(inner.clone(), policy);
        let start = Instant::now();
        let err = store.put(&Path::from("p"), "x".into()).await.unwrap_err();
        assert!(!store_error_is_permanent(&err));
        assert!(start.elapsed() < Duration::from_secs(2));
        assert!(inner.calls.load(Ordering::SeqCst) > 3);
    }

    #[test]
    fn display_names_the_wrapped_store() {
        let store = RetryingStore::new(Arc::new(InMemory::new()), RetryPolicy::DATA);
        assert_eq!(store.to_string(), "Retrying(InMemory, within 120s)");
    }
}
