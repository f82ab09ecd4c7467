//! The SeaweedFS harness on its own: start, buckets, objects, parallel servers, cleanup.

use cairn_testkit::{processes_mentioning, SeaweedFs};
use std::time::Instant;

#[test]
fn starts_creates_buckets_and_lists_objects() {
    let t = Instant::now();
    let s3 = SeaweedFs::start();
    eprintln!(
        "weed mini ready in {:.2} s at {}",
        t.elapsed().as_secs_f64(),
        s3.endpoint()
    );
    s3.create_bucket("alpha");
    assert!(s3.client().bucket_exists("alpha").unwrap());
    assert!(!s3.client().bucket_exists("missing").unwrap());
    assert_eq!(s3.object_count("alpha"), 0);

    let c = s3.client();
    c.put_object("alpha", "dir/one", b"hello").unwrap();
    c.put_object("alpha", "dir/two with space+plus", &vec![7u8; 100_000])
        .unwrap();
    let objs = s3.list_objects("alpha");
    let keys: Vec<_> = objs.iter().map(|o| (o.key.as_str(), o.size)).collect();
    assert_eq!(
        keys,
        vec![("dir/one", 5), ("dir/two with space+plus", 100_000)]
    );
    assert_eq!(c.get_object("alpha", "dir/one").unwrap(), b"hello");
    assert_eq!(s3.total_bytes("alpha"), 100_005);
    c.delete_object("alpha", "dir/one").unwrap();
    assert_eq!(s3.object_count("alpha"), 1);
    assert!(c.list_buckets().unwrap().contains(&"alpha".to_string()));
}

#[test]
fn pagination_over_1000_keys() {
    let s3 = SeaweedFs::start();
    s3.create_bucket("many");
    for i in 0..1100 {
        s3.client()
            .put_object("many", &format!("k{i:05}"), b"x")
            .unwrap();
    }
    let objs = s3.list_objects("many");
    assert_eq!(objs.len(), 1100);
    assert_eq!(objs[1099].key, "k01099");
}

#[test]
fn missing_bucket_is_not_created_on_upload() {
    let s3 = SeaweedFs::start();
    let err = s3.client().put_object("nobucket", "k", b"x").unwrap_err();
    assert_eq!(err.code(), Some("NoSuchBucket"), "{err}");
    assert!(!s3.client().bucket_exists("nobucket").unwrap());
}

#[test]
fn wrong_secret_is_rejected() {
    let s3 = SeaweedFs::start();
    s3.create_bucket("bbb");
    let bad = cairn_testkit::S3Client::new(s3.endpoint(), s3.access_key(), "wrong", s3.region());
    assert!(bad.list_objects("bbb", "").is_err());
}

#[test]
fn several_servers_in_parallel_and_cleanup() {
    let servers: Vec<SeaweedFs> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..3).map(|_| s.spawn(SeaweedFs::start)).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ports: Vec<u16> = servers.iter().map(|s| s.s3_port()).collect();
    ports.dedup();
    assert_eq!(ports.len(), 3);
    for (i, s) in servers.iter().enumerate() {
        s.create_bucket(&format!("bucket{i}"));
        s.client()
            .put_object(&format!("bucket{i}"), "k", &[i as u8])
            .unwrap();
    }
    for (i, s) in servers.iter().enumerate() {
        let buckets = s.client().list_buckets().unwrap();
        assert_eq!(
            buckets,
            vec![format!("bucket{i}")],
            "servers must not share state"
        );
    }
    let dirs: Vec<_> = servers.iter().map(|s| s.dir().to_path_buf()).collect();
    drop(servers);
    for d in dirs {
        assert!(!d.exists(), "{} left behind", d.display());
        assert!(
            processes_mentioning(&d.display().to_string()).is_empty(),
            "weed left running for {}",
            d.display()
        );
    }
}
