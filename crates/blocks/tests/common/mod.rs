//! The conformance suite every block store backend passes (STYLE 4.2): memory and local folder in
//! tests/store.rs, SeaweedFS S3 in tests/s3.rs.

#![allow(dead_code)] // Each test binary uses a different part.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use cairn_blocks::{BlockError, BlockKey, BlockStore, CodecError};

/// Writes raw object bytes at an object path of the store, bypassing the codec: how tests damage
/// a stored block.
pub type Overwrite<'a> =
    &'a (dyn Fn(String, Vec<u8>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Sync);

/// Deterministic incompressible bytes.
pub fn noise(len: usize, mut seed: u64) -> Vec<u8> {
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

pub fn key(ino: u64, index: u64, version: u64) -> BlockKey {
    BlockKey {
        ino,
        index,
        version,
    }
}

/// Runs every backend-independent check against `store`; with `overwrite`, also the ones that
/// damage stored objects. `volume` is the volume the store was opened for.
pub async fn conformance(store: &BlockStore, volume: &str, overwrite: Option<Overwrite<'_>>) {
    store.check().await.expect("check");
    put_get_delete(store).await;
    missing_is_not_found(store).await;
    put_is_idempotent(store).await;
    versions_are_separate_objects(store).await;
    concurrent_puts(store).await;
    ranged_reads(store).await;
    if let Some(overwrite) = overwrite {
        corruption_is_reported(store, volume, overwrite).await;
    }
}

async fn put_get_delete(store: &BlockStore) {
    let blocks: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("one byte", vec![7]),
        ("random 1 MiB", noise(1 << 20, 1)),
        ("zeros 4 MiB", vec![0; 4 << 20]),
    ];
    for (i, (name, raw)) in blocks.iter().enumerate() {
        let k = key(100, i as u64, 1);
        let stored = store
            .put(&k, Bytes::from(raw.clone()))
            .await
            .unwrap_or_else(|e| panic!("put {name}: {e}"));
        assert!(stored >= 24, "{name}: stored size {stored}");
        let back = store
            .get(&k)
            .await
            .unwrap_or_else(|e| panic!("get {name}: {e}"));
        assert_eq!(&back[..], &raw[..], "{name}");
        store.delete(&k).await.unwrap();
        let err = store.get(&k).await.unwrap_err();
        assert!(
            matches!(err, BlockError::NotFound { .. }),
            "{name}: {err:?}"
        );
        // Deleting what is gone is fine.
        store.delete(&k).await.unwrap();
    }
}

/// Ranged reads equal the slice of the whole block, at the edges of frames and of the block.
async fn ranged_reads(store: &BlockStore) {
    let len = (4 << 20) - 777;
    let mut raw = noise(len, 9);
    // A compressible first half.
    for (i, b) in raw[..len / 2].iter_mut().enumerate() {
        *b = b"ranged "[i % 7];
    }
    let k = key(900, 0, 1);
    store.put(&k, Bytes::from(raw.clone())).await.unwrap();
    let len = len as u64;
    let frame = 64 << 10;
    for r in [
        0..1,
        0..4096,
        frame - 1..frame + 1,
        len / 2 - 5000..len / 2 + 5000,
        3 * frame..3 * frame + (1 << 20),
        len - 4096..len,
        len - 1..len + 100,
        0..len,
    ] {
        let end = r.end.min(len) as usize;
        let got = store.get_range(&k, r.clone(), len).await.unwrap();
        assert_eq!(&got[..], &raw[r.start as usize..end], "{r:?}");
    }
    assert!(matches!(
        store.get_range(&key(900, 1, 1), 0..10, len).await,
        Err(BlockError::NotFound { .. })
    ));
    store.delete(&k).await.unwrap();
}

async fn missing_is_not_found(store: &BlockStore) {
    let k = key(0xdead, 3, 9);
    let err = store.get(&k).await.unwrap_err();
    match &err {
        BlockError::NotFound { path } => {
            assert!(
                path.ends_with("/000000000000dead/3.0000000000000009"),
                "{path}"
            );
            assert!(err.is_permanent());
            assert_eq!(err.code(), "blocks.not_found");
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
}

async fn put_is_idempotent(store: &BlockStore) {
    let k = key(200, 0, 1);
    let raw = Bytes::from(noise(100_000, 2));
    let first = store.put(&k, raw.clone()).await.unwrap();
    // A replayed write of the same block (e.g. after a lost response) succeeds.
    let second = store.put(&k, raw.clone()).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(store.get(&k).await.unwrap(), raw);
    // Different bytes under the same key are a bug, reported, and the object is unchanged.
    let err = store
        .put(&k, Bytes::from_static(b"other bytes"))
        .await
        .unwrap_err();
    assert!(matches!(err, BlockError::Conflict { .. }), "{err:?}");
    assert!(err.is_permanent());
    assert_eq!(store.get(&k).await.unwrap(), raw);
    store.delete(&k).await.unwrap();
}

async fn versions_are_separate_objects(store: &BlockStore) {
    let v1 = key(300, 5, 1);
    let v2 = key(300, 5, 2);
    store.put(&v1, Bytes::from_static(b"one")).await.unwrap();
    store.put(&v2, Bytes::from_static(b"two")).await.unwrap();
    assert_eq!(&store.get(&v1).await.unwrap()[..], b"one");
    assert_eq!(&store.get(&v2).await.unwrap()[..], b"two");
    store.delete(&v1).await.unwrap();
    assert_eq!(&store.get(&v2).await.unwrap()[..], b"two");
    store.delete(&v2).await.unwrap();
}

async fn concurrent_puts(store: &BlockStore) {
    let puts = (0..16u64).map(|i| {
        let store = store.clone();
        async move {
            let raw = Bytes::from(noise(64 << 10, i + 10));
            store.put(&key(400, i, 1), raw.clone()).await.unwrap();
            raw
        }
    });
    let written = futures::future::join_all(puts).await;
    for (i, raw) in written.into_iter().enumerate() {
        let k = key(400, i as u64, 1);
        assert_eq!(store.get(&k).await.unwrap(), raw);
        store.delete(&k).await.unwrap();
    }
}

async fn corruption_is_reported(store: &BlockStore, volume: &str, overwrite: Overwrite<'_>) {
    let raw = noise(50_000, 3);
    let good = store.codec().encode(&raw).to_vec();
    type Expect = fn(&CodecError) -> bool;
    let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        ("flipped frame byte", flip(&good, good.len() - 10), |e| {
            matches!(e, CodecError::FrameChecksum { .. })
        }),
        ("truncated", good[..good.len() - 1].to_vec(), |e| {
            matches!(e, CodecError::LengthMismatch { .. })
        }),
        ("flipped table crc", flip(&good, 21), |e| {
            matches!(e, CodecError::IndexChecksum { .. })
        }),
        ("not a block", b"<html>oops</html>".to_vec(), |e| {
            matches!(e, CodecError::BadMagic { .. } | CodecError::TooShort { .. })
        }),
    ];
    for (i, (name, bytes, expected)) in cases.into_iter().enumerate() {
        let k = key(500, i as u64, 1);
        store.put(&k, Bytes::from(raw.clone())).await.unwrap();
        overwrite(k.object_path(volume), bytes).await;
        match store.get(&k).await {
            Err(BlockError::Corrupt { path, reason }) => {
                assert!(expected(&reason), "{name}: {reason:?}");
                assert!(path.contains(&k.object_path(volume)), "{name}: {path}");
            }
            other => panic!("{name}: expected Corrupt, got {other:?}"),
        }
        // A ranged read of the damaged part (the end of the block) fails the same way.
        let len = raw.len() as u64;
        match store.get_range(&k, len - 20..len, len).await {
            Err(BlockError::Corrupt { path, .. }) => {
                assert!(path.contains(&k.object_path(volume)), "{name}: {path}");
            }
            other => panic!("{name}: ranged read: expected Corrupt, got {other:?}"),
        }
        // Writing the block again repairs it.
        store.put(&k, Bytes::from(raw.clone())).await.unwrap();
        assert_eq!(&store.get(&k).await.unwrap()[..], &raw[..], "{name}");
        store.delete(&k).await.unwrap();
    }
}

fn flip(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[at] ^= 0x40;
    out
}
