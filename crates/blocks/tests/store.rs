//! The block store conformance suite on memory:// and file:// stores.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use cairn_blocks::{BlockCodec, BlockError, BlockStore, CacheConfig, Compression, StoreConfig};
use common::{conformance, key, noise};

fn config(url: String) -> StoreConfig {
    StoreConfig {
        url,
        ..Default::default()
    }
}

#[tokio::test]
async fn memory_store() {
    for compression in [
        Compression::None,
        Compression::Lz4,
        Compression::Zstd { level: 3 },
    ] {
        let store = BlockStore::open(
            &config("memory://".into()),
            "vol",
            BlockCodec::new(compression),
        )
        .unwrap();
        assert_eq!(store.describe(), "memory://");
        conformance(&store, "vol", None).await;
    }
}

#[tokio::test]
async fn local_store() {
    let dir = tempfile::tempdir().unwrap();
    let root = Arc::new(dir.path().join("blocks"));
    let store = BlockStore::open(
        &config(format!("file://{}", root.display())),
        "vol",
        BlockCodec::new(Compression::Zstd { level: 3 }),
    )
    .unwrap();
    let files = Arc::clone(&root);
    let overwrite = move |path: String, bytes: Vec<u8>| {
        let file = files.join(path);
        Box::pin(async move {
            assert!(file.is_file(), "{} is not a file", file.display());
            std::fs::write(&file, bytes).unwrap();
        }) as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
    };
    conformance(&store, "vol", Some(&overwrite)).await;
}

/// The object of a block is a file at `{root}/{object_path}`, and blocks written with one
/// compression read back under another (the decoder reads the header).
#[tokio::test]
async fn local_layout_and_compression_change() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(format!("file://{}", dir.path().display()));
    let lz4 = BlockStore::open(&cfg, "vol1", BlockCodec::new(Compression::Lz4)).unwrap();
    let k = key(1234, 31, 7);
    let raw = Bytes::from(vec![b'a'; 1 << 20]);
    let stored = lz4.put(&k, raw.clone()).await.unwrap();
    let file = dir
        .path()
        .join("4a9d/vol1/00000000000004d2/1f.0000000000000007");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), stored);
    assert!(stored < 1 << 16, "lz4 should shrink 1 MiB of 'a': {stored}");

    let zstd = BlockStore::open(
        &cfg,
        "vol1",
        BlockCodec::new(Compression::Zstd { level: 9 }),
    )
    .unwrap();
    assert_eq!(zstd.get(&k).await.unwrap(), raw);
    // Another volume in the same folder does not see it.
    let other = BlockStore::open(&cfg, "v2", BlockCodec::new(Compression::Lz4)).unwrap();
    assert!(matches!(
        other.get(&k).await,
        Err(BlockError::NotFound { .. })
    ));
}

/// A block written by one process is read by another opening the same folder, and the second
/// write of an existing key (a replay after a crash) succeeds without rewriting it.
#[tokio::test]
async fn local_replay_across_opens() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(format!("file://{}", dir.path().display()));
    let k = key(9, 0, 1);
    let raw = Bytes::from(noise(300_000, 5));
    let a = BlockStore::open(&cfg, "v", BlockCodec::new(Compression::None)).unwrap();
    a.put(&k, raw.clone()).await.unwrap();
    let b = BlockStore::open(&cfg, "v", BlockCodec::new(Compression::Lz4)).unwrap();
    b.put(&k, raw.clone()).await.unwrap();
    assert_eq!(b.get(&k).await.unwrap(), raw);
}

#[tokio::test]
async fn local_check_creates_nothing_lasting() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(format!("file://{}", dir.path().display()));
    let store = BlockStore::open(&cfg, "v", BlockCodec::new(Compression::Lz4)).unwrap();
    store.check().await.unwrap();
    let probes = dir.path().join("cairn-probe/v");
    let left: Vec<_> = std::fs::read_dir(&probes)
        .map(|d| d.collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "probe objects left: {left:?}");
}

/// The suite through a disk cache, with and without writeback, over a local folder. Writeback
/// blocks land in the folder once drained; a store without the cache reads them.
#[tokio::test]
async fn local_store_with_disk_cache() {
    for writeback in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let blocks = format!("file://{}", dir.path().join("blocks").display());
        let cfg = StoreConfig {
            cache: Some(CacheConfig {
                dir: dir.path().join("cache"),
                capacity: 64 << 20,
                writeback,
            }),
            ..config(blocks.clone())
        };
        let codec = BlockCodec::new(Compression::Zstd { level: 3 });
        let store = BlockStore::open(&cfg, "vol", codec.clone()).unwrap();
        conformance(&store, "vol", None).await;

        let k = key(77, 0, 1);
        let raw = Bytes::from(noise(200_000, 9));
        store.put(&k, raw.clone()).await.unwrap();
        store.drain_writeback().await.unwrap();
        assert_eq!(store.writeback_pending(), (0, 0));
        let plain = BlockStore::open(&config(blocks), "vol", codec).unwrap();
        assert_eq!(plain.get(&k).await.unwrap(), raw, "writeback {writeback}");
    }
}
