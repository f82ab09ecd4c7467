//! Block keys and where their objects live in the store.
//!
//! Object path of a block, inside the store's prefix:
//!
//! ```text
//! {h}/{volume}/{ino:016x}/{index:x}.{version:016x}
//! 4a9d/vol1/00000000000004d2/1f.0000000000000007
//! ```
//!
//! - `h`: 4 lowercase hex digits of a hash of (volume, ino, index), first so that the keys of one
//!   file and of one volume spread over the whole key space: S3 partitions a bucket by key prefix
//!   and throttles each prefix (about 3,500 PUTs and 5,500 GETs per second), so a single hot
//!   prefix would cap a volume's throughput. The hash is crc32c over the volume's UTF-8 bytes, then
//!   `ino` and `index` as u64 little-endian; its two 16-bit halves are XORed together. It is part
//!   of the on-disk format: changing it makes every existing block unreachable.
//! - `volume`: one store (bucket and prefix) may hold several volumes; listing `{h}/{volume}/`
//!   for all 65,536 `h` finds every block of a volume (for reconciliation and deletion).
//! - `ino` and `index` (block number within the file) locate the block; `version` makes each
//!   write of a block a new object, so objects are immutable: a reader holding an older block map
//!   still finds the old bytes, and a block superseded within the retention period stays readable
//!   for time travel. Fixed-width hex for `ino` and `version` makes listings sort numerically.

/// Identity of one immutable block object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockKey {
    /// Inode number of the file.
    pub ino: u64,
    /// Block number within the file (byte offset / block size).
    pub index: u64,
    /// Write version of this block; a rewrite of the block gets a new version.
    pub version: u64,
}

impl BlockKey {
    /// Object path inside the store's prefix: `{h}/{volume}/{ino:016x}/{index:x}.{version:016x}`,
    /// where `h` is 4 lowercase hex digits of a hash of (volume, ino, index). See the module doc.
    pub fn object_path(&self, volume: &str) -> String {
        format!(
            "{:04x}/{volume}/{:016x}/{:x}.{:016x}",
            spread_hash(volume, self.ino, self.index),
            self.ino,
            self.index,
            self.version
        )
    }
}

/// The 16-bit hash that leads every object path. Part of the storage format.
fn spread_hash(volume: &str, ino: u64, index: u64) -> u16 {
    let crc = crc32c::crc32c(volume.as_bytes());
    let crc = crc32c::crc32c_append(crc, &ino.to_le_bytes());
    let crc = crc32c::crc32c_append(crc, &index.to_le_bytes());
    ((crc >> 16) ^ (crc & 0xffff)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// These literals are the storage format: if this test fails, existing volumes would lose
    /// their blocks. Do not update them; fix the code. (Checked against an independent bitwise
    /// CRC-32C, polynomial 0x82F63B78.)
    #[test]
    fn paths_are_stable() {
        let key = BlockKey {
            ino: 0x4d2,
            index: 0x1f,
            version: 7,
        };
        assert_eq!(
            key.object_path("vol1"),
            "4a9d/vol1/00000000000004d2/1f.0000000000000007"
        );
        let key = BlockKey {
            ino: u64::MAX,
            index: 0,
            version: u64::MAX,
        };
        assert_eq!(
            key.object_path("prod-data"),
            "c1c5/prod-data/ffffffffffffffff/0.ffffffffffffffff"
        );
    }

    #[test]
    fn version_does_not_move_the_prefix() {
        let a = BlockKey {
            ino: 9,
            index: 3,
            version: 1,
        };
        let b = BlockKey { version: 2, ..a };
        assert_eq!(a.object_path("v")[..4], b.object_path("v")[..4]);
        assert_ne!(a.object_path("v"), b.object_path("v"));
    }

    /// The blocks of one large file, of many small files, and of the same file in two volumes all
    /// spread evenly over the first hex digit (16 S3 partitions after a split) and use most of the
    /// 65,536 prefixes.
    #[test]
    fn prefixes_spread() {
        let one_file = (0..4096).map(|index| BlockKey {
            ino: 42,
            index,
            version: 1,
        });
        let many_files = (0..4096).map(|ino| BlockKey {
            ino: 1000 + ino,
            index: 0,
            version: 1,
        });
        for (name, keys, volume) in [
            ("one file", one_file.collect::<Vec<_>>(), "vol"),
            ("many files", many_files.collect::<Vec<_>>(), "vol"),
        ] {
            let mut first_digit = [0u32; 16];
            let mut prefixes = HashSet::new();
            for key in &keys {
                let path = key.object_path(volume);
                let h = u16::from_str_radix(&path[..4], 16).unwrap();
                assert_eq!(&path[..4], format!("{h:04x}"), "lowercase, 4 digits");
                first_digit[usize::from(h >> 12)] += 1;
                prefixes.insert(h);
            }
            // 4096 keys over 16 digits: 256 each on average; allow +-25%.
            for (digit, count) in first_digit.iter().enumerate() {
                assert!(
                    (192..=320).contains(count),
                    "{name}: digit {digit:x} has {count} of 4096 keys: {first_digit:?}"
                );
            }
            assert!(prefixes.len() > 3800, "{name}: {} distinct", prefixes.len());
        }
        let a = BlockKey {
            ino: 1,
            index: 0,
            version: 1,
        };
        assert_ne!(a.object_path("a")[..4], a.object_path("b")[..4]);
    }
}
