//! Errors of block storage, and the one place that decides which are worth retrying.

use std::error::Error as StdError;
use std::time::Duration;

use object_store::client::{HttpError, HttpErrorKind};

use crate::codec::CodecError;

/// What went wrong with a block or its store. Each message says what failed and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlockError {
    /// The block object does not exist.
    #[error("block `{path}` not found in the object store")]
    NotFound {
        /// Full location of the object, e.g. `s3://bucket/prefix/3f9c/vol/…`.
        path: String,
    },
    /// The block object exists but is not a valid block: checksum, length or format. Re-read once
    /// before this is reported; never returned as data.
    #[error("block `{path}` is corrupt: {reason}")]
    Corrupt {
        /// Full location of the object.
        path: String,
        /// What the codec found.
        #[source]
        reason: CodecError,
    },
    /// A block write found an object with different contents under its key. Block keys are unique
    /// per write, so two writers disagreeing about one key is a bug above this crate.
    #[error(
        "block `{path}` already exists with different contents: block keys must never be reused; \
         this is a bug in cairn, please report it"
    )]
    Conflict {
        /// Full location of the object.
        path: String,
    },
    /// The S3 bucket does not exist.
    #[error("bucket `{bucket}` does not exist at {endpoint}: create it first (e.g. `aws s3 mb s3://{bucket}`) or fix --store")]
    MissingBucket {
        /// Bucket name.
        bucket: String,
        /// Where we looked, e.g. `http://127.0.0.1:8333` or `AWS S3 (us-east-1)`.
        endpoint: String,
    },
    /// The store refused our credentials or denied the operation.
    #[error(
        "access denied by {store}: {detail}; check the access key and secret key \
         (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY) and that they may \
         read, write and delete objects there"
    )]
    AccessDenied {
        /// The store, as [`crate::BlockStore::describe`] gives it.
        store: String,
        /// What the store said, e.g. `SignatureDoesNotMatch`, `InvalidAccessKeyId`.
        detail: String,
    },
    /// A local block folder cannot be read or written by this user.
    #[error("permission denied on {store}: {detail}; make the folder readable and writable by this user or choose another --store")]
    LocalPermission {
        /// The store, as [`crate::BlockStore::describe`] gives it.
        store: String,
        /// The operating system's message.
        detail: String,
    },
    /// No connection could be made to the store, or it did not answer in time.
    #[error(
        "cannot reach the object store at {endpoint}: {}; check --s3-endpoint and that the store is running",
        transport_reason(source)
    )]
    Unreachable {
        /// Endpoint we tried.
        endpoint: String,
        /// The transport error.
        #[source]
        source: object_store::Error,
    },
    /// The store took longer than a bound we set on a whole operation.
    #[error("the object store {store} did not finish `{op}` within {after:?}; check that it is healthy and not overloaded")]
    Timeout {
        /// The store, as [`crate::BlockStore::describe`] gives it.
        store: String,
        /// Operation that timed out.
        op: &'static str,
        /// The bound.
        after: Duration,
    },
    /// The store configuration is unusable.
    #[error("{message}")]
    BadConfig {
        /// What is wrong and how to fix it.
        message: String,
    },
    /// Any other error from the object store.
    #[error("{op} `{path}` failed: {source}")]
    Store {
        /// Operation: `put`, `get`, `delete` or `check`.
        op: &'static str,
        /// Full location of the object.
        path: String,
        /// The error from `object_store`.
        #[source]
        source: object_store::Error,
    },
}

impl BlockError {
    /// Whether retrying cannot help. This is the one function that says so (STYLE 2.3): the
    /// retrying layer asks `store_error_is_permanent`, which this calls for [`BlockError::Store`],
    /// so raw `object_store` errors and ours are classified by the same rules.
    pub fn is_permanent(&self) -> bool {
        match self {
            BlockError::NotFound { .. } => true,
            // Already re-read once before being reported.
            BlockError::Corrupt { .. } => true,
            BlockError::Conflict { .. } => true,
            BlockError::MissingBucket { .. } => true,
            // Credentials do not fix themselves; an operator has to act.
            BlockError::AccessDenied { .. } => true,
            BlockError::LocalPermission { .. } => true,
            BlockError::Unreachable { .. } => false,
            BlockError::Timeout { .. } => false,
            BlockError::BadConfig { .. } => true,
            BlockError::Store { source, .. } => store_error_is_permanent(source),
        }
    }

    /// A stable code for metrics and for the admin API, e.g. `blocks.not_found`.
    pub fn code(&self) -> &'static str {
        match self {
            BlockError::NotFound { .. } => "blocks.not_found",
            BlockError::Corrupt { .. } => "blocks.corrupt",
            BlockError::Conflict { .. } => "blocks.conflict",
            BlockError::MissingBucket { .. } => "blocks.missing_bucket",
            BlockError::AccessDenied { .. } => "blocks.access_denied",
            BlockError::LocalPermission { .. } => "blocks.local_permission",
            BlockError::Unreachable { .. } => "blocks.unreachable",
            BlockError::Timeout { .. } => "blocks.timeout",
            BlockError::BadConfig { .. } => "blocks.bad_config",
            BlockError::Store { .. } => "blocks.store",
        }
    }
}

/// Whether an error from `object_store` is permanent. The rules:
/// - answers about the object or the request (not found, exists, precondition, permission,
///   invalid path, unsupported) are permanent;
/// - HTTP 5xx (except 501 and 505), 408 and 429 are transient, any other status is permanent;
/// - transport errors (connect, send, timeout, interrupted or undecodable body) are transient;
/// - local I/O errors are permanent unless interrupted, timed out or cut short.
pub(crate) fn store_error_is_permanent(err: &object_store::Error) -> bool {
    use object_store::Error as E;
    match err {
        E::NotFound { .. }
        | E::AlreadyExists { .. }
        | E::Precondition { .. }
        | E::NotModified { .. }
        | E::PermissionDenied { .. }
        | E::Unauthenticated { .. }
        | E::InvalidPath { .. }
        | E::NotSupported { .. }
        | E::NotImplemented { .. }
        | E::UnknownConfigurationKey { .. } => true,
        // A blocking task that panicked or was cancelled; another attempt may succeed.
        E::JoinError { .. } => false,
        E::Generic { .. } => {
            if let Some(status) = http_status(err) {
                return !(matches!(status, 408 | 429)
                    || ((500..600).contains(&status) && !matches!(status, 501 | 505)));
            }
            if transport_kind(err).is_some() {
                // Every kind, Unknown included (odd failures of the HTTP stack): the retry budget
                // bounds how long a failure that is in fact permanent delays the answer.
                return false;
            }
            // Local I/O (and a GET body cut short, see retry.rs): only these kinds pass.
            let transient_io = matches!(
                io_kind(err),
                Some(
                    std::io::ErrorKind::Interrupted
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::UnexpectedEof,
                )
            );
            !transient_io
        }
        // Variants added by later object_store versions: do not retry what we do not understand.
        _ => true,
    }
}

/// Iterates an error and its sources.
fn chain<'a>(
    err: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(err), |e| (*e).source())
}

/// The kind of the HTTP transport error in the chain, if the request failed without a response.
pub(crate) fn transport_kind(err: &object_store::Error) -> Option<HttpErrorKind> {
    chain(err).find_map(|e| e.downcast_ref::<HttpError>().map(HttpError::kind))
}

/// The kind of the first I/O error in the chain.
pub(crate) fn io_kind(err: &object_store::Error) -> Option<std::io::ErrorKind> {
    chain(err).find_map(|e| e.downcast_ref::<std::io::Error>().map(std::io::Error::kind))
}

/// The HTTP status of a failed request. `object_store` keeps the status in a private type, so it
/// is read from the message it prints: "Server returned non-2xx status code: 503 …".
pub(crate) fn http_status(err: &object_store::Error) -> Option<u16> {
    let text = err.to_string();
    let at = text.find("status code: ")? + "status code: ".len();
    text.get(at..at + 3)?.parse().ok()
}

/// The S3 error code in the response body, e.g. `NoSuchBucket`, `SignatureDoesNotMatch`.
pub(crate) fn s3_error_code(err: &object_store::Error) -> Option<String> {
    let text = err.to_string();
    let start = text.find("<Code>")? + "<Code>".len();
    let len = text[start..].find("</Code>")?;
    Some(text[start..start + len].to_string())
}

/// A short reason for a transport failure: "connection refused", "timed out", …
pub(crate) fn transport_reason(err: &object_store::Error) -> String {
    if let Some(kind) = io_kind(err) {
        match kind {
            std::io::ErrorKind::ConnectionRefused => return "connection refused".into(),
            std::io::ErrorKind::TimedOut => return "timed out".into(),
            std::io::ErrorKind::ConnectionReset => return "connection reset".into(),
            _ => {}
        }
    }
    match transport_kind(err) {
        Some(HttpErrorKind::Timeout) => "timed out".into(),
        _ => chain(err)
            .last()
            .map(|e| e.to_string())
            .unwrap_or_else(|| err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generic(source: impl StdError + Send + Sync + 'static) -> object_store::Error {
        object_store::Error::Generic {
            store: "test",
            source: Box::new(source),
        }
    }

    fn io(kind: std::io::ErrorKind) -> std::io::Error {
        std::io::Error::new(kind, "x")
    }

    #[test]
    fn transport_errors_are_transient() {
        for kind in [
            HttpErrorKind::Connect,
            HttpErrorKind::Request,
            HttpErrorKind::Timeout,
            HttpErrorKind::Interrupted,
            HttpErrorKind::Decode,
            HttpErrorKind::Unknown,
        ] {
            let err = generic(HttpError::new(kind, io(std::io::ErrorKind::Other)));
            assert!(!store_error_is_permanent(&err), "{kind:?}");
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("Error performing PUT http://x/y in 1ms - Server returned non-2xx status code: {0}: <Error><Code>{1}</Code></Error>")]
    struct FakeStatus(&'static str, &'static str);

    #[test]
    fn statuses_are_classified() {
        for (status, permanent) in [
            ("500 Internal Server Error", false),
            ("503 Service Unavailable", false),
            ("429 Too Many Requests", false),
            ("408 Request Timeout", false),
            ("501 Not Implemented", true),
            ("400 Bad Request", true),
            ("405 Method Not Allowed", true),
        ] {
            let err = generic(FakeStatus(status, "X"));
            assert_eq!(store_error_is_permanent(&err), permanent, "{status}");
        }
        let err = generic(FakeStatus("404 Not Found", "NoSuchBucket"));
        assert_eq!(http_status(&err), Some(404));
        assert_eq!(s3_error_code(&err).as_deref(), Some("NoSuchBucket"));
    }

    #[test]
    fn local_io_errors() {
        assert!(store_error_is_permanent(&generic(io(
            std::io::ErrorKind::PermissionDenied
        ))));
        assert!(store_error_is_permanent(&generic(io(
            std::io::ErrorKind::Other
        ))));
        assert!(!store_error_is_permanent(&generic(io(
            std::io::ErrorKind::UnexpectedEof
        ))));
    }

    #[test]
    fn object_answers_are_permanent() {
        let err = object_store::Error::NotFound {
            path: "p".into(),
            source: Box::new(io(std::io::ErrorKind::NotFound)),
        };
        assert!(store_error_is_permanent(&err));
        let err = BlockError::Store {
            op: "get",
            path: "p".into(),
            source: generic(HttpError::new(
                HttpErrorKind::Timeout,
                io(std::io::ErrorKind::TimedOut),
            )),
        };
        assert!(!err.is_permanent());
    }

    #[test]
    fn unreachable_names_the_reason() {
        let err = BlockError::Unreachable {
            endpoint: "http://127.0.0.1:1".into(),
            source: generic(HttpError::new(
                HttpErrorKind::Connect,
                io(std::io::ErrorKind::ConnectionRefused),
            )),
        };
        assert_eq!(
            err.to_string(),
            "cannot reach the object store at http://127.0.0.1:1: connection refused; \
             check --s3-endpoint and that the store is running"
        );
        assert!(!err.is_permanent());
    }
}
