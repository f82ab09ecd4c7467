//! Fault injection for unit tests: an [`ObjectStore`] decorator over [`InMemory`] that fails or
//! damages operations on command.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::client::{HttpError, HttpErrorKind};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

use crate::retry::RetryPolicy;

/// Retries in milliseconds, for tests.
pub(crate) const FAST: RetryPolicy = RetryPolicy {
    initial: Duration::from_millis(1),
    max: Duration::from_millis(4),
    budget: Duration::from_secs(5),
};

/// Fails the next `fail` puts and gets with a timeout; with `apply`, a failing put is applied
/// before its error is returned (the response was lost, not the request). The next
/// `damaged_reads` gets return the object (or the range asked for) with its last byte flipped.
/// `gets` records the range of each get.
#[derive(Debug, Default)]
pub(crate) struct Flaky {
    pub inner: InMemory,
    pub fail: AtomicU32,
    pub apply: bool,
    pub damaged_reads: AtomicU32,
    pub calls: AtomicU32,
    /// The range of every get that reached the inner store (None: the whole object).
    pub gets: std::sync::Mutex<Vec<Option<object_store::GetRange>>>,
}

pub(crate) fn flaky(fail: u32, apply: bool) -> Arc<Flaky> {
    Arc::new(Flaky {
        fail: AtomicU32::new(fail),
        apply,
        ..Default::default()
    })
}

impl fmt::Display for Flaky {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Flaky(InMemory)")
    }
}

fn timeout() -> object_store::Error {
    object_store::Error::Generic {
        store: "Flaky",
        source: Box::new(HttpError::new(
            HttpErrorKind::Timeout,
            std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"),
        )),
    }
}

fn take(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

impl Flaky {
    fn failing(&self) -> bool {
        self.calls.fetch_add(1, Ordering::SeqCst);
        take(&self.fail)
    }
}

#[async_trait]
impl ObjectStore for Flaky {
    async fn put_opts(&self, l: &Path, p: PutPayload, o: PutOptions) -> Result<PutResult> {
        if self.failing() {
            if self.apply {
                self.inner.put_opts(l, p, o).await?;
            }
            return Err(timeout());
        }
        self.inner.put_opts(l, p, o).await
    }

    async fn put_multipart_opts(
        &self,
        l: &Path,
        o: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(l, o).await
    }

    async fn get_opts(&self, l: &Path, o: GetOptions) -> Result<GetResult> {
        if self.failing() {
            return Err(timeout());
        }
        let head = o.head;
        if !head {
            self.gets.lock().expect("gets lock").push(o.range.clone());
        }
        let result = self.inner.get_opts(l, o).await?;
        if head || !take(&self.damaged_reads) {
            return Ok(result);
        }
        let (meta, range, attributes, extensions) = (
            result.meta.clone(),
            result.range.clone(),
            result.attributes.clone(),
            result.extensions.clone(),
        );
        let mut bytes = result.bytes().await?.to_vec();
        if let Some(last) = bytes.last_mut() {
            *last ^= 1;
        }
        Ok(GetResult {
            payload: GetResultPayload::Stream(
                futures::stream::once(async move { Ok(bytes.into()) }).boxed(),
            ),
            meta,
            range,
            attributes,
            extensions,
        })
    }

    fn delete_stream(
        &self,
        l: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(l)
    }

    fn list(&self, p: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(p)
    }

    async fn list_with_delimiter(&self, p: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(p).await
    }

    async fn copy_opts(&self, f: &Path, t: &Path, o: CopyOptions) -> Result<()> {
        self.inner.copy_opts(f, t, o).await
    }
}
