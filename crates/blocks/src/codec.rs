//! The block object format: what one stored block object holds, byte for byte.
//!
//! Writers write format version 2 (framed). Readers read versions 2 and 1 (the whole-block format
//! of earlier builds, still in the buckets of existing volumes). All integers are little-endian.
//!
//! # Version 2: frames
//!
//! The raw block is cut into frames of a fixed raw size ([`FRAME_LEN`], 64 KiB; the last frame
//! may be shorter). Each frame is compressed, checksummed and (on an encrypted volume) sealed on
//! its own, so a reader can fetch and check only the frames that cover the bytes it wants
//! ([`FrameIndex`], used by [`crate::BlockStore::get_range`]). The object is the header, the
//! frame table, then the frames in order:
//!
//! | offset | size | field          | meaning                                                       |
//! |-------:|-----:|----------------|---------------------------------------------------------------|
//! | 0      | 4    | magic          | `b"CRNB"`                                                     |
//! | 4      | 1    | format version | `2`                                                           |
//! | 5      | 1    | compression id | `0` none, `1` lz4 (block format), `2` zstd: the algorithm of the frames marked compressed |
//! | 6      | 1    | flags          | bit 0: frames encrypted (AES-256-GCM); no other flag defined  |
//! | 7      | 1    | reserved       | `0`                                                           |
//! | 8      | 4    | raw length     | length of the raw block (at most 16 MiB)                      |
//! | 12     | 4    | frame size     | raw bytes per frame: a power of two, 4 KiB to 16 MiB          |
//! | 16     | 4    | frame count    | `ceil(raw length / frame size)` (0 for an empty block)        |
//! | 20     | 4    | index crc      | crc32c of bytes 0..20 followed by the whole frame table       |
//! | 24     | 16·n | frame table    | one 16-byte entry per frame, in order (below)                 |
//! | 24+16n | …    | frames         | each frame's stored bytes, in order, back to back             |
//!
//! A frame table entry (frame `i` holds raw bytes `[i·size, min((i+1)·size, raw length))`; its
//! place in the object is the sum of the stored lengths before it):
//!
//! | offset | size | field         | meaning                                                        |
//! |-------:|-----:|---------------|----------------------------------------------------------------|
//! | 0      | 4    | stored length | bytes of the frame in the object                               |
//! | 4      | 1    | frame flags   | bit 0: compressed with the header's algorithm (else stored raw) |
//! | 5      | 3    | reserved      | `0`                                                            |
//! | 8      | 4    | stored crc    | crc32c of the frame's stored bytes                             |
//! | 12     | 4    | raw crc       | crc32c of the frame's raw bytes; `0` when encrypted            |
//!
//! Encrypted (a codec given a key, [`BlockCodec::with_key`]): a frame's stored bytes are
//! `nonce (12 random bytes) · AES-256-GCM(frame after compression) · tag (16)`, with a fresh
//! nonce per frame. The associated data of frame `i` is header bytes 0..20 (magic to frame
//! count), `i` as a u32, the frame's flags byte, and the object's path: a frame cannot be moved
//! to another block, another place in its block or another path, nor have its compression
//! marker, the block's lengths or its compression changed, without its tag failing. The raw crc
//! is written as 0 (a checksum of the plaintext would tell something about it; the tag
//! authenticates the plaintext instead).
//!
//! Encoding:
//! 1. Cut the raw block into frames of [`FRAME_LEN`] bytes.
//! 2. Compress each frame with the codec's [`Compression`]; if that did not save at least an
//!    eighth of it (or the codec is `none`, or a sample of the frame has the byte entropy of
//!    random data, or one of the 7 frames before it saved less than an eighth, so that
//!    compressing is not even tried), store the frame raw and leave its flag bit 0
//!    clear: incompressible data costs next to no CPU to write, reads back without a copy and
//!    never grows.
//! 3. Seal each frame if the codec has a key; checksum each frame's stored and raw bytes.
//! 4. Write header, table and frames as one buffer (one object, one PUT).
//!
//! Decoding the header and table ([`FrameIndex::parse`]) checks, in this order, and stops at the
//! first failure with a [`CodecError`]:
//! 1. A whole header is present (`TooShort`), the magic matches (`BadMagic`), the version is 1
//!    or 2 (`UnsupportedVersion`; version 1 goes on as below), no unknown flag is set
//!    (`UnknownFlags`), the reserved byte is 0 (`BadReserved`), the compression id is known
//!    (`UnknownCompression`).
//! 2. The raw length is at most [`MAX_RAW_LEN`] (`RawTooLarge`), the frame size is a power of
//!    two from [`MIN_FRAME_LEN`] to [`MAX_RAW_LEN`] (`BadFrameSize`) and the frame count is
//!    `ceil(raw / frame size)` (`FrameCount`). So the table is at most 4096 entries (64 KiB),
//!    whatever the bytes say.
//! 3. The index crc matches header and table (`IndexChecksum`), before any entry is believed.
//! 4. Each entry: reserved bytes 0, no unknown frame flag, the compressed flag only with an
//!    algorithm, and a stored length that fits the frame's raw length: equal to it when stored
//!    raw, below it when compressed, plus 28 bytes when sealed (`BadFrame`). So no frame, and
//!    no span of frames a reader fetches, is larger than the raw bytes it holds plus 28.
//!
//! Decoding frames ([`BlockCodec::decode_frames`]) then checks, per frame, in this order:
//! 5. The bytes present are exactly the stored lengths the table gives (`LengthMismatch`; for a
//!    whole object, header + table + frames must be the object's length). This is also the body
//!    length check of a GET, which `object_store` does not make.
//! 6. The stored crc matches (`FrameChecksum`), before a decryptor or a decompressor sees the
//!    bytes.
//! 7. With the encrypted flag: a key is present (`NeedsKey`) and the tag verifies (`Decrypt`).
//! 8. A compressed frame decompresses to exactly its raw length (`Decompress`): that length is
//!    the decompressor's output limit, so hostile bytes cannot make us allocate more.
//! 9. Unencrypted: the raw crc matches (`FrameRawChecksum`).
//!
//! Why each part is there:
//! - *Frames* make random access cheap: a 4 KiB read of a 4 MiB block fetches and decodes one
//!   64 KiB frame (plus the table, once per block, cached by the store) instead of the whole
//!   block. 64 KiB keeps most of zstd's ratio on typical data and the table at 1 KiB for a 4 MiB
//!   block, and is small next to the latency of a GET. Each frame stands alone (own compression
//!   context, own checksums, own nonce) so that it can be checked without its neighbours.
//! - *The frame size is in the header*, not fixed by the format: a later writer may choose
//!   another size and this reader still reads it.
//! - *The table lives at the front* so one ranged GET of a known size (header plus the largest
//!   table the block size allows) gets it, and *has its own crc* so a damaged table is found
//!   before its lengths steer a read. The index crc covers the header too, so a flipped header
//!   field is found even where no other check would see it.
//! - *Per-frame raw/compressed marker*: incompressible frames are stored raw even when their
//!   neighbours compress.
//! - *Two checksums per frame* (unencrypted): the stored crc finds damage in storage or transit
//!   cheaply and before a decompressor runs on damaged input; the raw crc checks the whole path,
//!   codec included, so a decoder bug or a mixed-up object cannot return wrong data.
//! - *The decoder reads the compression id from the header*, never from the volume's settings: a
//!   volume may change its compression, and blocks written before must still read.
//! - *Flags are rejected when unknown* rather than ignored: a reader that ignored "encrypted"
//!   would hand ciphertext to the decompressor and report corruption, instead of saying that this
//!   build cannot read the block. Likewise reserved bytes must be 0, so that a later meaning for
//!   them cannot be silently misread by this version.
//! - *Lengths are u32* and fixed width on every platform: blocks are at most 8 MiB.
//!
//! # Version 1: one payload (read only)
//!
//! Written by earlier builds. A fixed 24-byte header followed by the payload:
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
//! | 20     | 4    | raw crc        | crc32c of the raw (decompressed) block; 0 when encrypted      |
//! | 24     | …    | payload        | the block, compressed with the algorithm named by the id      |
//!
//! Encrypted, the payload is `nonce (12) · AES-256-GCM(compressed) · tag (16)` with the header's
//! first 16 bytes and the object's path as associated data. Decoding checks header fields as in
//! step 1 above, the raw length limit, the payload length against the bytes present (and against
//! the raw length for compression `none`), the payload crc, then decrypts, decompresses to
//! exactly the raw length and checks the raw crc. A version 1 object has no table: a ranged read
//! of it reads and decodes the whole object.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use bytes::Bytes;

/// The first four bytes of every block object.
pub const MAGIC: [u8; 4] = *b"CRNB";
/// The format version this build writes (it also reads [`FORMAT_V1`]).
pub const FORMAT_VERSION: u8 = 2;
/// The whole-block format of earlier builds: read, never written.
pub const FORMAT_V1: u8 = 1;
/// Length of the fixed header (both versions).
pub const HEADER_LEN: usize = 24;
/// Largest raw block the codec accepts: twice the largest block size a volume may use (8 MiB).
pub const MAX_RAW_LEN: usize = 16 << 20;
/// Raw bytes per frame in the blocks this build writes.
pub const FRAME_LEN: usize = 64 << 10;
/// Smallest frame size a reader accepts: bounds the table at 4096 entries.
pub const MIN_FRAME_LEN: usize = 4 << 10;
/// Bytes of one frame table entry.
pub const ENTRY_LEN: usize = 16;
/// Flag bit 0: payload (v1) or frames (v2) encrypted (AES-256-GCM; see the module doc).
pub const FLAG_ENCRYPTED: u8 = 0b0000_0001;
/// Frame flag bit 0: the frame is compressed with the header's algorithm.
const FRAME_COMPRESSED: u8 = 0b0000_0001;
/// Bytes of the GCM nonce at the start of an encrypted payload or frame.
const NONCE_LEN: usize = 12;
/// Bytes of the GCM tag.
const TAG_LEN: usize = 16;
/// What sealing adds to a frame.
const SEAL_LEN: usize = NONCE_LEN + TAG_LEN;

const COMPRESSION_NONE: u8 = 0;
const COMPRESSION_LZ4: u8 = 1;
const COMPRESSION_ZSTD: u8 = 2;

/// Zstd level used by `zstd` without a level.
pub const ZSTD_DEFAULT_LEVEL: i32 = 3;

/// Bytes of header and frame table of a version 2 block of `raw_len` bytes written with frames
/// of [`FRAME_LEN`]: what a reader fetches first to learn where the frames are.
pub fn index_len_for(raw_len: u64) -> u64 {
    let frames = raw_len.min(MAX_RAW_LEN as u64).div_ceil(FRAME_LEN as u64);
    HEADER_LEN as u64 + frames * ENTRY_LEN as u64
}

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
        "block format version {version} is not supported (this build reads versions {FORMAT_V1} \
         and {FORMAT_VERSION}): the block was written by a newer cairn; upgrade cairn to read it"
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
        /// Raw length from the header (of the frame, in version 2).
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
    /// Version 2: the frame size is not a power of two from 4 KiB to 16 MiB.
    #[error("header claims a frame size of {len} bytes: not a power of two from {MIN_FRAME_LEN} to {MAX_RAW_LEN}")]
    BadFrameSize {
        /// Frame size claimed.
        len: u32,
    },
    /// Version 2: the frame count does not follow from the raw length and the frame size.
    #[error("header claims {found} frames, raw length and frame size give {expected}")]
    FrameCount {
        /// Count that raw length and frame size give.
        expected: u64,
        /// Count in the header.
        found: u32,
    },
    /// Version 2: the checksum of header and frame table does not match.
    #[error("frame table checksum mismatch: header {expected:#010x}, computed {actual:#010x}")]
    IndexChecksum {
        /// Checksum in the header.
        expected: u32,
        /// Checksum of header and table present.
        actual: u32,
    },
    /// Version 2: a frame table entry is not possible (bad flags, reserved bytes or length).
    #[error("frame {frame}: {reason}")]
    BadFrame {
        /// Index of the frame in its block.
        frame: u32,
        /// What is wrong with its entry.
        reason: &'static str,
    },
    /// Version 2: a frame's stored checksum does not match.
    #[error("frame {frame} checksum mismatch: table {expected:#010x}, computed {actual:#010x}")]
    FrameChecksum {
        /// Index of the frame in its block.
        frame: u32,
        /// Checksum in the table.
        expected: u32,
        /// Checksum of the bytes present.
        actual: u32,
    },
    /// Version 2: a frame's raw checksum does not match its decoded bytes.
    #[error(
        "frame {frame} raw checksum mismatch: table {expected:#010x}, computed {actual:#010x}"
    )]
    FrameRawChecksum {
        /// Index of the frame in its block.
        frame: u32,
        /// Checksum in the table.
        expected: u32,
        /// Checksum of the decoded bytes.
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

/// Where the frames of a version 2 object are, read from its header and frame table, checked
/// (decoding steps 1 to 4 of the module doc). Blocks never change, so an index stays right for
/// as long as its object exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameIndex {
    /// Header bytes 0..20: part of every frame's associated data.
    fixed: [u8; 20],
    encrypted: bool,
    compression: u8,
    raw_len: u32,
    frame_len: u32,
    frames: Vec<FrameEntry>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FrameEntry {
    /// Offset of the frame's stored bytes in the object.
    offset: u64,
    stored_len: u32,
    flags: u8,
    stored_crc: u32,
    raw_crc: u32,
}

/// What the first bytes of an object say about reading a part of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IndexRead {
    /// A version 1 object: it has no frames; read and decode the whole of it.
    Whole,
    /// The header is version 2 but its table ends beyond the bytes given: read this many.
    NeedIndex(u64),
    /// Header and table, checked.
    Index(FrameIndex),
}

impl FrameIndex {
    /// Parses the first bytes of an object: the header, and the frame table if the bytes hold
    /// it. Never panics, whatever the bytes.
    pub fn parse(prefix: &[u8]) -> Result<IndexRead, CodecError> {
        let Some(h) = prefix.get(..HEADER_LEN) else {
            return Err(CodecError::TooShort { len: prefix.len() });
        };
        check_common_header(h)?;
        if h[4] == FORMAT_V1 {
            return Ok(IndexRead::Whole);
        }
        let raw_len = le_u32(h, 8);
        let frame_len = le_u32(h, 12);
        let count = le_u32(h, 16);
        if !frame_len.is_power_of_two()
            || (frame_len as usize) < MIN_FRAME_LEN
            || frame_len as usize > MAX_RAW_LEN
        {
            return Err(CodecError::BadFrameSize { len: frame_len });
        }
        let expected = u64::from(raw_len).div_ceil(u64::from(frame_len));
        if u64::from(count) != expected {
            return Err(CodecError::FrameCount {
                expected,
                found: count,
            });
        }
        // At most 4096 entries: raw length and frame size are bounded above.
        let index_len = HEADER_LEN + count as usize * ENTRY_LEN;
        let Some(table) = prefix.get(HEADER_LEN..index_len) else {
            return Ok(IndexRead::NeedIndex(index_len as u64));
        };
        let mut crc = crc32c::crc32c(&h[..20]);
        crc = crc32c::crc32c_append(crc, table);
        let expected_crc = le_u32(h, 20);
        if crc != expected_crc {
            return Err(CodecError::IndexChecksum {
                expected: expected_crc,
                actual: crc,
            });
        }
        let encrypted = h[6] & FLAG_ENCRYPTED != 0;
        let compression = h[5];
        let mut frames = Vec::with_capacity(count as usize);
        let mut offset = index_len as u64;
        for (i, e) in table.chunks_exact(ENTRY_LEN).enumerate() {
            let frame = i as u32;
            let bad = |reason| CodecError::BadFrame { frame, reason };
            let stored_len = le_u32(e, 0);
            let flags = e[4];
            if e[5..8] != [0, 0, 0] {
                return Err(bad("reserved bytes of its table entry are not 0"));
            }
            if flags & !FRAME_COMPRESSED != 0 {
                return Err(bad("unknown frame flags in its table entry"));
            }
            let compressed = flags & FRAME_COMPRESSED != 0;
            if compressed && compression == COMPRESSION_NONE {
                return Err(bad("marked compressed in a block without compression"));
            }
            let raw = frame_raw_len(raw_len, frame_len, frame) as u64;
            let seal = if encrypted { SEAL_LEN as u64 } else { 0 };
            let body = u64::from(stored_len).checked_sub(seal);
            let fits = match body {
                None => false,
                Some(body) if compressed => body >= 1 && body < raw,
                Some(body) => body == raw,
            };
            if !fits {
                return Err(bad("stored length does not fit its raw length"));
            }
            frames.push(FrameEntry {
                offset,
                stored_len,
                flags,
                stored_crc: le_u32(e, 8),
                raw_crc: le_u32(e, 12),
            });
            offset += u64::from(stored_len);
        }
        let mut fixed = [0u8; 20];
        fixed.copy_from_slice(&h[..20]);
        Ok(IndexRead::Index(FrameIndex {
            fixed,
            encrypted,
            compression,
            raw_len,
            frame_len,
            frames,
        }))
    }

    /// Length of the raw block.
    pub fn raw_len(&self) -> u64 {
        u64::from(self.raw_len)
    }

    /// Raw bytes per frame.
    pub fn frame_len(&self) -> u64 {
        u64::from(self.frame_len)
    }

    /// Number of frames.
    pub fn frame_count(&self) -> usize {
        self.frames.len()
    }

    /// Bytes of header and table.
    pub fn index_len(&self) -> u64 {
        (HEADER_LEN + self.frames.len() * ENTRY_LEN) as u64
    }

    /// Length of the whole object.
    pub fn object_len(&self) -> u64 {
        self.frames
            .last()
            .map_or(self.index_len(), |f| f.offset + u64::from(f.stored_len))
    }

    /// Bytes this index takes in memory, for bounding caches of indexes.
    pub fn weight(&self) -> u64 {
        (std::mem::size_of::<FrameIndex>() + self.frames.len() * std::mem::size_of::<FrameEntry>())
            as u64
    }

    /// The frames that hold raw bytes `range` (clamped to the raw length); empty if none.
    pub fn frames_for(&self, range: Range<u64>) -> Range<usize> {
        let end = range.end.min(self.raw_len());
        if range.start >= end {
            return 0..0;
        }
        let fl = self.frame_len();
        (range.start / fl) as usize..end.div_ceil(fl) as usize
    }

    /// Where the stored bytes of `frames` are in the object.
    pub fn stored_span(&self, frames: Range<usize>) -> Range<u64> {
        match (self.frames.get(frames.start), frames.end.checked_sub(1)) {
            (Some(first), Some(last)) if frames.start < frames.end => {
                let last = &self.frames[last.min(self.frames.len() - 1)];
                first.offset..last.offset + u64::from(last.stored_len)
            }
            _ => 0..0,
        }
    }

    /// Raw offset of the first byte of frame `frame`.
    pub fn raw_start(&self, frame: usize) -> u64 {
        frame as u64 * self.frame_len()
    }
}

/// A frame that compresses to more than this fraction of its size (7/8) saves too little for
/// the CPU it costs: it is stored raw (as ZFS keeps a block compressed only if that saves an
/// eighth), and the next [`POOR_FRAME_SKIP`] frames of the block are stored raw without trying,
/// then one is tried again; each further poor probe in a row doubles the run left untried
/// (7, 15, 31, ...), and a probe that pays ([`PAYING_RATIO`]) starts over at 7. Data of this
/// kind (benchmark buffers, some columnar and media formats) would otherwise cost zstd about
/// 5 ms of CPU per MiB to save a few percent of the bucket, and every read of it a
/// decompression and a copy (raw frames read without a copy).
const POOR_RATIO: (u64, u64) = (7, 8);
/// See [`POOR_RATIO`]: a 4 MiB block of such data costs four probes, and one that turns
/// compressible is caught within half a MiB after a single poor frame, 2 MiB at worst.
const POOR_FRAME_SKIP: usize = 7;
/// A probe "pays", and frames are probed one by one again, only if it saves at least a quarter.
/// Data right at the [`POOR_RATIO`] line (fio's buffers: 11-13% per frame) would otherwise keep
/// every frame probed for a few percent, at three times the CPU of not compressing at all.
const PAYING_RATIO: (u64, u64) = (3, 4);

/// Whether `compressed` bytes are more than `ratio` (numerator, denominator) of `raw` bytes.
fn over_ratio(compressed: usize, raw: usize, ratio: (u64, u64)) -> bool {
    compressed as u64 * ratio.1 > raw as u64 * ratio.0
}

/// Bits per byte above which a frame is stored raw without trying its compressor.
const INCOMPRESSIBLE_BITS: f64 = 7.7;
/// Bytes of a frame sampled to estimate its entropy, as windows of [`SAMPLE_WINDOW`].
const SAMPLE_LEN: usize = 4096;
const SAMPLE_WINDOW: usize = 128;

/// Whether a frame's byte entropy, estimated on an even sample of it, says it will not compress:
/// media, archives and encrypted files cost zstd its full time for nothing (about 60% of a
/// mount's CPU on a sequential write of random data), while a 4 KiB histogram costs a few
/// microseconds. The estimate of uniform random bytes on this sample is about 7.95 bits; text
/// and most binary formats are far below 7.7. Order-0 entropy misses repeats inside a frame of
/// otherwise random bytes, which is rare and costs only ratio, never data.
fn looks_incompressible(frame: &[u8]) -> bool {
    if frame.len() < 2 * SAMPLE_LEN {
        return false;
    }
    let windows = SAMPLE_LEN / SAMPLE_WINDOW;
    let stride = (frame.len() - SAMPLE_WINDOW) / (windows - 1);
    let mut counts = [0u32; 256];
    for w in 0..windows {
        let at = w * stride;
        for &b in &frame[at..at + SAMPLE_WINDOW] {
            counts[usize::from(b)] += 1;
        }
    }
    let n = SAMPLE_LEN as f64;
    let bits: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum();
    bits > INCOMPRESSIBLE_BITS
}

/// Raw length of frame `frame` of a block.
fn frame_raw_len(raw_len: u32, frame_len: u32, frame: u32) -> usize {
    let start = u64::from(frame) * u64::from(frame_len);
    (u64::from(raw_len).saturating_sub(start)).min(u64::from(frame_len)) as usize
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Checks of header bytes both versions share: magic, version, flags, reserved, compression id,
/// raw length. `h` is at least [`HEADER_LEN`] bytes.
fn check_common_header(h: &[u8]) -> Result<(), CodecError> {
    let magic = [h[0], h[1], h[2], h[3]];
    if magic != MAGIC {
        return Err(CodecError::BadMagic { found: magic });
    }
    if h[4] != FORMAT_V1 && h[4] != FORMAT_VERSION {
        return Err(CodecError::UnsupportedVersion { version: h[4] });
    }
    if h[6] & !FLAG_ENCRYPTED != 0 {
        return Err(CodecError::UnknownFlags { flags: h[6] });
    }
    if h[7] != 0 {
        return Err(CodecError::BadReserved { value: h[7] });
    }
    if !matches!(h[5], COMPRESSION_NONE | COMPRESSION_LZ4 | COMPRESSION_ZSTD) {
        return Err(CodecError::UnknownCompression { id: h[5] });
    }
    let raw_len = le_u32(h, 8);
    if raw_len as usize > MAX_RAW_LEN {
        return Err(CodecError::RawTooLarge {
            len: u64::from(raw_len),
        });
    }
    Ok(())
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

    /// Encodes one block for the object at `path` (bound into the encryption, if any), in format
    /// version 2.
    ///
    /// # Panics
    /// As [`BlockCodec::encode`].
    pub fn encode_for(&self, raw: &[u8], path: &[u8]) -> Bytes {
        Bytes::from(self.encode_into(raw, path, Vec::new()))
    }

    /// Bytes of the object of `raw` (as [`BlockCodec::encode_for`]), written into `out` (emptied
    /// first, grown if it is too small): for a buffer used again ([`crate::pool`]).
    ///
    /// # Panics
    /// As [`BlockCodec::encode`].
    pub fn encode_into(&self, raw: &[u8], path: &[u8], mut out: Vec<u8>) -> Vec<u8> {
        assert!(
            raw.len() <= MAX_RAW_LEN,
            "block of {} bytes exceeds the {MAX_RAW_LEN}-byte limit",
            raw.len()
        );
        let id = match self.compression {
            Compression::None => COMPRESSION_NONE,
            Compression::Lz4 => COMPRESSION_LZ4,
            Compression::Zstd { .. } => COMPRESSION_ZSTD,
        };
        let count = raw.len().div_ceil(FRAME_LEN);
        let index_len = HEADER_LEN + count * ENTRY_LEN;
        let sealing = if self.key.is_some() { SEAL_LEN } else { 0 };
        out.clear();
        out.reserve_exact(index_len + raw.len() + count * sealing);
        out.extend_from_slice(&MAGIC);
        out.push(FORMAT_VERSION);
        out.push(id);
        out.push(if self.key.is_some() {
            FLAG_ENCRYPTED
        } else {
            0
        });
        out.push(0); // reserved
        out.extend_from_slice(&len_u32(raw.len()).to_le_bytes());
        out.extend_from_slice(&len_u32(FRAME_LEN).to_le_bytes());
        out.extend_from_slice(&len_u32(count).to_le_bytes());
        let fixed: [u8; 20] = out[..20].try_into().expect("20 bytes written");
        // The index crc and the frame table are written in place once the frames are: the
        // frames go straight after them, with no second copy of the block.
        out.resize(index_len, 0);
        // zstd only fails on an invalid context or level; frames are then stored raw.
        let mut zstd = match self.compression {
            Compression::Zstd { level } => zstd::bulk::Compressor::new(level).ok(),
            _ => None,
        };
        // Frames left to store raw untried after one that compressed poorly, and how many the
        // next poor probe leaves.
        let mut untried = 0;
        let mut skip = POOR_FRAME_SKIP;
        for (i, chunk) in raw.chunks(FRAME_LEN).enumerate() {
            let compressed = match self.compression {
                Compression::None => None,
                _ if untried > 0 => {
                    untried -= 1;
                    None
                }
                _ if looks_incompressible(chunk) => None,
                Compression::Lz4 => Some(lz4_flex::block::compress(chunk)),
                Compression::Zstd { .. } => zstd.as_mut().and_then(|z| z.compress(chunk).ok()),
            };
            let poor = |c: &Vec<u8>| over_ratio(c.len(), chunk.len(), POOR_RATIO);
            // Probing every frame pays only for data that compresses well; a frame that saves
            // less than a quarter is still kept compressed if it saves an eighth, but the probes
            // go on thinning out as after a poor one.
            match &compressed {
                Some(c) if over_ratio(c.len(), chunk.len(), PAYING_RATIO) => {
                    untried = skip;
                    skip = skip * 2 + 1;
                }
                Some(_) => skip = POOR_FRAME_SKIP,
                None => {}
            }
            let (flags, payload): (u8, &[u8]) = match &compressed {
                Some(c) if !c.is_empty() && !poor(c) => (FRAME_COMPRESSED, c),
                _ => (0, chunk),
            };
            let start = out.len();
            let (stored_crc, raw_crc) = match &self.key {
                Some(cipher) => {
                    seal(cipher, &mut out, &fixed, len_u32(i), flags, payload, path);
                    (crc32c::crc32c(&out[start..]), 0)
                }
                None => {
                    out.extend_from_slice(payload);
                    let raw_crc = crc32c::crc32c(chunk);
                    // A frame stored raw is its raw bytes: one pass gives both checksums.
                    let stored_crc = if flags == 0 {
                        raw_crc
                    } else {
                        crc32c::crc32c(payload)
                    };
                    (stored_crc, raw_crc)
                }
            };
            let stored_len = out.len() - start;
            let entry = &mut out[HEADER_LEN + i * ENTRY_LEN..][..ENTRY_LEN];
            entry[..4].copy_from_slice(&len_u32(stored_len).to_le_bytes());
            entry[4..8].copy_from_slice(&[flags, 0, 0, 0]);
            entry[8..12].copy_from_slice(&stored_crc.to_le_bytes());
            entry[12..].copy_from_slice(&raw_crc.to_le_bytes());
        }
        let crc = crc32c::crc32c_append(crc32c::crc32c(&fixed), &out[HEADER_LEN..index_len]);
        out[20..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Checks the header, table and stored checksums only: needs no key and no decompression.
    /// For bytes held elsewhere before they are uploaded (writeback).
    pub fn check_stored(stored: &[u8]) -> Result<(), CodecError> {
        let index = match FrameIndex::parse(stored)? {
            IndexRead::Whole => {
                let header = Header::parse(stored)?;
                let actual = crc32c::crc32c(&stored[HEADER_LEN..]);
                if actual != header.payload_crc {
                    return Err(CodecError::PayloadChecksum {
                        expected: header.payload_crc,
                        actual,
                    });
                }
                return Ok(());
            }
            IndexRead::NeedIndex(len) => {
                return Err(CodecError::LengthMismatch {
                    expected: len,
                    actual: stored.len() as u64,
                })
            }
            IndexRead::Index(index) => index,
        };
        check_object_len(&index, stored)?;
        for (i, f) in index.frames.iter().enumerate() {
            let bytes = &stored[f.offset as usize..(f.offset + u64::from(f.stored_len)) as usize];
            check_frame_crc(i, f, bytes)?;
        }
        Ok(())
    }

    /// Decodes the bytes of a block object into the raw block. Verifies magic, format version,
    /// flags, lengths and checksums; never panics, whatever the bytes.
    pub fn decode(&self, stored: &Bytes) -> Result<Bytes, CodecError> {
        self.decode_for(stored, b"")
    }

    /// Decodes the object at `path` (bound into the encryption, if any).
    pub fn decode_for(&self, stored: &Bytes, path: &[u8]) -> Result<Bytes, CodecError> {
        self.decode_range(stored, path, 0..u64::MAX)
    }

    /// Decodes raw bytes `range` (clamped to the block's length) of the whole object `stored`.
    /// For version 2 only the frames that hold the range are checked and decoded; version 1 is
    /// decoded whole. Never panics, whatever the bytes. Frames stored raw come back as a slice
    /// of `stored`, not a copy.
    pub fn decode_range(
        &self,
        stored: &Bytes,
        path: &[u8],
        range: Range<u64>,
    ) -> Result<Bytes, CodecError> {
        let index = match FrameIndex::parse(stored)? {
            IndexRead::Whole => {
                let raw = self.decode_v1(stored, path)?;
                let end = range.end.min(raw.len() as u64);
                let start = range.start.min(end);
                return Ok(raw.slice(start as usize..end as usize));
            }
            IndexRead::NeedIndex(len) => {
                return Err(CodecError::LengthMismatch {
                    expected: len,
                    actual: stored.len() as u64,
                })
            }
            IndexRead::Index(index) => index,
        };
        check_object_len(&index, stored)?;
        let frames = index.frames_for(range.clone());
        if frames.is_empty() {
            return Ok(Bytes::new());
        }
        let span = index.stored_span(frames.clone());
        let raw = self.decode_frames(
            &index,
            frames.clone(),
            &stored.slice(span.start as usize..span.end as usize),
            path,
        )?;
        let base = index.raw_start(frames.start);
        let end = range.end.min(index.raw_len()) - base;
        Ok(raw.slice((range.start - base) as usize..end as usize))
    }

    /// Decodes the consecutive frames `frames` of the object at `path`, whose stored bytes are
    /// `bytes` (exactly [`FrameIndex::stored_span`] of them): the raw bytes from
    /// [`FrameIndex::raw_start`] of the first frame. Checks steps 5 to 9 of the module doc.
    ///
    /// Frames stored raw and unencrypted are their raw bytes: their stored crc is their raw crc,
    /// so one checksum pass checks both, and when every frame asked for is such a frame the
    /// result is `bytes` itself, without a copy (incompressible data, the common case of large
    /// files, reads at the cost of a checksum).
    pub fn decode_frames(
        &self,
        index: &FrameIndex,
        frames: Range<usize>,
        bytes: &Bytes,
        path: &[u8],
    ) -> Result<Bytes, CodecError> {
        let span = index.stored_span(frames.clone());
        if frames.end > index.frames.len() || bytes.len() as u64 != span.end - span.start {
            return Err(CodecError::LengthMismatch {
                expected: span.end - span.start,
                actual: bytes.len() as u64,
            });
        }
        let plain = |i: usize| !index.encrypted && index.frames[i].flags & FRAME_COMPRESSED == 0;
        if frames.clone().all(plain) {
            for i in frames {
                let f = &index.frames[i];
                let at = (f.offset - span.start) as usize;
                check_plain_frame(index, i, &bytes[at..at + f.stored_len as usize])?;
            }
            return Ok(bytes.clone());
        }
        let raw_len: usize = frames
            .clone()
            .map(|i| frame_raw_len(index.raw_len, index.frame_len, i as u32))
            .sum();
        let mut out = Vec::with_capacity(raw_len);
        for i in frames {
            let f = &index.frames[i];
            let at = (f.offset - span.start) as usize;
            let stored = &bytes[at..at + f.stored_len as usize];
            if plain(i) {
                check_plain_frame(index, i, stored)?;
                out.extend_from_slice(stored);
                continue;
            }
            check_frame_crc(i, f, stored)?;
            let want = frame_raw_len(index.raw_len, index.frame_len, i as u32);
            let opened;
            let payload: &[u8] = if index.encrypted {
                let cipher = self.key.as_ref().ok_or(CodecError::NeedsKey)?;
                opened = open(cipher, &index.fixed, i as u32, f.flags, stored, path)?;
                &opened
            } else {
                stored
            };
            let start = out.len();
            if f.flags & FRAME_COMPRESSED == 0 {
                // The table check made the stored length fit; a sealed frame's plaintext is
                // its stored length less the seal.
                if payload.len() != want {
                    return Err(CodecError::LengthMismatch {
                        expected: want as u64,
                        actual: payload.len() as u64,
                    });
                }
                out.extend_from_slice(payload);
            } else {
                decompress_append(index.compression, payload, want, &mut out)?;
            }
            if !index.encrypted {
                let actual = crc32c::crc32c(&out[start..]);
                if actual != f.raw_crc {
                    return Err(CodecError::FrameRawChecksum {
                        frame: i as u32,
                        expected: f.raw_crc,
                        actual,
                    });
                }
            }
        }
        Ok(Bytes::from(out))
    }

    /// Decodes a version 1 object.
    fn decode_v1(&self, stored: &[u8], path: &[u8]) -> Result<Bytes, CodecError> {
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
            decrypted = decrypt_v1(cipher, &stored[..16], payload, path)?;
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
        let raw: Vec<u8> = if header.compression == COMPRESSION_NONE {
            payload.to_vec()
        } else {
            let mut out = Vec::with_capacity(raw_len);
            decompress_append(header.compression, payload, raw_len, &mut out)?;
            out
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

/// The object holds exactly header, table and frames.
fn check_object_len(index: &FrameIndex, stored: &[u8]) -> Result<(), CodecError> {
    let expected = index.object_len();
    if stored.len() as u64 != expected {
        return Err(CodecError::LengthMismatch {
            expected,
            actual: stored.len() as u64,
        });
    }
    Ok(())
}

/// Steps 5, 6 and 9 of the module doc for frame `i` stored raw and unencrypted: its stored bytes
/// are its raw bytes, so its length is the frame's raw length and its raw crc, which the table
/// has apart, must equal the stored crc that the bytes were checked against.
fn check_plain_frame(index: &FrameIndex, i: usize, stored: &[u8]) -> Result<(), CodecError> {
    let f = &index.frames[i];
    let want = frame_raw_len(index.raw_len, index.frame_len, i as u32);
    if stored.len() != want {
        return Err(CodecError::LengthMismatch {
            expected: want as u64,
            actual: stored.len() as u64,
        });
    }
    check_frame_crc(i, f, stored)?;
    if f.raw_crc != f.stored_crc {
        return Err(CodecError::FrameRawChecksum {
            frame: i as u32,
            expected: f.raw_crc,
            actual: f.stored_crc,
        });
    }
    Ok(())
}

fn check_frame_crc(i: usize, f: &FrameEntry, stored: &[u8]) -> Result<(), CodecError> {
    let actual = crc32c::crc32c(stored);
    if actual != f.stored_crc {
        return Err(CodecError::FrameChecksum {
            frame: i as u32,
            expected: f.stored_crc,
            actual,
        });
    }
    Ok(())
}

/// Decompresses `payload`, which must hold exactly `want` bytes, onto the end of `out`. At most
/// `want` bytes are written (the output limit, so that hostile bytes cannot make us allocate
/// more). zstd writes into the spare capacity without zeroing it first, with this thread's
/// decompression context: a context per frame cost more than a tenth of decoding.
fn decompress_append(
    compression: u8,
    payload: &[u8],
    want: usize,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    let err = |reason: String| CodecError::Decompress {
        raw_len: len_u32(want),
        reason,
    };
    let start = out.len();
    match compression {
        COMPRESSION_LZ4 => {
            out.resize(start + want, 0);
            match lz4_flex::block::decompress_into(payload, &mut out[start..]) {
                Ok(n) if n == want => Ok(()),
                Ok(n) => Err(err(format!("got {n} bytes"))),
                Err(e) => Err(err(e.to_string())),
            }
        }
        COMPRESSION_ZSTD => {
            thread_local! {
                static DCTX: std::cell::RefCell<Option<zstd::zstd_safe::DCtx<'static>>> =
                    const { std::cell::RefCell::new(None) };
            }
            out.reserve_exact(want);
            let result = DCTX.with_borrow_mut(|slot| {
                let dctx = slot.get_or_insert_with(zstd::zstd_safe::DCtx::create);
                let mut tail = Tail {
                    vec: out,
                    start,
                    room: want,
                };
                let r = dctx.decompress(&mut tail, payload);
                if r.is_err() {
                    // A context that failed may keep state from the bad frame.
                    let _ = dctx.reset(zstd::zstd_safe::ResetDirective::SessionAndParameters);
                }
                r
            });
            match result {
                Ok(n) if n == want => Ok(()),
                Ok(n) => {
                    out.truncate(start);
                    Err(err(format!("got {n} bytes")))
                }
                Err(code) => {
                    out.truncate(start);
                    Err(err(zstd::zstd_safe::get_error_name(code).to_string()))
                }
            }
        }
        // Header checks reject every other id, and frames of compression `none` are never
        // marked compressed.
        id => Err(CodecError::UnknownCompression { id }),
    }
}

/// The spare capacity of a vector after its first `start` bytes, seen by zstd as a buffer of
/// `room` bytes: what it writes is appended.
struct Tail<'a> {
    vec: &'a mut Vec<u8>,
    start: usize,
    room: usize,
}

// Safety: `start` is the vector's length and `room` at most its spare capacity (the caller
// reserved it), so zstd writes only within the allocation, and `filled_until(n)` covers
// exactly the `n` bytes it wrote after `start`.
unsafe impl zstd::zstd_safe::WriteBuf for Tail<'_> {
    fn as_slice(&self) -> &[u8] {
        &self.vec[self.start..]
    }
    fn capacity(&self) -> usize {
        self.room.min(self.vec.capacity() - self.start)
    }
    fn as_mut_ptr(&mut self) -> *mut u8 {
        // Safety: `start` is within the allocation (it is the vector's length).
        unsafe { self.vec.as_mut_ptr().add(self.start) }
    }
    unsafe fn filled_until(&mut self, n: usize) {
        // Safety: the caller initialized `n` bytes after `start`, within `capacity()`.
        unsafe { self.vec.set_len(self.start + n) }
    }
}

/// Associated data of frame `frame`: see the module doc.
fn frame_aad(fixed: &[u8; 20], frame: u32, flags: u8, path: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(25 + path.len());
    a.extend_from_slice(fixed);
    a.extend_from_slice(&frame.to_le_bytes());
    a.push(flags);
    a.extend_from_slice(path);
    a
}

/// Appends `nonce · sealed(payload) · tag` to `out`.
fn seal(
    cipher: &aes_gcm::Aes256Gcm,
    out: &mut Vec<u8>,
    fixed: &[u8; 20],
    frame: u32,
    flags: u8,
    payload: &[u8],
    path: &[u8],
) {
    use aes_gcm::aead::{Aead, Payload};
    let nonce: [u8; NONCE_LEN] = rand::random();
    let sealed = cipher
        .encrypt(
            (&nonce).into(),
            Payload {
                msg: payload,
                aad: &frame_aad(fixed, frame, flags, path),
            },
        )
        .expect("AES-GCM encryption of an in-memory buffer under 64 GiB cannot fail");
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
}

/// Opens a sealed frame.
fn open(
    cipher: &aes_gcm::Aes256Gcm,
    fixed: &[u8; 20],
    frame: u32,
    flags: u8,
    stored: &[u8],
    path: &[u8],
) -> Result<Vec<u8>, CodecError> {
    open_sealed(cipher, stored, &frame_aad(fixed, frame, flags, path))
}

fn aad_v1(header16: &[u8], path: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(16 + path.len());
    a.extend_from_slice(header16);
    a.extend_from_slice(path);
    a
}

fn decrypt_v1(
    cipher: &aes_gcm::Aes256Gcm,
    header16: &[u8],
    payload: &[u8],
    path: &[u8],
) -> Result<Vec<u8>, CodecError> {
    open_sealed(cipher, payload, &aad_v1(header16, path))
}

/// Opens `nonce · sealed · tag` under `aad` (both format versions seal this way).
fn open_sealed(
    cipher: &aes_gcm::Aes256Gcm,
    stored: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>, CodecError> {
    use aes_gcm::aead::{Aead, Payload};
    if stored.len() < SEAL_LEN {
        return Err(CodecError::Decrypt);
    }
    let (nonce, sealed) = stored.split_at(NONCE_LEN);
    let nonce: &[u8; NONCE_LEN] = nonce.try_into().map_err(|_| CodecError::Decrypt)?;
    cipher
        .decrypt(nonce.into(), Payload { msg: sealed, aad })
        .map_err(|_| CodecError::Decrypt)
}

/// `len` as u32; only called on lengths bounded by [`MAX_RAW_LEN`].
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).expect("block lengths are bounded by MAX_RAW_LEN")
}

/// The checked header of a version 1 block object.
struct Header {
    encrypted: bool,
    compression: u8,
    raw_len: u32,
    payload_crc: u32,
    raw_crc: u32,
}

impl Header {
    /// Parses and checks a version 1 header against the buffer it came from.
    fn parse(stored: &[u8]) -> Result<Header, CodecError> {
        let Some(h) = stored.get(..HEADER_LEN) else {
            return Err(CodecError::TooShort { len: stored.len() });
        };
        check_common_header(h)?;
        if h[4] != FORMAT_V1 {
            return Err(CodecError::UnsupportedVersion { version: h[4] });
        }
        let encrypted = h[6] & FLAG_ENCRYPTED != 0;
        let compression = h[5];
        let raw_len = le_u32(h, 8);
        let payload_len = u64::from(le_u32(h, 12));
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
            payload_crc: le_u32(h, 16),
            raw_crc: le_u32(h, 20),
        })
    }
}

/// The version 1 encoder of earlier builds, kept to prove that their objects still read.
#[cfg(test)]
pub(crate) fn encode_v1_for(codec: &BlockCodec, raw: &[u8], path: &[u8]) -> Bytes {
    use aes_gcm::aead::{Aead, Payload};
    let compressed = match codec.compression {
        Compression::None => None,
        Compression::Lz4 => Some((COMPRESSION_LZ4, lz4_flex::block::compress(raw))),
        Compression::Zstd { level } => zstd::bulk::compress(raw, level)
            .ok()
            .map(|c| (COMPRESSION_ZSTD, c)),
    };
    let (id, payload): (u8, &[u8]) = match &compressed {
        Some((id, c)) if c.len() < raw.len() => (*id, c),
        _ => (COMPRESSION_NONE, raw),
    };
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + SEAL_LEN);
    out.extend_from_slice(&MAGIC);
    out.push(FORMAT_V1);
    out.push(id);
    out.push(if codec.key.is_some() {
        FLAG_ENCRYPTED
    } else {
        0
    });
    out.push(0);
    out.extend_from_slice(&len_u32(raw.len()).to_le_bytes());
    if let Some(cipher) = &codec.key {
        let sealed_len = SEAL_LEN + payload.len();
        out.extend_from_slice(&len_u32(sealed_len).to_le_bytes());
        let nonce: [u8; NONCE_LEN] = rand::random();
        let sealed = cipher
            .encrypt(
                (&nonce).into(),
                Payload {
                    msg: payload,
                    aad: &aad_v1(&out[..16], path),
                },
            )
            .expect("in-memory AES-GCM");
        let mut body = nonce.to_vec();
        body.extend_from_slice(&sealed);
        out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&body);
        return Bytes::from(out);
    }
    out.extend_from_slice(&len_u32(payload.len()).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(raw).to_le_bytes());
    out.extend_from_slice(payload);
    Bytes::from(out)
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
                // Never larger than raw plus header and table.
                assert!(
                    stored.len() as u64 <= raw.len() as u64 + index_len_for(raw.len() as u64),
                    "{compression} {name}"
                );
            }
        }
    }

    /// Flags byte of frame `i` in the table of a version 2 object.
    fn frame_flags(stored: &[u8], i: usize) -> u8 {
        stored[HEADER_LEN + i * ENTRY_LEN + 4]
    }

    #[test]
    fn entropy_sample_skips_only_random_looking_frames() {
        assert!(looks_incompressible(&noise(FRAME_LEN, 11)));
        assert!(looks_incompressible(&noise(FRAME_LEN / 2, 12)));
        // Too short to sample: always tried.
        assert!(!looks_incompressible(&noise(4096, 13)));
        assert!(!looks_incompressible(&vec![0; FRAME_LEN]));
        assert!(!looks_incompressible(&compressible(FRAME_LEN)));
        // Hex and base64-like text of random bytes: 4 and 6 bits per byte, still worth compressing.
        let hex: Vec<u8> = noise(FRAME_LEN / 2, 14)
            .iter()
            .flat_map(|b| format!("{b:02x}").into_bytes())
            .collect();
        assert!(!looks_incompressible(&hex));
        let b64: Vec<u8> = noise(FRAME_LEN, 15)
            .iter()
            .map(|b| {
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
                    [usize::from(b % 64)]
            })
            .collect();
        assert!(!looks_incompressible(&b64));
        // Random bytes with half the frame zeroed: about 4.5 bits, compressed.
        let mut half = noise(FRAME_LEN, 16);
        half[..FRAME_LEN / 2].fill(0);
        assert!(!looks_incompressible(&half));
    }

    /// Raw frames come back as a slice of the object, checked by one crc pass: a damaged
    /// frame is still found, and so is a table (with a good index crc) whose raw crc of a raw
    /// frame disagrees with its stored crc.
    #[test]
    fn raw_frames_decode_without_a_copy_and_are_still_checked() {
        let codec = BlockCodec::new(Compression::Zstd { level: 3 });
        let raw = noise(3 * FRAME_LEN + 100, 31);
        let stored = codec.encode(&raw);
        let back = codec.decode(&stored).unwrap();
        assert_eq!(back, raw);
        let body = HEADER_LEN + 4 * ENTRY_LEN;
        assert_eq!(
            back.as_ptr(),
            stored[body..].as_ptr(),
            "a slice, not a copy"
        );

        let mut damaged = stored.to_vec();
        damaged[body + FRAME_LEN + 7] ^= 1;
        assert!(matches!(
            codec.decode(&Bytes::from(damaged)),
            Err(CodecError::FrameChecksum { frame: 1, .. })
        ));

        let mut table = stored.to_vec();
        table[HEADER_LEN + 2 * ENTRY_LEN + 12] ^= 1; // frame 2's raw crc
        let fixed: [u8; 20] = table[..20].try_into().unwrap();
        let crc = crc32c::crc32c_append(crc32c::crc32c(&fixed), &table[HEADER_LEN..body]);
        table[20..24].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            codec.decode(&Bytes::from(table)),
            Err(CodecError::FrameRawChecksum { frame: 2, .. })
        ));
    }

    #[test]
    fn a_frame_that_compresses_poorly_leaves_the_next_seven_untried() {
        // Bytes drawn from 200 values: 7.6 bits each, under the entropy cut, but only a few
        // percent smaller compressed: stored raw, and the next seven not tried.
        let poor: Vec<u8> = noise(FRAME_LEN, 21).iter().map(|b| b % 200).collect();
        assert!(!looks_incompressible(&poor));
        let codec = BlockCodec::new(Compression::Zstd { level: 3 });
        let mut raw = poor.clone();
        raw.extend(compressible(10 * FRAME_LEN));
        let stored = codec.encode(&raw);
        let flags: Vec<u8> = (0..11).map(|i| frame_flags(&stored, i)).collect();
        assert_eq!(flags, [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1]);
        assert_eq!(codec.decode(&stored).unwrap(), raw);
    }

    #[test]
    fn a_frame_that_saves_less_than_a_quarter_is_kept_but_thins_the_probes() {
        // Bytes drawn from 100 values: about 17% smaller compressed, so kept compressed, but
        // not worth probing every frame for: the next seven are stored raw untried.
        let marginal: Vec<u8> = noise(FRAME_LEN, 22).iter().map(|b| b % 100).collect();
        let codec = BlockCodec::new(Compression::Zstd { level: 3 });
        let alone = codec.encode(&marginal);
        assert_eq!(
            frame_flags(&alone, 0),
            FRAME_COMPRESSED,
            "an eighth saved: kept"
        );
        let mut raw = marginal.clone();
        raw.extend(compressible(9 * FRAME_LEN));
        let stored = codec.encode(&raw);
        let flags: Vec<u8> = (0..10).map(|i| frame_flags(&stored, i)).collect();
        assert_eq!(flags, [1, 0, 0, 0, 0, 0, 0, 0, 1, 1]);
        assert_eq!(codec.decode(&stored).unwrap(), raw);
    }

    #[test]
    fn poor_probes_in_a_row_leave_longer_runs_untried_and_a_good_one_starts_over() {
        let poor = |seed| -> Vec<u8> { noise(FRAME_LEN, seed).iter().map(|b| b % 200).collect() };
        let codec = BlockCodec::new(Compression::Zstd { level: 3 });
        // Frames 0 and 8 are probed and poor: 15 untried after frame 8, so compressible
        // frames 9 to 23 are stored raw, and frame 24, the next probe, is compressed.
        let mut raw = Vec::new();
        for i in 0..9 {
            raw.extend(poor(30 + i));
        }
        raw.extend(compressible(17 * FRAME_LEN));
        let stored = codec.encode(&raw);
        let flags: Vec<u8> = (0..26).map(|i| frame_flags(&stored, i)).collect();
        let mut want = vec![0u8; 24];
        want.extend([1, 1]);
        assert_eq!(flags, want);
        assert_eq!(codec.decode(&stored).unwrap(), raw);
        // After that good probe, a poor frame leaves seven untried again.
        let mut raw2 = raw[..25 * FRAME_LEN].to_vec();
        raw2.extend(poor(50));
        raw2.extend(compressible(9 * FRAME_LEN));
        let stored = codec.encode(&raw2);
        let flags: Vec<u8> = (24..35).map(|i| frame_flags(&stored, i)).collect();
        assert_eq!(flags, [1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1]);
        assert_eq!(codec.decode(&stored).unwrap(), raw2);
    }

    #[test]
    fn frames_are_stored_raw_unless_compression_makes_them_smaller() {
        for compression in ALL {
            let codec = BlockCodec::new(compression);
            let random = codec.encode(&noise(64 << 10, 3));
            assert_eq!(frame_flags(&random, 0), 0, "{compression} on random bytes");
            assert_eq!(frame_flags(&codec.encode(&[1]), 0), 0);
            let zeros = codec.encode(&vec![0; 1 << 20]);
            let expected = match compression {
                Compression::None => COMPRESSION_NONE,
                Compression::Lz4 => COMPRESSION_LZ4,
                Compression::Zstd { .. } => COMPRESSION_ZSTD,
            };
            assert_eq!(zeros[5], expected, "{compression}: algorithm in the header");
            for i in 0..16 {
                let flags = frame_flags(&zeros, i);
                assert_eq!(flags == FRAME_COMPRESSED, compression != Compression::None);
            }
            if compression != Compression::None {
                assert!(
                    zeros.len() < 64 << 10,
                    "{compression}: {} bytes",
                    zeros.len()
                );
            }
            // Mixed: a random frame between compressible ones is stored raw on its own.
            let mut mixed = compressible(3 * FRAME_LEN);
            mixed[FRAME_LEN..2 * FRAME_LEN].copy_from_slice(&noise(FRAME_LEN, 9));
            let stored = codec.encode(&mixed);
            let c = u8::from(compression != Compression::None);
            assert_eq!(
                [0, 1, 2].map(|i| frame_flags(&stored, i)),
                [c, 0, c],
                "{compression}"
            );
            assert_eq!(codec.decode(&stored).unwrap(), mixed);
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
        BlockCodec::new(Compression::None).decode(&Bytes::copy_from_slice(stored))
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
        let len = b.len() as u64;
        for cut in [1, 2, b.len() - HEADER_LEN - ENTRY_LEN] {
            assert_eq!(
                decode(&b[..b.len() - cut]),
                Err(CodecError::LengthMismatch {
                    expected: len,
                    actual: len - cut as u64
                }),
                "cut {cut}"
            );
        }
        // Header without its table.
        assert_eq!(
            decode(&b[..HEADER_LEN + 3]),
            Err(CodecError::LengthMismatch {
                expected: (HEADER_LEN + ENTRY_LEN) as u64,
                actual: (HEADER_LEN + 3) as u64
            })
        );
        // Trailing garbage is as wrong as missing bytes.
        let mut longer = b.clone();
        longer.push(0);
        assert!(matches!(
            decode(&longer),
            Err(CodecError::LengthMismatch { .. })
        ));
        // Version 1 too.
        let v1 = encode_v1_for(
            &BlockCodec::new(Compression::Lz4),
            &compressible(10_000),
            b"",
        );
        let payload = (v1.len() - HEADER_LEN) as u64;
        assert_eq!(
            decode(&v1[..v1.len() - 1]),
            Err(CodecError::LengthMismatch {
                expected: payload,
                actual: payload - 1
            })
        );
    }

    /// Rewrites the index crc of a version 2 object after a test changed its header or table.
    fn reseal_index(b: &mut [u8]) {
        let count = le_u32(b, 16) as usize;
        let table_end = HEADER_LEN + count * ENTRY_LEN;
        let crc = crc32c::crc32c_append(crc32c::crc32c(&b[..20]), &b[HEADER_LEN..table_end]);
        b[20..24].copy_from_slice(&crc.to_le_bytes());
    }

    /// Rewrites the stored crc of frame `i` (and the index crc) after a test changed the frame.
    fn reseal_frame(b: &mut [u8], i: usize) {
        let IndexRead::Index(index) = FrameIndex::parse(b).unwrap() else {
            panic!("not version 2")
        };
        let f = index.frames[i];
        let crc =
            crc32c::crc32c(&b[f.offset as usize..(f.offset + u64::from(f.stored_len)) as usize]);
        let at = HEADER_LEN + i * ENTRY_LEN + 8;
        b[at..at + 4].copy_from_slice(&crc.to_le_bytes());
        reseal_index(b);
    }

    #[test]
    fn rejects_flipped_frame_byte() {
        for compression in ALL {
            let raw = compressible(3 * FRAME_LEN + 10);
            let stored = BlockCodec::new(compression).encode(&raw).to_vec();
            let IndexRead::Index(index) = FrameIndex::parse(&stored).unwrap() else {
                panic!()
            };
            for i in 0..index.frame_count() {
                let f = index.frames[i];
                let mut b = stored.clone();
                b[(f.offset + u64::from(f.stored_len / 2)) as usize] ^= 0x01;
                assert_eq!(
                    decode(&b),
                    Err(CodecError::FrameChecksum {
                        frame: i as u32,
                        expected: f.stored_crc,
                        actual: crc32c::crc32c(
                            &b[f.offset as usize..(f.offset + u64::from(f.stored_len)) as usize]
                        )
                    }),
                    "{compression} frame {i}"
                );
                // Ranges that do not touch the frame still read; ranges that do fail.
                let codec = BlockCodec::new(compression);
                let other = if i == 0 { index.raw_start(1) } else { 0 };
                assert_eq!(
                    codec
                        .decode_range(&Bytes::from(b.clone()), b"", other..other + 100)
                        .unwrap(),
                    raw[other as usize..other as usize + 100],
                );
                let inside = index.raw_start(i) + 5;
                assert!(matches!(
                    codec.decode_range(&Bytes::from(b.clone()), b"", inside..inside + 1),
                    Err(CodecError::FrameChecksum { .. })
                ));
            }
        }
    }

    #[test]
    fn rejects_a_flipped_table_or_header_byte() {
        let stored = BlockCodec::new(Compression::Zstd { level: 3 })
            .encode(&compressible(3 * FRAME_LEN + 10))
            .to_vec();
        let table_end = HEADER_LEN + 4 * ENTRY_LEN;
        for at in 0..table_end {
            for bit in [0x01u8, 0x80] {
                let mut b = stored.clone();
                b[at] ^= bit;
                let err = decode(&b).expect_err("a flipped header or table byte must be found");
                assert!(
                    matches!(
                        err,
                        CodecError::BadMagic { .. }
                            | CodecError::UnsupportedVersion { .. }
                            | CodecError::UnknownCompression { .. }
                            | CodecError::UnknownFlags { .. }
                            | CodecError::BadReserved { .. }
                            | CodecError::RawTooLarge { .. }
                            | CodecError::BadFrameSize { .. }
                            | CodecError::FrameCount { .. }
                            | CodecError::IndexChecksum { .. }
                            | CodecError::LengthMismatch { .. }
                    ),
                    "byte {at} bit {bit:#x}: {err:?}"
                );
            }
        }
    }

    #[test]
    fn rejects_flipped_raw_crc() {
        for compression in ALL {
            let mut b = BlockCodec::new(compression)
                .encode(&compressible(5000))
                .to_vec();
            b[HEADER_LEN + 12] ^= 0x80;
            reseal_index(&mut b);
            assert!(
                matches!(
                    decode(&b),
                    Err(CodecError::FrameRawChecksum { frame: 0, .. })
                ),
                "{compression}: {:?}",
                decode(&b)
            );
        }
    }

    #[test]
    fn rejects_impossible_table_entries() {
        let raw = compressible(2 * FRAME_LEN);
        let stored = BlockCodec::new(Compression::Lz4).encode(&raw).to_vec();
        let entry = HEADER_LEN + ENTRY_LEN; // frame 1
        for (at, value, reason) in [
            (entry + 4, 0x02u8, "unknown frame flags"),
            (entry + 5, 1, "reserved"),
            (entry + 7, 1, "reserved"),
        ] {
            let mut b = stored.clone();
            b[at] = value;
            reseal_index(&mut b);
            let err = decode(&b).unwrap_err();
            assert!(
                matches!(err, CodecError::BadFrame { frame: 1, reason: r } if r.contains(reason)),
                "{err:?}"
            );
        }
        // A stored length larger than the raw length (so a reader would fetch more than the
        // frame can hold), or zero.
        for len in [FRAME_LEN as u32, FRAME_LEN as u32 + 1, 0, u32::MAX] {
            let mut b = stored.clone();
            b[entry..entry + 4].copy_from_slice(&len.to_le_bytes());
            reseal_index(&mut b);
            assert!(
                matches!(decode(&b), Err(CodecError::BadFrame { frame: 1, .. })),
                "{len}: {:?}",
                decode(&b)
            );
        }
        // Marked compressed in a block written without compression.
        let mut b = BlockCodec::new(Compression::None).encode(&raw).to_vec();
        b[HEADER_LEN + 4] = FRAME_COMPRESSED;
        reseal_index(&mut b);
        assert!(matches!(
            decode(&b),
            Err(CodecError::BadFrame { frame: 0, .. })
        ));
        // Frame size and count.
        for (frame_len, ok) in [(1u32, false), (4095, false), (4096, true), (3 << 12, false)] {
            let mut b = stored.clone();
            b[12..16].copy_from_slice(&frame_len.to_le_bytes());
            reseal_index(&mut b);
            let err = decode(&b).unwrap_err();
            if ok {
                assert!(matches!(err, CodecError::FrameCount { .. }), "{err:?}");
            } else {
                assert_eq!(err, CodecError::BadFrameSize { len: frame_len });
            }
        }
        let mut b = stored.clone();
        b[16..20].copy_from_slice(&3u32.to_le_bytes());
        reseal_index(&mut b);
        assert_eq!(
            decode(&b),
            Err(CodecError::FrameCount {
                expected: 2,
                found: 3
            })
        );
    }

    /// A compressed frame whose stored bytes decompress to another length, with every crc
    /// recomputed: the decompressor's output limit catches it.
    #[test]
    fn rejects_a_frame_that_decompresses_to_another_length() {
        for compression in [Compression::Lz4, Compression::Zstd { level: 3 }] {
            let codec = BlockCodec::new(compression);
            let raw = compressible(FRAME_LEN);
            let stored = codec.encode(&raw).to_vec();
            // Replace the frame with one compressed from fewer bytes.
            let short = BlockCodec::new(compression).encode(&raw[..FRAME_LEN - 7]);
            let IndexRead::Index(si) = FrameIndex::parse(&short).unwrap() else {
                panic!()
            };
            let f = si.frames[0];
            let body = &short[f.offset as usize..];
            let mut b = stored[..HEADER_LEN + ENTRY_LEN].to_vec();
            b[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&(body.len() as u32).to_le_bytes());
            b.extend_from_slice(body);
            reseal_frame(&mut b, 0);
            assert!(
                matches!(decode(&b), Err(CodecError::Decompress { .. })),
                "{compression}: {:?}",
                decode(&b)
            );
        }
    }

    #[test]
    fn decompression_writes_no_more_than_the_frame_length_and_recovers_after_an_error() {
        let raw = compressible(FRAME_LEN + 7);
        let long = zstd::bulk::compress(&raw, 3).unwrap();
        let fits = zstd::bulk::compress(&raw[..FRAME_LEN], 3).unwrap();
        // Room after the first bytes for more than one frame, as when a block's frames are
        // decoded one after another into one buffer.
        let mut out = Vec::with_capacity(3 * FRAME_LEN);
        out.extend_from_slice(b"kept");
        let e = decompress_append(COMPRESSION_ZSTD, &long, FRAME_LEN, &mut out).unwrap_err();
        assert!(matches!(e, CodecError::Decompress { .. }), "{e:?}");
        assert_eq!(out, b"kept", "a failed frame leaves nothing behind");
        let e = decompress_append(COMPRESSION_ZSTD, &fits, FRAME_LEN + 1, &mut out).unwrap_err();
        assert!(matches!(e, CodecError::Decompress { .. }), "{e:?}");
        assert_eq!(out, b"kept");
        // The same thread's context decodes the next good frame.
        decompress_append(COMPRESSION_ZSTD, &fits, FRAME_LEN, &mut out).unwrap();
        assert_eq!(&out[..4], b"kept");
        assert_eq!(&out[4..], &raw[..FRAME_LEN]);
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
        // A flipped ciphertext byte with recomputed crcs still fails the tag.
        let codec = BlockCodec::new(Compression::None).with_key(&key);
        let mut stored = codec.encode_for(&raw, b"p").to_vec();
        let last = stored.len() - 1;
        stored[last] ^= 1;
        let frames = le_u32(&stored, 16) as usize;
        reseal_frame(&mut stored, frames - 1);
        assert_eq!(
            codec
                .decode_for(&Bytes::from(stored.clone()), b"p")
                .unwrap_err(),
            CodecError::Decrypt
        );
    }

    /// Frames of an encrypted block cannot be swapped, moved to another block, or have their
    /// compression marker changed, even with every crc recomputed.
    #[test]
    fn encrypted_frames_are_bound_to_their_place() {
        let codec = BlockCodec::new(Compression::Lz4).with_key(&[3; 32]);
        let raw = compressible(2 * FRAME_LEN);
        let stored = codec.encode_for(&raw, b"p").to_vec();
        let IndexRead::Index(index) = FrameIndex::parse(&stored).unwrap() else {
            panic!()
        };
        let (a, b) = (index.frames[0], index.frames[1]);
        assert_eq!(a.stored_len, b.stored_len, "same text, same length");
        let len = a.stored_len as usize;
        let (a, b) = (a.offset as usize, b.offset as usize);
        // Swap frames 0 and 1 (and their table entries' crcs).
        let mut swapped = stored.clone();
        swapped[a..a + len].copy_from_slice(&stored[b..b + len]);
        swapped[b..b + len].copy_from_slice(&stored[a..a + len]);
        reseal_frame(&mut swapped, 0);
        reseal_frame(&mut swapped, 1);
        assert_eq!(
            codec.decode_for(&Bytes::from(swapped), b"p"),
            Err(CodecError::Decrypt)
        );
        // Frame 0 of a block of the same shape at another path.
        let other = codec.encode_for(&raw, b"q").to_vec();
        let mut mixed = stored.clone();
        mixed[a..a + len].copy_from_slice(&other[a..a + len]);
        reseal_frame(&mut mixed, 0);
        assert_eq!(
            codec.decode_for(&Bytes::from(mixed), b"p"),
            Err(CodecError::Decrypt)
        );
        // Compression marker set on a frame stored raw: the stored length no longer fits, or
        // the tag fails.
        let mut plain = codec.encode_for(&noise(FRAME_LEN, 1), b"p").to_vec();
        plain[HEADER_LEN + 4] = FRAME_COMPRESSED;
        reseal_index(&mut plain);
        assert!(codec.decode_for(&Bytes::from(plain), b"p").is_err());
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
        for version in [0, 3, 255] {
            let mut b = sample();
            b[4] = version;
            assert_eq!(decode(&b), Err(CodecError::UnsupportedVersion { version }));
        }
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
            let mut b =
                encode_v1_for(&BlockCodec::new(compression), &compressible(10_000), b"").to_vec();
            b[8..12].copy_from_slice(&claimed.to_le_bytes());
            assert!(
                matches!(decode(&b), Err(CodecError::Decompress { .. })),
                "{compression} claimed {claimed}: {:?}",
                decode(&b)
            );
        }
        // Uncompressed: payload length must equal raw length.
        let mut b = encode_v1_for(&BlockCodec::new(Compression::None), b"abc", b"").to_vec();
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

    /// Sizes around the frame and block boundaries.
    fn edge_sizes() -> Vec<usize> {
        vec![
            0,
            1,
            FRAME_LEN - 1,
            FRAME_LEN,
            FRAME_LEN + 1,
            3 * FRAME_LEN + 17,
            4 << 20,
            (4 << 20) - 1000,
        ]
    }

    /// Half compressible, half random, so both kinds of frame appear.
    fn mixed(len: usize, seed: u64) -> Vec<u8> {
        let mut raw = compressible(len);
        let half = len / 2;
        raw[half..].copy_from_slice(&noise(len - half, seed));
        raw
    }

    #[test]
    fn v2_round_trip_every_size_compression_and_key() {
        for compression in ALL {
            for key in [None, Some([5u8; 32])] {
                let mut codec = BlockCodec::new(compression);
                if let Some(k) = &key {
                    codec = codec.with_key(k);
                }
                for len in edge_sizes() {
                    let raw = mixed(len, len as u64);
                    let stored = codec.encode_for(&raw, b"a/b");
                    assert_eq!(stored[4], FORMAT_VERSION);
                    let what = format!("{compression} key {} len {len}", key.is_some());
                    assert_eq!(codec.decode_for(&stored, b"a/b").unwrap(), raw, "{what}");
                    BlockCodec::check_stored(&stored).unwrap();
                    let IndexRead::Index(index) = FrameIndex::parse(&stored).unwrap() else {
                        panic!("{what}: not version 2")
                    };
                    assert_eq!(index.raw_len(), len as u64);
                    assert_eq!(index.frame_count(), len.div_ceil(FRAME_LEN));
                    assert_eq!(index.index_len(), index_len_for(len as u64), "{what}");
                    assert_eq!(index.object_len(), stored.len() as u64);
                    // The index parses from exactly its own bytes, and asks for them when short.
                    let il = index.index_len() as usize;
                    assert_eq!(
                        FrameIndex::parse(&stored[..il]).unwrap(),
                        IndexRead::Index(index.clone())
                    );
                    if il > HEADER_LEN {
                        assert_eq!(
                            FrameIndex::parse(&stored[..il - 1]).unwrap(),
                            IndexRead::NeedIndex(il as u64)
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn ranged_decode_equals_the_slice_of_the_whole() {
        let raw = mixed(4 << 20, 77);
        for compression in ALL {
            for codec in [
                BlockCodec::new(compression),
                BlockCodec::new(compression).with_key(&[1; 32]),
            ] {
                let stored = codec.encode_for(&raw, b"x");
                let ranges = [
                    0..0,
                    0..1,
                    0..4096,
                    (FRAME_LEN - 1) as u64..(FRAME_LEN + 1) as u64,
                    FRAME_LEN as u64..(2 * FRAME_LEN) as u64,
                    12_345..1_000_000,
                    (4 << 20) - 10..(4 << 20),
                    (4 << 20) - 10..(5 << 20),
                    0..u64::MAX,
                    (5 << 20)..(6 << 20),
                ];
                for r in ranges {
                    let end = r.end.min(raw.len() as u64) as usize;
                    let start = (r.start as usize).min(end);
                    assert_eq!(
                        codec.decode_range(&stored, b"x", r.clone()).unwrap(),
                        raw[start..end],
                        "{compression} {r:?}"
                    );
                }
            }
        }
    }

    /// Objects written by the version 1 encoder of earlier builds still decode, whole and in
    /// ranges, with and without a key.
    #[test]
    fn version_1_objects_still_decode() {
        let raw = mixed(300_000, 5);
        for compression in ALL {
            for codec in [
                BlockCodec::new(compression),
                BlockCodec::new(compression).with_key(&[2; 32]),
            ] {
                let v1 = encode_v1_for(&codec, &raw, b"p/1");
                assert_eq!(v1[4], FORMAT_V1);
                assert_eq!(FrameIndex::parse(&v1).unwrap(), IndexRead::Whole);
                assert_eq!(codec.decode_for(&v1, b"p/1").unwrap(), raw);
                assert_eq!(
                    codec.decode_range(&v1, b"p/1", 1000..70_000).unwrap(),
                    raw[1000..70_000]
                );
                BlockCodec::check_stored(&v1).unwrap();
            }
        }
        // A fixed object in version 1 (compression none), its bytes laid out by hand from the
        // version 1 table above; the kept encoder writes the same bytes.
        let fixed: &[u8] = &[
            0x43, 0x52, 0x4e, 0x42, 0x01, 0x00, 0x00, 0x00, 0x16, 0x00, 0x00, 0x00, 0x16, 0x00,
            0x00, 0x00, 0x21, 0x50, 0x92, 0xd2, 0x21, 0x50, 0x92, 0xd2, 0x63, 0x61, 0x69, 0x72,
            0x6e, 0x20, 0x76, 0x65, 0x72, 0x73, 0x69, 0x6f, 0x6e, 0x20, 0x31, 0x20, 0x62, 0x6c,
            0x6f, 0x63, 0x6b, 0x0a,
        ];
        assert_eq!(&decode(fixed).unwrap()[..], b"cairn version 1 block\n");
        assert_eq!(
            &encode_v1_for(
                &BlockCodec::new(Compression::None),
                b"cairn version 1 block\n",
                b""
            )[..],
            fixed
        );
        let mut damaged = fixed.to_vec();
        damaged[30] ^= 1;
        assert!(matches!(
            decode(&damaged),
            Err(CodecError::PayloadChecksum { .. })
        ));
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

    /// Version 2 objects whose header and table pass every check before the entries (the index
    /// crc included), with arbitrary entries and frame bytes: the fuzzer reaches the entry
    /// checks, the span arithmetic, the decryptor and the decompressors.
    fn plausible_v2_object() -> impl Strategy<Value = (Vec<u8>, u64, u64)> {
        (
            0u8..3,
            any::<bool>(),
            0u32..40_000,
            12u32..15,
            proptest::collection::vec((0u32..9000, 0u8..3, any::<bool>()), 0..11),
            proptest::collection::vec(any::<u8>(), 0..20_000),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(|(id, encrypted, raw_len, shift, entries, body, a, b)| {
                let frame_len = 1u32 << shift;
                let count = raw_len.div_ceil(frame_len);
                let mut o = Vec::new();
                o.extend_from_slice(b"CRNB");
                o.extend_from_slice(&[2, id, u8::from(encrypted), 0]);
                o.extend_from_slice(&raw_len.to_le_bytes());
                o.extend_from_slice(&frame_len.to_le_bytes());
                o.extend_from_slice(&count.to_le_bytes());
                o.extend_from_slice(&[0; 4]);
                let mut at = 0usize;
                for i in 0..count as usize {
                    let (len, flags, good_crc) = entries.get(i).copied().unwrap_or((0, 0, false));
                    let frame = body.get(at..at + len as usize).unwrap_or(&[]);
                    let crc = if good_crc { crc32c::crc32c(frame) } else { 0 };
                    at += len as usize;
                    o.extend_from_slice(&len.to_le_bytes());
                    o.extend_from_slice(&[flags, 0, 0, 0]);
                    o.extend_from_slice(&crc.to_le_bytes());
                    o.extend_from_slice(&crc32c::crc32c(frame).to_le_bytes());
                }
                reseal_index(&mut o);
                o.extend_from_slice(&body[..at.min(body.len())]);
                let r = u64::from(raw_len) + 10;
                let (a, b) = (a % r, b % r);
                (o, a.min(b), a.max(b))
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
        fn decode_never_panics_on_plausible_v2_objects((bytes, from, to) in plausible_v2_object()) {
            let keyed = BlockCodec::new(Compression::None).with_key(&[4; 32]);
            for codec in [BlockCodec::new(Compression::None), keyed] {
                let _ = codec.decode(&Bytes::copy_from_slice(&bytes));
                let _ = codec.decode_range(&Bytes::copy_from_slice(&bytes), b"", from..to);
                let _ = BlockCodec::check_stored(&bytes);
                if let Ok(IndexRead::Index(index)) = FrameIndex::parse(&bytes) {
                    let frames = index.frames_for(from..to);
                    let span = index.stored_span(frames.clone());
                    let stored = bytes.get(span.start as usize..span.end as usize).unwrap_or(&[]);
                    let _ = codec.decode_frames(&index, frames, &Bytes::copy_from_slice(stored), b"");
                }
            }
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
        fn ranged_decode_of_any_range(
            compression in 0usize..4,
            len in 0usize..300_000,
            start in 0u64..310_000,
            n in 0u64..200_000,
        ) {
            let raw = mixed(len, len as u64);
            let codec = BlockCodec::new(ALL[compression]);
            let stored = codec.encode(&raw);
            let end = (start + n).min(len as u64) as usize;
            let from = (start as usize).min(end);
            prop_assert_eq!(&codec.decode_range(&stored, b"", start..start + n).unwrap()[..], &raw[from..end]);
        }

        #[test]
        fn round_trip_any_bytes(compression in 0usize..4, raw in proptest::collection::vec(any::<u8>(), 0..5000)) {
            let codec = BlockCodec::new(ALL[compression]);
            prop_assert_eq!(&codec.decode(&codec.encode(&raw)).unwrap()[..], &raw[..]);
        }
    }
}
