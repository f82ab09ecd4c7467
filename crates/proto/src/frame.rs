//! Framing of the metadata RPC protocol.
//!
//! A frame on the TCP stream is: `u32` big-endian length of the rest, `u64` big-endian request
//! id, then the bincode encoding of an [`Envelope`](crate::Envelope) (client to server) or a
//! [`Response`](crate::Response) (server to client). Request ids let many requests share one
//! connection; replies may come back in any order.
//!
//! The length is checked against [`MAX_FRAME_LEN`] before any allocation, and bincode decodes
//! with the same limit, so hostile bytes give an error, never a panic or a huge allocation.

use bincode::Options;
use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame accepted (64 MiB): far above any legal message, well below memory trouble.
pub const MAX_FRAME_LEN: u32 = 64 << 20;

/// A framing or decoding failure; the connection is unusable after it.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the connection or the socket failed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The frame announced a length over [`MAX_FRAME_LEN`] or under the header size.
    #[error("frame length {0} is out of bounds")]
    BadLength(u32),
    /// The message bytes did not decode.
    #[error("malformed message: {0}")]
    Decode(String),
}

fn codec() -> impl Options {
    bincode::DefaultOptions::new()
        .with_limit(u64::from(MAX_FRAME_LEN))
        .with_fixint_encoding()
        .reject_trailing_bytes()
}

/// Encode one frame into a buffer ready to write.
pub fn encode<T: Serialize>(id: u64, msg: &T) -> Result<Vec<u8>, FrameError> {
    let body = codec()
        .serialize(msg)
        .map_err(|e| FrameError::Decode(e.to_string()))?;
    let len = u32::try_from(body.len() + 8)
        .ok()
        .filter(|l| *l <= MAX_FRAME_LEN)
        .ok_or(FrameError::BadLength(u32::MAX))?;
    let mut buf = Vec::with_capacity(body.len() + 12);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&id.to_be_bytes());
    buf.extend_from_slice(&body);
    Ok(buf)
}

/// Decode the message part of a frame (after the id).
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    codec()
        .deserialize(body)
        .map_err(|e| FrameError::Decode(e.to_string()))
}

/// The message length of a frame whose length field reads `len` (big-endian bytes), checked
/// against the bounds before anything is allocated.
fn body_len(len: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(len);
    if !(8..=MAX_FRAME_LEN).contains(&len) {
        return Err(FrameError::BadLength(len));
    }
    Ok(len as usize - 8)
}

/// Read one frame: its request id and message bytes. `Ok(None)` on a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<(u64, Vec<u8>)>, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let mut id = [0u8; 8];
    let mut body = vec![0u8; body_len(len)?];
    r.read_exact(&mut id).await?;
    r.read_exact(&mut body).await?;
    Ok(Some((u64::from_be_bytes(id), body)))
}

/// Read one frame from a blocking reader (the mount's per-thread lane, see the client's rpc
/// module): its request id and message bytes. `Ok(None)` on a clean end of stream.
pub fn read_frame_blocking<R: std::io::Read>(
    r: &mut R,
) -> Result<Option<(u64, Vec<u8>)>, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let mut id = [0u8; 8];
    let mut body = vec![0u8; body_len(len)?];
    r.read_exact(&mut id)?;
    r.read_exact(&mut body)?;
    Ok(Some((u64::from_be_bytes(id), body)))
}

/// Write one already-encoded frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &[u8]) -> Result<(), FrameError> {
    w.write_all(frame).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Envelope, Request};

    #[tokio::test]
    async fn round_trip() {
        let env = Envelope {
            session: 7,
            seq: 9,
            acked: 8,
            request: Request::GetAttr { ino: 1 },
        };
        let buf = encode(42, &env).unwrap();
        let mut r = &buf[..];
        let (id, body) = read_frame(&mut r).await.unwrap().unwrap();
        assert_eq!(id, 42);
        assert_eq!(decode::<Envelope>(&body).unwrap(), env);
    }

    #[test]
    fn blocking_reader_reads_what_the_async_one_does() {
        let env = Envelope {
            session: 1,
            seq: 0,
            acked: 0,
            request: Request::Lookup {
                parent: 1,
                name: b"x".to_vec(),
            },
        };
        let mut buf = encode(5, &env).unwrap();
        buf.extend(encode(6, &env).unwrap());
        let mut r = &buf[..];
        let (id, body) = read_frame_blocking(&mut r).unwrap().unwrap();
        assert_eq!((id, decode::<Envelope>(&body).unwrap()), (5, env.clone()));
        assert_eq!(read_frame_blocking(&mut r).unwrap().unwrap().0, 6);
        assert!(read_frame_blocking(&mut r).unwrap().is_none());
        let mut hostile: &[u8] = &[0, 0, 0, 3, 0, 0, 0, 0];
        assert!(matches!(
            read_frame_blocking(&mut hostile),
            Err(FrameError::BadLength(3))
        ));
    }

    #[tokio::test]
    async fn hostile_lengths_are_rejected() {
        let mut r: &[u8] = &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(matches!(
            read_frame(&mut r).await,
            Err(FrameError::BadLength(_))
        ));
        // A vector length far beyond the frame must not allocate or panic: session, seq and
        // acked, then Lookup (variant 1) with parent 0 and a name of 2^63 bytes.
        let mut body = vec![0u8; 24];
        body.extend_from_slice(&1u32.to_le_bytes());
        body.extend_from_slice(&0u64.to_le_bytes());
        body.extend_from_slice(&(u64::MAX >> 1).to_le_bytes());
        assert!(decode::<Envelope>(&body).is_err());
    }
}
