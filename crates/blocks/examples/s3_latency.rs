//! Latency of single GETs against an S3 server, through object_store as cairn builds it.
//!
//! ```sh
//! env -u AWS_CA_BUNDLE AWS_ACCESS_KEY_ID=K AWS_SECRET_ACCESS_KEY=S \
//!   cargo run --release -p cairn-blocks --example s3_latency -- \
//!   --endpoint http://127.0.0.1:8333 --bucket probe -n 50 --variants cairn,plain --api
//! ```
//!
//! PUTs one 4 KiB, one 64 KiB and one 4 MiB object, then times `n` sequential GETs of each,
//! whole (`get` + `bytes`) and ranged (`get_range` of the first 64 KiB, and of 4 KiB at varying
//! offsets), and prints p50/p90.
//! `--variants` picks how the raw store is built (see [`build`]): `cairn` mirrors
//! `store.rs::open_s3`. `--api` also times the same reads through [`BlockStore`] opened from an
//! `s3://` URL, which is the code path the filesystem uses. `--fresh` also times a GET on a new
//! client each time (a new connection). `--runtime ct` uses a current-thread runtime instead of
//! the multi-thread one. `--cold M` writes 2M new 4 MiB objects, times a 4 KiB ranged GET of
//! each of the first M twice (first touch, then again), and prints the prefix of the other M
//! for the same test with curl.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_blocks::{BlockCodec, BlockKey, BlockStore, Compression, StoreConfig};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};

const SIZES: [(&str, usize); 3] = [("4KiB", 4 << 10), ("64KiB", 64 << 10), ("4MiB", 4 << 20)];
const RANGE: u64 = 64 << 10;

struct Args {
    endpoint: String,
    bucket: String,
    n: usize,
    variants: Vec<String>,
    api: bool,
    current_thread: bool,
    fresh: bool,
    cold: usize,
}

fn args() -> Args {
    let mut a = Args {
        endpoint: "http://127.0.0.1:8333".into(),
        bucket: "probe".into(),
        n: 50,
        variants: vec!["cairn".into()],
        api: false,
        current_thread: false,
        fresh: false,
        cold: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().expect("flag needs a value");
        match arg.as_str() {
            "--endpoint" => a.endpoint = value(),
            "--bucket" => a.bucket = value(),
            "-n" => a.n = value().parse().expect("-n takes a number"),
            "--variants" => a.variants = value().split(',').map(String::from).collect(),
            "--api" => a.api = true,
            "--fresh" => a.fresh = true,
            "--cold" => a.cold = value().parse().expect("--cold takes a number"),
            "--runtime" => a.current_thread = value() == "ct",
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// The raw S3 store. `cairn` is what store.rs builds; the others change one thing each.
fn build(variant: &str, a: &Args) -> Arc<dyn ObjectStore> {
    let key = std::env::var("AWS_ACCESS_KEY_ID").expect("AWS_ACCESS_KEY_ID");
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY").expect("AWS_SECRET_ACCESS_KEY");
    let cairn_options = || {
        ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(30))
    };
    let cairn_retry = RetryConfig {
        backoff: BackoffConfig::default(),
        max_retries: 0,
        retry_timeout: Duration::from_secs(30),
    };
    let (options, retry) = match variant {
        // store.rs before the change.
        "cairn" => (cairn_options(), cairn_retry),
        // object_store's defaults only.
        "plain" => (ClientOptions::new(), RetryConfig::default()),
        // cairn without the whole-request timeout.
        "notimeout" => (
            ClientOptions::new().with_connect_timeout(Duration::from_secs(5)),
            cairn_retry,
        ),
        // cairn with a read (idle) timeout instead of the whole-request timeout.
        "readtimeout" => (
            ClientOptions::new()
                .with_connect_timeout(Duration::from_secs(5))
                .with_read_timeout(Duration::from_secs(30)),
            cairn_retry,
        ),
        // cairn with HTTP/2 allowed (object_store defaults to HTTP/1 only).
        "http2" => (cairn_options().with_allow_http2(), cairn_retry),
        other => panic!("unknown variant {other}"),
    };
    let s3 = AmazonS3Builder::new()
        .with_bucket_name(&a.bucket)
        .with_region("us-east-1")
        .with_access_key_id(key)
        .with_secret_access_key(secret)
        .with_virtual_hosted_style_request(false)
        .with_client_options(options.with_allow_http(true))
        .with_retry(retry)
        .with_endpoint(&a.endpoint)
        .with_allow_http(true)
        .build()
        .expect("build the S3 store");
    Arc::new(s3)
}

fn report(label: &str, mut ms: Vec<f64>) {
    ms.sort_by(|a, b| a.total_cmp(b));
    let pick = |q: f64| ms[((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1];
    println!(
        "{label:<40} n={:<4} p50={:>7.2}ms p90={:>7.2}ms min={:>7.2}ms",
        ms.len(),
        pick(0.5),
        pick(0.9),
        ms[0]
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn raw(variant: &str, a: &Args) {
    let store = build(variant, a);
    for (name, size) in SIZES {
        let path = Path::from(format!("latency/{name}"));
        let body = Bytes::from((0..size).map(|i| (i * 7 + 3) as u8).collect::<Vec<_>>());
        store.put(&path, PutPayload::from(body)).await.expect("PUT");
        // One warm-up GET: opens the connection.
        store.get(&path).await.unwrap().bytes().await.unwrap();

        let (mut whole, mut head) = (Vec::new(), Vec::new());
        for _ in 0..a.n {
            let t = Instant::now();
            let got = store.get(&path).await.expect("GET");
            let t_head = t.elapsed();
            let bytes = got.bytes().await.expect("GET body");
            whole.push(ms(t.elapsed()));
            head.push(ms(t_head));
            assert_eq!(bytes.len(), size);
        }
        report(&format!("{variant} get+bytes {name}"), whole);
        report(&format!("{variant}   (to headers) {name}"), head);

        let mut ranged = Vec::new();
        for _ in 0..a.n {
            let t = Instant::now();
            let bytes = store
                .get_range(&path, 0..RANGE.min(size as u64))
                .await
                .expect("ranged GET");
            ranged.push(ms(t.elapsed()));
            assert_eq!(bytes.len() as u64, RANGE.min(size as u64));
        }
        report(&format!("{variant} get_range 64KiB of {name}"), ranged);

        let mut small = Vec::new();
        for i in 0..a.n {
            // A different 4 KiB each time, as random reads of a file do.
            let start = (i as u64 * 4096 * 7) % (size as u64 - 4095).max(1);
            let t = Instant::now();
            store
                .get_range(&path, start..start + 4096.min(size as u64))
                .await
                .expect("ranged GET");
            small.push(ms(t.elapsed()));
        }
        report(&format!("{variant} get_range 4KiB of {name}"), small);
    }
    if a.fresh {
        // A new client (so a new connection) for every GET: what a lost keep-alive costs.
        let path = Path::from("latency/4KiB");
        let mut fresh = Vec::new();
        for _ in 0..a.n {
            let t = Instant::now();
            let store = build(variant, a);
            store.get(&path).await.unwrap().bytes().await.unwrap();
            fresh.push(ms(t.elapsed()));
        }
        report(&format!("{variant} new client, get+bytes 4KiB"), fresh);
    }
}

/// First and second ranged GET of objects never read before: a server that fetches or caches
/// whole chunks shows it here, whatever the client.
async fn cold(variant: &str, a: &Args) {
    let store = build(variant, a);
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let body = Bytes::from(
        (0..4usize << 20)
            .map(|i| (i * 13 + 1) as u8)
            .collect::<Vec<_>>(),
    );
    for i in 0..2 * a.cold {
        let path = Path::from(format!("latency/cold-{run}/{i}"));
        store
            .put(&path, PutPayload::from(body.clone()))
            .await
            .expect("PUT");
    }
    for pass in ["first", "second"] {
        let mut times = Vec::new();
        for i in 0..a.cold {
            let path = Path::from(format!("latency/cold-{run}/{i}"));
            let t = Instant::now();
            store
                .get_range(&path, 1 << 20..(1 << 20) + 4096)
                .await
                .expect("ranged GET");
            times.push(ms(t.elapsed()));
        }
        report(
            &format!("{variant} get_range 4KiB of 4MiB, {pass} touch"),
            times,
        );
    }
    println!(
        "untouched for curl: latency/cold-{run}/{{{}..{}}}",
        a.cold,
        2 * a.cold - 1
    );
}

async fn api(a: &Args) {
    let cfg = StoreConfig {
        url: format!("s3://{}/latency-api", a.bucket),
        s3_endpoint: Some(a.endpoint.clone()),
        ..StoreConfig::default()
    };
    let store = BlockStore::open(&cfg, "vol", BlockCodec::new(Compression::None)).expect("open");
    for (i, (name, size)) in SIZES.into_iter().enumerate() {
        let key = BlockKey {
            ino: 1,
            index: i as u64,
            version: 1,
        };
        let raw = Bytes::from((0..size).map(|i| (i * 7 + 3) as u8).collect::<Vec<_>>());
        store.put(&key, raw).await.expect("put");
        store.get(&key).await.expect("warm-up get");
        let mut whole = Vec::new();
        for _ in 0..a.n {
            let t = Instant::now();
            let got = store.get(&key).await.expect("get");
            whole.push(ms(t.elapsed()));
            assert_eq!(got.len(), size);
        }
        report(&format!("BlockStore::get {name}"), whole);
        let mut ranged = Vec::new();
        for _ in 0..a.n {
            let t = Instant::now();
            let got = store
                .get_range(&key, 0..RANGE.min(size as u64), size as u64)
                .await
                .expect("get_range");
            ranged.push(ms(t.elapsed()));
            assert_eq!(got.len() as u64, RANGE.min(size as u64));
        }
        report(&format!("BlockStore::get_range 64KiB of {name}"), ranged);
        let mut small = Vec::new();
        for i in 0..a.n {
            let start = (i as u64 * 4096 * 7) % (size as u64 - 4095).max(1);
            let t = Instant::now();
            let got = store
                .get_range(&key, start..start + 4096, size as u64)
                .await
                .expect("get_range");
            small.push(ms(t.elapsed()));
            assert_eq!(got.len(), 4096);
        }
        report(&format!("BlockStore::get_range 4KiB of {name}"), small);
    }
}

fn main() {
    let a = args();
    let rt = if a.current_thread {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    }
    .enable_all()
    .build()
    .unwrap();
    rt.block_on(async {
        for v in &a.variants {
            if a.cold > 0 {
                cold(v, &a).await;
            } else {
                raw(v, &a).await;
            }
        }
        if a.api {
            api(&a).await;
        }
    });
}
