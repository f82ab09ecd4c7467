//! The block object format: what one stored block object holds, byte for byte.
//!
//! A block object is a fixed 24-byte header followed by the payload. All integers are
//! little-endian.
//!
//! | offset | size | field          | meaning                                                       |
//! |-------:|-----:|----------------|---------------------------------------------------------------|
//! | 0      | 4    | magic          | `b"CRNB"`                                                     |
//! | 4      | 1    | format version | `1`                                                           |
//! | 5      | 1    | compression id | `0` none, `1` lz4 (block format), `2` zstd                    |
//! | 6      | 1    | flags          | bit 0: payload encrypted (AES-256-GCM); no other flag defined |
//! | 7      | 1    | reserved       | `0`                                                           |
//! | 8      | 4    | raw length     | length of the block before compression (at most 16 MiB)       |
//! | 12     | 4    | payload length | length of the bytes after the header                          |
//! | 16     | 4    | payload crc    | crc32c of the payload                                         |
//! | 20     | 4    | raw crc        | crc32c of the raw (decompressed) block                        |
//! | 24     | …    | payload        | the block, compressed with the algorithm named by the id      |
//!
//! Encryption (a codec given a key, [`BlockCodec::with_key`]): after compression the payload
//! becomes `nonce (12 random bytes) · AES-256-GCM(compressed) · tag (16)`, flag bit 0 is set and
//! the raw crc is written as 0 (a checksum of the plaintext would tell something about it; the
//! GCM tag authenticates the plaintext instead). The associated data is the header's first 16
//! bytes (magic to payload length) and the object's path, so a block cannot be moved to another
//! key or have its lengths or compression changed without the tag failing. The key never leaves
//! the client; the store and the servers see only ciphertext.
//!
//! Encoding:
//! 1. Compress the raw block with the codec's [`Compression`].
//! 2. If that did not make it smaller (or the codec is `none`), store the raw bytes and write
//!    compression id `0`: random data costs no CPU to read back and never grows.
//! 3. Write the header, then the payload, as one buffer (one object, one PUT).
//!
//! Decoding checks, in this order, and stops at the first failure with a [`CodecError`]:
//! 1. The buffer holds a whole header (else `TooShort`), the magic matches (`BadMagic`), the format
//!    version is 1 (`UnsupportedVersion`), no flag is set (`UnknownFlags`), the reserved byte is
//!    0 (`BadReserved`) and the compression id is known (`UnknownCompression`).
//! 2. The raw length is at most [`MAX_RAW_LEN`] (`RawTooLarge`): that is the output limit given to
//!    the decompressor, so hostile bytes cannot make us allocate more.
//! 3. The payload length equals the bytes actually present after the header (`LengthMismatch`).
//!    This is also the body-length check of a GET: `object_store`'s `GetResult::bytes` does not
//!    compare the body with the Content-Length, so a short body is caught here. For compression
//!    `none` the payload length must also equal the raw length.
//! 4. The payload crc matches (`PayloadChecksum`), before any decompressor sees the bytes.
//! 5. The payload decompresses to exactly raw-length bytes (`Decompress`).
//! 6. The raw crc matches (`RawChecksum`).
//!
//! Why each part is there:
//! - The *decoder reads the compression id from the header*, never from the volume's settings: a
//!   volume may change its compression, and blocks written before must still read.
//! - *Two checksums*: the payload crc finds damage done in storage or in transit cheaply and before
//!   a decompressor runs on damaged input; the raw crc checks the whole path end to end, codec
//!   included, so a decoder bug or a mixed-up object cannot return wrong data.
//! - *Flags are rejected when unknown* rather than ignored: bit 0 will mean "payload encrypted"
//!   (AES-256-GCM, a later issue). A reader that ignored it would hand ciphertext to the
//!   decompressor and report corruption, instead of saying that this build cannot read the block.
//! - *The format version* lets a later layout be told apart from this one; the reserved byte must
//!   be 0 so that a later meaning for it cannot be silently misread by this version.
//! - *Lengths are u32* and fixed width on every platform: blocks are at most 8 MiB.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;

/// The first four bytes of every block object.
pub const MAGIC: [u8; 4] = *b"CRNB";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Length of the fixed header before the payload.
pub const HEADER_LEN: usize = 24;
/// Largest raw block the codec accepts: twice the largest block size a volume may use (8 MiB).
pub const MAX_RAW_LEN: usize = 16 << 20;
/// Flag bit 0: payload is encrypted (AES-256-GCM; see the module doc).
pub const FLAG_ENCRYPTED: u8 = 0b0000_0001;
/// Bytes of the GCM nonce at the start of an encrypted payload.
const NONCE_LEN: usize = 12;

const COMPRESSION_NONE: u8 = 0;
const COMPRESSION_LZ4: u8 = 1;
const COMPRESSION_ZSTD: u8 = 2;

/// Zstd level used by `zstd` without a level.
pub const ZSTD_DEFAULT_LEVEL: i32 = 3;

/// How block payloads are compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Stored as is.
    None,
    /// LZ4 block format (`lz4_flex`): fast, modest ratio.
    Lz4,
    /// Zstandard at the given level (1 to 19 when parsed).
    Zstd {
        /// Compression level.
        level: i32,
    },
}

/// A compression name that [`Compression::from_str`] does not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported compression `{input}`: {reason}")]
pub struct ParseCompressionError {
    input: String,
    reason: &'static str,
}

impl FromStr for Compression {
    type Err = ParseCompressionError;

    /// Parses `none`, `lz4`, `zstd` (level 3) or `zstd:N` with N from 1 to 19.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParseCompressionError {
            input: s.to_string(),
            reason,
        };
        match s {
            "none" => Ok(Compression::None),
            "lz4" => Ok(Compression::Lz4),
            "zstd" => Ok(Compression::Zstd {
                level: ZSTD_DEFAULT_LEVEL,
            }),
            _ => {
                let Some(level) = s.strip_prefix("zstd:") else {
                    return Err(err(
                        "use none, lz4, zstd or zstd:LEVEL (LEVEL from 1 to 19)",
                    ));
                };
                let level: i32 = level.parse().map_err(|_| {
                    err("the zstd level must be a number from 1 to 19, e.g. zstd:3")
                })?;
                if !(1..=19).contains(&level) {
                    return Err(err("the zstd level must be from 1 to 19"));
                }
                Ok(Compression::Zstd { level })
            }
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Compression::None => f.write_str("none"),
            Compression::Lz4 => f.write_str("lz4"),
            Compression::Zstd { level } => write!(f, "zstd:{level}"),
        }
    }
}

/// Why stored bytes are not a valid block object. Every variant means the object is damaged,
/// torn, or was not written by a compatible cairn; none is worth retrying on the same bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// Fewer bytes than the fixed header.
    #[error("object is {len} bytes, shorter than the {HEADER_LEN}-byte block header")]
    TooShort {
        /// Bytes present.
        len: usize,
    },
    /// The first four bytes are not `CRNB`.
    #[error("bad magic {found:02x?} (expected \"CRNB\"): not a cairn block object")]
    BadMagic {
        /// The first four bytes found.
        found: [u8; 4],
    },
    /// A format version this build does not know.
    #[error(
        "block format version {version} is not supported (this build reads version {FORMAT_VERSION}): \
         the block was written by a newer cairn; upgrade cairn to read it"
    )]
    UnsupportedVersion {
        /// Version found.
        version: u8,
    },
    /// Flags this build does not know (bit 0: encrypted).
    #[error(
        "block has flags {flags:#04x} that this build cannot read (bit 0 = encrypted): the block was \
         written by a newer cairn or with a feature this build lacks; upgrade cairn to read it"
    )]
    UnknownFlags {
        /// Flags found.
        flags: u8,
    },
    /// The block is encrypted and this mount has no key.
    #[error("block is encrypted and no key was given: mount with --encryption-key-file")]
    NeedsKey,
    /// Decryption failed: a different key, or a block changed or moved in storage.
    #[error("block does not decrypt: wrong encryption key, or the object was altered or moved")]
    Decrypt,
    /// The reserved header byte is not zero.
    #[error("reserved header byte is {value:#04x}, expected 0")]
    BadReserved {
        /// Value found.
        value: u8,
    },
    /// A compression id this build does not know.
    #[error("unknown compression id {id} in block header")]
    UnknownCompression {
        /// Id found.
        id: u8,
    },
    /// The header claims a raw length above the decoder's limit.
    #[error("header claims a raw length of {len} bytes, above the {MAX_RAW_LEN}-byte limit")]
    RawTooLarge {
        /// Length claimed.
        len: u64,
    },
    /// The header's payload length differs from the bytes present, or an uncompressed payload's
    /// length differs from the raw length.
    #[error("length mismatch: header says {expected} payload bytes, object holds {actual}")]
    LengthMismatch {
        /// Length the header implies.
        expected: u64,
        /// Length found.
        actual: u64,
    },
    /// The payload checksum does not match.
    #[error("payload checksum mismatch: header {expected:#010x}, computed {actual:#010x}")]
    PayloadChecksum {
        /// Checksum in the header.
        expected: u32,
        /// Checksum of the bytes present.
        actual: u32,
    },
    /// The payload does not decompress to the raw length.
    #[error("payload does not decompress to {raw_len} bytes: {reason}")]
    Decompress {
        /// Raw length from the header.
        raw_len: u32,
        /// What the decompressor said.
        reason: String,
    },
    /// The raw checksum does not match the decompressed bytes.
    #[error("raw checksum mismatch: header {expected:#010x}, computed {actual:#010x}")]
    RawChecksum {
        /// Checksum in the header.
        expected: u32,
        /// Checksum of the decompressed bytes.
        actual: u32,
    },
}

/// Turns raw block bytes into the stored object bytes and back. See the module doc for the format.
#[derive(Clone)]
pub struct BlockCodec {
    compression: Compression,
    key: Option<std::sync::Arc<aes_gcm::Aes256Gcm>>,
}

impl std::fmt::Debug for BlockCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("BlockCodec")
            .field("compression", &self.compression)
            .field("encrypted", &self.key.is_some())
            .finish()
    }
}

impl BlockCodec {
    /// A codec that compresses new blocks with `compression`. Decoding reads the algorithm from
    /// each block's header, so any codec decodes any block.
    pub fn new(compression: Compression) -> Self {
        Self {
            compression,
            key: None,
        }
    }

    /// The same codec, encrypting new blocks with AES-256-GCM under `key` and decrypting
    /// encrypted ones.
    pub fn with_key(mut self, key: &[u8; 32]) -> Self {
        use aes_gcm::KeyInit;
        self.key = Some(std::sync::Arc::new(aes_gcm::Aes256Gcm::new(key.into())));
        self
    }

    /// Whether new blocks are encrypted.
    pub fn encrypts(&self) -> bool {
        self.key.is_some()
    }

    /// The compression new blocks are written with.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// Encodes one block into the bytes of its object.
    ///
    /// # Panics
    /// If `raw` is longer than [`MAX_RAW_LEN`]: block sizes are at most 8 MiB, so a longer block is
    /// a bug in the caller, and writing it would make an object no reader accepts.
    pub fn encode(&self, raw: &[u8]) -> Bytes {
        self.encode_for(raw, b"")
    }

    /// Encodes one block for the object at `path` (bound into the encryption, if any).
    ///
    /// # Panics
    /// As [`BlockCodec::encode`].
    pub fn encode_for(&self, raw: &[u8], path: &[u8]) -> Bytes {
        assert!(
            raw.len() <= MAX_RAW_LEN,
            "block of {} bytes exceeds the {MAX_RAW_LEN}-byte limit",
            raw.len()
        );
        let compressed = match self.compression {
            Compression::None => None,
            Compression::Lz4 => Some((COMPRESSION_LZ4, lz4_flex::block::compress(raw))),
            // zstd only fails on an invalid context or level; storing uncompressed is then correct.
            Compression::Zstd { level } => zstd::bulk::compress(raw, level)
                .ok()
                .map(|c| (COMPRESSION_ZSTD, c)),
        };
        let (id, payload): (u8, &[u8]) = match &compressed {
            Some((id, c)) if c.len() < raw.len() => (*id, c),
            _ => (COMPRESSION_NONE, raw),
        };
        if let Some(cipher) = &self.key {
            return encrypt(cipher, id, raw.len(), payload, path);
        }
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
        out.extend_from_slice(&MAGIC);
        out.push(FORMAT_VERSION);
        out.push(id);
        out.push(0); // flags
        out.push(0); // reserved
        out.extend_from_slice(&len_u32(raw.len()).to_le_bytes());
        out.extend_from_slice(&len_u32(payload.len()).to_le_bytes());
        out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
        let raw_crc = if id == COMPRESSION_NONE {
            // Payload and raw are the same bytes: checksum them once.
            u32::from_le_bytes([out[16], out[17], out[18], out[19]])
        } else {
            crc32c::crc32c(raw)
        };
        out.extend_from_slice(&raw_crc.to_le_bytes());
        out.extend_from_slice(payload);
        Bytes::from(out)
    }

    /// Checks the header and the payload checksum only (steps 1 to 4 of decoding): needs no key
    /// and no decompression. For bytes held elsewhere before they are uploaded (writeback).
    pub fn check_stored(stored: &[u8]) -> Result<(), CodecError> {
        let header = Header::parse(stored)?;
        let actual = crc32c::crc32c(&stored[HEADER_LEN..]);
        if actual != header.payload_crc {
            return Err(CodecError::PayloadChecksum {
                expected: header.payload_crc,
                actual,
            });
        }
        Ok(())
    }

    /// Decodes the bytes of a block object into the raw block. Verifies magic, format version,
    /// flags, lengths and both checksums; never panics, whatever the bytes.
    pub fn decode(&self, stored: &[u8]) -> Result<Bytes, CodecError> {
        self.decode_for(stored, b"")
    }

    /// Decodes the object at `path` (bound into the encryption, if any).
    pub fn decode_for(&self, stored: &[u8], path: &[u8]) -> Result<Bytes, CodecError> {
        let header = Header::parse(stored)?;
        let payload = &stored[HEADER_LEN..];
        let actual = crc32c::crc32c(payload);
        if actual != header.payload_crc {
            return Err(CodecError::PayloadChecksum {
                expected: header.payload_crc,
                actual,
            });
        }
        let decrypted;
        let payload: &[u8] = if header.encrypted {
            let cipher = self.key.as_ref().ok_or(CodecError::NeedsKey)?;
            decrypted = decrypt(cipher, &stored[..16], payload, path)?;
            if header.compression == COMPRESSION_NONE && decrypted.len() != header.raw_len as usize
            {
                return Err(CodecError::LengthMismatch {
                    expected: u64::from(header.raw_len),
                    actual: decrypted.len() as u64,
                });
            }
            &decrypted
        } else {
            payload
        };
        let raw_len = header.raw_len as usize;
        let raw: Vec<u8> = match header.compression {
            COMPRESSION_NONE => payload.to_vec(),
            COMPRESSION_LZ4 => {
                let mut out = vec![0u8; raw_len];
                match lz4_flex::block::decompress_into(payload, &mut out) {
                    Ok(n) if n == raw_len => out,
                    Ok(n) => return Err(decompress_err(header.raw_len, format!("got {n} bytes"))),
                    Err(e) => return Err(decompress_err(header.raw_len, e.to_string())),
                }
            }
            COMPRESSION_ZSTD => match zstd::bulk::decompress(payload, raw_len) {
                Ok(out) if out.len() == raw_len => out,
                Ok(out) => {
                    return Err(decompress_err(
                        header.raw_len,
                        format!("got {} bytes", out.len()),
                    ))
                }
                Err(e) => return Err(decompress_err(header.raw_len, e.to_string())),
            },
            // Header::parse rejects every other id.
            id => return Err(CodecError::UnknownCompression { id }),
        };
        if header.encrypted {
            // The GCM tag already authenticated the plaintext.
            return Ok(Bytes::from(raw));
        }
        let actual = if header.compression == COMPRESSION_NONE {
            header.payload_crc
        } else {
            crc32c::crc32c(&raw)
        };
        if actual != header.raw_crc {
            return Err(CodecError::RawChecksum {
                expected: header.raw_crc,
                actual,
            });
        }
        Ok(Bytes::from(raw))
    }
}

fn aad(header16: &[u8], path: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(16 + path.len());
    a.extend_from_slice(header16);
    a.extend_from_slice(path);
    a
}

fn encrypt(
    cipher: &aes_gcm::Aes256Gcm,
    id: u8,
    raw_len: usize,
    payload: &[u8],
    path: &[u8],
) -> Bytes {
    use aes_gcm::aead::{Aead, Payload};
    let nonce: [u8; NONCE_LEN] = rand::random();
    let sealed_len = NONCE_LEN + payload.len() + 16;
    let mut out = Vec::with_capacity(HEADER_LEN + sealed_len);
    out.extend_from_slice(&MAGIC);
    out.push(FORMAT_VERSION);
    out.push(id);
    out.push(FLAG_ENCRYPTED);
    out.push(0); // reserved
    out.extend_from_slice(&len_u32(raw_len).to_le_bytes());
    out.extend_from_slice(&len_u32(sealed_len).to_le_bytes());
    let sealed = cipher
        .encrypt(
            (&nonce).into(),
            Payload {
                msg: payload,
                aad: &aad(&out[..16], path),
            },
        )
        .expect("AES-GCM encryption of an in-memory buffer under 64 GiB cannot fail");
    let mut body = Vec::with_capacity(sealed_len);
    body.extend_from_slice(&nonce);
    body.extend_from_slice(&sealed);
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // raw crc: not written for encrypted blocks
    out.extend_from_slice(&body);
    Bytes::from(out)
}

fn decrypt(
    cipher: &aes_gcm::Aes256Gcm,
    header16: &[u8],
    payload: &[u8],
    path: &[u8],
) -> Result<Vec<u8>, CodecError> {
    use aes_gcm::aead::{Aead, Payload};
    if payload.len() < NONCE_LEN + 16 {
        return Err(CodecError::Decrypt);
    }
    let (nonce, sealed) = payload.split_at(NONCE_LEN);
    let nonce: &[u8; NONCE_LEN] = nonce.try_into().map_err(|_| CodecError::Decrypt)?;
    cipher
        .decrypt(
            nonce.into(),
            Payload {
                msg: sealed,
                aad: &aad(header16, path),
            },
        )
        .map_err(|_| CodecError::Decrypt)
}

fn decompress_err(raw_len: u32, reason: String) -> CodecError {
    CodecError::Decompress { raw_len, reason }
}

/// `len` as u32; only called on lengths bounded by [`MAX_RAW_LEN`].
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).expect("block lengths are bounded by MAX_RAW_LEN")
}

/// The checked header of a block object.
struct Header {
    encrypted: bool,
    compression: u8,
    raw_len: u32,
    payload_crc: u32,
    raw_crc: u32,
}

impl Header {
    /// Parses and checks the header against the buffer it came from (steps 1 to 3 of decoding).
    fn parse(stored: &[u8]) -> Result<Header, CodecError> {
        let Some(h) = stored.get(..HEADER_LEN) else {
            return Err(CodecError::TooShort { len: stored.len() });
        };
        let u32_at = |at: usize| u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
        let magic = [h[0], h[1], h[2], h[3]];
        if magic != MAGIC {
            return Err(CodecError::BadMagic { found: magic });
        }
        if h[4] != FORMAT_VERSION {
            return Err(CodecError::UnsupportedVersion { version: h[4] });
        }
        let compression = h[5];
        if h[6] & !FLAG_ENCRYPTED != 0 {
            return Err(CodecError::UnknownFlags { flags: h[6] });
        }
        let encrypted = h[6] & FLAG_ENCRYPTED != 0;
        if h[7] != 0 {
            return Err(CodecError::BadReserved { value: h[7] });
        }
        if !matches!(
            compression,
            COMPRESSION_NONE | COMPRESSION_LZ4 | COMPRESSION_ZSTD
        ) {
            return Err(CodecError::UnknownCompression { id: compression });
        }
        let raw_len = u32_at(8);
        if u64::from(raw_len) > MAX_RAW_LEN as u64 {
            return Err(CodecError::RawTooLarge {
                len: u64::from(raw_len),
            });
        }
        let payload_len = u64::from(u32_at(12));
        let present = (stored.len() - HEADER_LEN) as u64;
        if payload_len != present {
            return Err(CodecError::LengthMismatch {
                expected: payload_len,
                actual: present,
            });
        }
        if !encrypted && compression == COMPRESSION_NONE && payload_len != u64::from(raw_len) {
            return Err(CodecError::LengthMismatch {
                expected: u64::from(raw_len),
                actual: payload_len,
            });
        }
        Ok(Header {
            encrypted,
            compression,
            raw_len,
            payload_crc: u32_at(16),
            raw_crc: u32_at(20),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL: [Compression; 4] = [
        Compression::None,
        Compression::Lz4,
        Compression::Zstd { level: 3 },
        Compression::Zstd { level: 19 },
    ];

    /// Deterministic incompressible bytes (xorshift64*), so tests need no RNG crate.
    fn noise(len: usize, mut seed: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        // xorshift stays at 0 forever from seed 0.
        seed = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        while out.len() < len {
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            out.extend_from_slice(&seed.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        out.truncate(len);
        out
    }

    fn compressible(len: usize) -> Vec<u8> {
        b"cairn block ".iter().copied().cycle().take(len).collect()
    }

    #[test]
    fn round_trip_every_compression() {
        let inputs: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("one byte", vec![0x5a]),
            ("random 4 MiB", noise(4 << 20, 7)),
            ("zeros 4 MiB", vec![0; 4 << 20]),
            ("text 1 MiB", compressible(1 << 20)),
        ];
        for compression in ALL {
            let codec = BlockCodec::new(compression);
            for (name, raw) in &inputs {
                let stored = codec.encode(raw);
                assert_eq!(&stored[..4], b"CRNB");
                let back = codec.decode(&stored).unwrap_or_else(|e| {
                    panic!("{compression} {name}: decode failed: {e}");
                });
                assert_eq!(&back[..], &raw[..], "{compression} {name}");
                // Never larger than raw plus the header.
                assert!(
                    stored.len() <= raw.len() + HEADER_LEN,
                    "{compression} {name}"
                );
            }
        }
    }

    #[test]
    fn compression_id_is_none_unless_smaller() {
        for compression in ALL {
            let codec = BlockCodec::new(compression);
            let random = codec.encode(&noise(64 << 10, 3));
            assert_eq!(random[5], COMPRESSION_NONE, "{compression} on random bytes");
            assert_eq!(codec.encode(&[1])[5], COMPRESSION_NONE);
            let zeros = codec.encode(&vec![0; 1 << 20]);
            let expected = match compression {
                Compression::None => COMPRESSION_NONE,
                Compression::Lz4 => COMPRESSION_LZ4,
                Compression::Zstd { .. } => COMPRESSION_ZSTD,
            };
            assert_eq!(zeros[5], expected, "{compression} on zeros");
            if compression != Compression::None {
                assert!(
                    zeros.len() < 64 << 10,
                    "{compression}: {} bytes",
                    zeros.len()
                );
            }
        }
    }

    #[test]
    fn decode_reads_the_algorithm_from_the_header() {
        let raw = compressible(300_000);
        for writer in ALL {
            let stored = BlockCodec::new(writer).encode(&raw);
            for reader in ALL {
                assert_eq!(
                    &BlockCodec::new(reader).decode(&stored).unwrap()[..],
                    &raw[..]
                );
            }
        }
    }

    /// A valid zstd-compressed object to damage.
    fn sample() -> Vec<u8> {
        let stored = BlockCodec::new(Compression::Zstd { level: 3 }).encode(&compressible(10_000));
        assert_eq!(stored[5], COMPRESSION_ZSTD);
        stored.to_vec()
    }

    fn decode(stored: &[u8]) -> Result<Bytes, CodecError> {
        BlockCodec::new(Compression::None).decode(stored)
    }

    #[test]
    fn rejects_wrong_magic() {
        let mut b = sample();
        b[0] = b'X';
        assert!(matches!(decode(&b), Err(CodecError::BadMagic { found }) if &found == b"XRNB"));
    }

    #[test]
    fn rejects_truncated_header() {
        let b = sample();
        for len in [0, 1, 4, HEADER_LEN - 1] {
            assert_eq!(decode(&b[..len]), Err(CodecError::TooShort { len }));
        }
    }

    #[test]
    fn rejects_truncated_payload() {
        let b = sample();
        let payload = (b.len() - HEADER_LEN) as u64;
        assert_eq!(
            decode(&b[..b.len() - 1]),
            Err(CodecError::LengthMismatch {
                expected: payload,
                actual: payload - 1
            })
        );
        assert_eq!(
            decode(&b[..HEADER_LEN]),
            Err(CodecError::LengthMismatch {
                expected: payload,
                actual: 0
            })
        );
        // Trailing garbage is as wrong as missing bytes.
        let mut longer = b.clone();
        longer.push(0);
        assert!(matches!(
            decode(&longer),
            Err(CodecError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn rejects_flipped_payload_byte() {
        for compression in ALL {
            let mut b = BlockCodec::new(compression)
                .encode(&compressible(5000))
                .to_vec();
            let last = b.len() - 1;
            b[last] ^= 0x01;
            assert!(
                matches!(decode(&b), Err(CodecError::PayloadChecksum { .. })),
                "{compression}: {:?}",
                decode(&b)
            );
        }
    }

    #[test]
    fn rejects_flipped_raw_crc() {
        for compression in ALL {
            let mut b = BlockCodec::new(compression)
                .encode(&compressible(5000))
                .to_vec();
            b[21] ^= 0x80;
            assert!(
                matches!(decode(&b), Err(CodecError::RawChecksum { .. })),
                "{compression}: {:?}",
                decode(&b)
            );
        }
    }

    #[test]
    fn encryption_round_trips_hides_plaintext_and_binds_the_path() {
        let key = [7u8; 32];
        let raw = b"ACGT sample line that must not appear in the bucket ".repeat(2000);
        for c in ALL {
            let codec = BlockCodec::new(c).with_key(&key);
            let stored = codec.encode_for(&raw, b"p/1");
            assert_eq!(stored[6], FLAG_ENCRYPTED);
            assert!(
                !stored.windows(20).any(|w| w == &raw[..20]),
                "plaintext in the object ({c})"
            );
            assert_eq!(codec.decode_for(&stored, b"p/1").unwrap(), raw);
            // Moved to another path, read without a key, or with another key: an error, never data.
            assert_eq!(
                codec.decode_for(&stored, b"p/2").unwrap_err(),
                CodecError::Decrypt
            );
            assert_eq!(
                BlockCodec::new(c).decode_for(&stored, b"p/1").unwrap_err(),
                CodecError::NeedsKey
            );
            let other = BlockCodec::new(c).with_key(&[8u8; 32]);
            assert_eq!(
                other.decode_for(&stored, b"p/1").unwrap_err(),
                CodecError::Decrypt
            );
        }
        // A flipped ciphertext byte with a recomputed payload crc still fails the tag.
        let codec = BlockCodec::new(Compression::None).with_key(&key);
        let mut stored = codec.encode_for(&raw, b"p").to_vec();
        let last = stored.len() - 1;
        stored[last] ^= 1;
        let crc = crc32c::crc32c(&stored[HEADER_LEN..]);
        stored[16..20].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            codec.decode_for(&stored, b"p").unwrap_err(),
            CodecError::Decrypt
        );
    }

    #[test]
    fn rejects_unknown_flags_with_a_clear_message() {
        let mut b = sample();
        b[6] = 0b10;
        let err = decode(&b).unwrap_err();
        assert_eq!(err, CodecError::UnknownFlags { flags: 2 });
        let msg = err.to_string();
        assert!(
            msg.contains("encrypted") && msg.contains("upgrade cairn"),
            "{msg}"
        );
    }

    #[test]
    fn rejects_other_header_fields() {
        let mut b = sample();
        b[4] = 2;
        assert_eq!(
            decode(&b),
            Err(CodecError::UnsupportedVersion { version: 2 })
        );
        let mut b = sample();
        b[5] = 9;
        assert_eq!(decode(&b), Err(CodecError::UnknownCompression { id: 9 }));
        let mut b = sample();
        b[7] = 1;
        assert_eq!(decode(&b), Err(CodecError::BadReserved { value: 1 }));
    }

    #[test]
    fn rejects_raw_length_over_the_limit() {
        let mut b = sample();
        let len = MAX_RAW_LEN as u32 + 1;
        b[8..12].copy_from_slice(&len.to_le_bytes());
        assert_eq!(
            decode(&b),
            Err(CodecError::RawTooLarge {
                len: u64::from(len)
            })
        );
        b[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&b), Err(CodecError::RawTooLarge { .. })));
    }

    #[test]
    fn rejects_a_raw_length_the_payload_does_not_decompress_to() {
        // Header lies about the raw length, with a payload crc that matches: the decompressor's
        // output limit, not the checksum, must catch it.
        for (compression, claimed) in [
            (Compression::Lz4, 9_999u32),
            (Compression::Lz4, 10_001),
            (Compression::Zstd { level: 3 }, 9_999),
            (Compression::Zstd { level: 3 }, 10_001),
        ] {
            let mut b = BlockCodec::new(compression)
                .encode(&compressible(10_000))
                .to_vec();
            b[8..12].copy_from_slice(&claimed.to_le_bytes());
            assert!(
                matches!(decode(&b), Err(CodecError::Decompress { .. })),
                "{compression} claimed {claimed}: {:?}",
                decode(&b)
            );
        }
        // Uncompressed: payload length must equal raw length.
        let mut b = BlockCodec::new(Compression::None).encode(b"abc").to_vec();
        b[8..12].copy_from_slice(&4u32.to_le_bytes());
        assert!(matches!(decode(&b), Err(CodecError::LengthMismatch { .. })));
    }

    #[test]
    fn rejects_garbage_payload_with_matching_crc() {
        for id in [COMPRESSION_LZ4, COMPRESSION_ZSTD] {
            let payload = noise(1000, 11);
            let mut b = Vec::new();
            b.extend_from_slice(b"CRNB");
            b.extend_from_slice(&[1, id, 0, 0]);
            b.extend_from_slice(&(MAX_RAW_LEN as u32).to_le_bytes());
            b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            b.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes());
            b.extend_from_slice(&payload);
            assert!(
                matches!(
                    decode(&b),
                    Err(CodecError::Decompress { .. } | CodecError::RawChecksum { .. })
                ),
                "id {id}: {:?}",
                decode(&b)
            );
        }
    }

    #[test]
    fn compression_parses_and_displays() {
        for (text, value) in [
            ("none", Compression::None),
            ("lz4", Compression::Lz4),
            ("zstd", Compression::Zstd { level: 3 }),
            ("zstd:1", Compression::Zstd { level: 1 }),
            ("zstd:19", Compression::Zstd { level: 19 }),
        ] {
            assert_eq!(text.parse::<Compression>(), Ok(value), "{text}");
            assert_eq!(value.to_string().parse::<Compression>(), Ok(value));
        }
        assert_eq!(Compression::Zstd { level: 7 }.to_string(), "zstd:7");
        for bad in [
            "", "gzip", "zstd:", "zstd:0", "zstd:20", "zstd:x", "ZSTD", "lz4:1",
        ] {
            let err = bad.parse::<Compression>().unwrap_err().to_string();
            assert!(err.starts_with("unsupported compression"), "{bad}: {err}");
        }
        let err = "gzip".parse::<Compression>().unwrap_err().to_string();
        assert_eq!(
            err,
            "unsupported compression `gzip`: use none, lz4, zstd or zstd:LEVEL (LEVEL from 1 to 19)"
        );
    }

    /// Headers that pass every length check, so the fuzzer reaches the decompressors.
    fn plausible_object() -> impl Strategy<Value = Vec<u8>> {
        (
            0u8..4,
            any::<bool>(),
            0u32..70_000,
            proptest::collection::vec(any::<u8>(), 0..4096),
        )
            .prop_map(|(id, good_crc, raw_len, payload)| {
                let mut b = Vec::new();
                b.extend_from_slice(b"CRNB");
                b.extend_from_slice(&[1, id, 0, 0]);
                b.extend_from_slice(&raw_len.to_le_bytes());
                b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
                let crc = if good_crc {
                    crc32c::crc32c(&payload)
                } else {
                    0
                };
                b.extend_from_slice(&crc.to_le_bytes());
                b.extend_from_slice(&0u32.to_le_bytes());
                b.extend_from_slice(&payload);
                b
            })
    }

    proptest! {
        #[test]
        fn decode_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn decode_never_panics_on_plausible_headers(bytes in plausible_object()) {
            let _ = decode(&bytes);
        }

        #[test]
        fn decode_never_panics_on_damaged_objects(
            compression in 0usize..4,
            raw in proptest::collection::vec(0u8..4, 0..3000),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
            cut in proptest::option::of(any::<usize>()),
        ) {
            let mut b = BlockCodec::new(ALL[compression]).encode(&raw).to_vec();
            for (at, x) in flips {
                let at = at % b.len();
                b[at] ^= x;
            }
            if let Some(cut) = cut {
                b.truncate(cut % (b.len() + 1));
            }
            if let Ok(back) = decode(&b) {
                // Damage that still decodes must have left the data intact (e.g. a flip of 0).
                prop_assert_eq!(&back[..], &raw[..]);
            }
        }

        #[test]
        fn round_trip_any_bytes(compression in 0usize..4, raw in proptest::collection::vec(any::<u8>(), 0..5000)) {
            let codec = BlockCodec::new(ALL[compression]);
            prop_assert_eq!(&codec.decode(&codec.encode(&raw)).unwrap()[..], &raw[..]);
        }
    }
}
