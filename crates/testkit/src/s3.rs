//! A minimal S3 client for tests: AWS Signature V4 over plain HTTP/1.1 on loopback.
//!
//! Enough to create buckets and see what landed in them (SeaweedFS enforces SigV4), with no
//! dependency beyond `sha2`. Path-style addressing, one connection per request
//! (`Connection: close`), 30 s socket timeouts. Not for production: no retries, no streaming.

use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::util::hex;

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Object {
    pub key: String,
    pub size: u64,
}

/// A failed request: the connection failed, or the server answered with an error status.
#[derive(Debug, Clone)]
pub enum S3Error {
    Io(String),
    Http {
        status: u16,
        code: String,
        message: String,
    },
}

impl std::fmt::Display for S3Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            S3Error::Io(e) => write!(f, "S3 request failed: {e}"),
            S3Error::Http {
                status,
                code,
                message,
            } => {
                write!(f, "S3 answered HTTP {status} {code}: {message}")
            }
        }
    }
}

impl std::error::Error for S3Error {}

impl S3Error {
    /// The S3 error code (`NoSuchBucket`, ...), if the server answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            S3Error::Http { code, .. } => Some(code),
            S3Error::Io(_) => None,
        }
    }
}

struct Response {
    status: u16,
    body: Vec<u8>,
}

/// SigV4 client for one endpoint (`http://127.0.0.1:PORT`).
#[derive(Debug, Clone)]
pub struct S3Client {
    addr: SocketAddr,
    host: String,
    access_key: String,
    secret_key: String,
    region: String,
}

impl S3Client {
    /// `endpoint` is `http://HOST:PORT` with HOST an IP address.
    pub fn new(endpoint: &str, access_key: &str, secret_key: &str, region: &str) -> S3Client {
        let host = endpoint
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let addr = host
            .parse()
            .unwrap_or_else(|e| panic!("S3 endpoint {endpoint} is not http://IP:PORT: {e}"));
        S3Client {
            addr,
            host,
            access_key: access_key.to_string(),
            secret_key: secret_key.to_string(),
            region: region.to_string(),
        }
    }

    /// Names of all buckets.
    pub fn list_buckets(&self) -> Result<Vec<String>, S3Error> {
        let r = self.request("GET", "/", &[], &[])?;
        let body = String::from_utf8_lossy(&r.body);
        Ok(elements(&body, "Bucket")
            .iter()
            .filter_map(|b| element(b, "Name"))
            .collect())
    }

    pub fn create_bucket(&self, bucket: &str) -> Result<(), S3Error> {
        self.request("PUT", &format!("/{}", encode(bucket, false)), &[], &[])
            .map(|_| ())
    }

    pub fn bucket_exists(&self, bucket: &str) -> Result<bool, S3Error> {
        match self.request("HEAD", &format!("/{}", encode(bucket, false)), &[], &[]) {
            Ok(_) => Ok(true),
            Err(S3Error::Http { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub fn delete_bucket(&self, bucket: &str) -> Result<(), S3Error> {
        self.request("DELETE", &format!("/{}", encode(bucket, false)), &[], &[])
            .map(|_| ())
    }

    /// Every object under `prefix` ("" for all), following continuation tokens, sorted by key.
    pub fn list_objects(&self, bucket: &str, prefix: &str) -> Result<Vec<S3Object>, S3Error> {
        let path = format!("/{}", encode(bucket, false));
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut q = vec![("list-type".to_string(), "2".to_string())];
            if !prefix.is_empty() {
                q.push(("prefix".to_string(), prefix.to_string()));
            }
            if let Some(t) = &token {
                q.push(("continuation-token".to_string(), t.clone()));
            }
            let r = self.request("GET", &path, &q, &[])?;
            let body = String::from_utf8_lossy(&r.body).into_owned();
            for c in elements(&body, "Contents") {
                let key = element(&c, "Key").unwrap_or_default();
                let size = element(&c, "Size")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                out.push(S3Object { key, size });
            }
            let truncated = element(&body, "IsTruncated").is_some_and(|t| t == "true");
            token = element(&body, "NextContinuationToken");
            if !truncated || token.is_none() {
                break;
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    pub fn put_object(&self, bucket: &str, key: &str, data: &[u8]) -> Result<(), S3Error> {
        self.request("PUT", &object_path(bucket, key), &[], data)
            .map(|_| ())
    }

    pub fn get_object(&self, bucket: &str, key: &str) -> Result<Vec<u8>, S3Error> {
        self.request("GET", &object_path(bucket, key), &[], &[])
            .map(|r| r.body)
    }

    pub fn delete_object(&self, bucket: &str, key: &str) -> Result<(), S3Error> {
        self.request("DELETE", &object_path(bucket, key), &[], &[])
            .map(|_| ())
    }

    /// Sends one signed request. `path` is already URI-encoded; `query` is raw.
    fn request(
        &self,
        method: &str,
        path: &str,
        query: &[(String, String)],
        body: &[u8],
    ) -> Result<Response, S3Error> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let (date, amz_date) = amz_dates(now);
        let payload_hash = hex(&Sha256::digest(body));

        let mut q: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (encode(k, true), encode(v, true)))
            .collect();
        q.sort();
        let canonical_query = q
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let signed_headers = "host;x-amz-content-sha256;x-amz-date";
        let canonical_request = format!(
            "{method}\n{path}\n{canonical_query}\nhost:{}\nx-amz-content-sha256:{payload_hash}\nx-amz-date:{amz_date}\n\n{signed_headers}\n{payload_hash}",
            self.host
        );
        let scope = format!("{date}/{}/s3/aws4_request", self.region);
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex(&Sha256::digest(canonical_request.as_bytes()))
        );
        let k_date = hmac(
            format!("AWS4{}", self.secret_key).as_bytes(),
            date.as_bytes(),
        );
        let k_region = hmac(&k_date, self.region.as_bytes());
        let k_service = hmac(&k_region, b"s3");
        let k_signing = hmac(&k_service, b"aws4_request");
        let signature = hex(&hmac(&k_signing, string_to_sign.as_bytes()));
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            self.access_key
        );

        let target = if canonical_query.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{canonical_query}")
        };
        let head = format!(
            "{method} {target} HTTP/1.1\r\nHost: {}\r\nx-amz-date: {amz_date}\r\nx-amz-content-sha256: {payload_hash}\r\nAuthorization: {auth}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.host,
            body.len()
        );
        let io = |e: std::io::Error| S3Error::Io(format!("{method} {target}: {e}"));
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5)).map_err(io)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(io)?;
        s.set_write_timeout(Some(Duration::from_secs(30)))
            .map_err(io)?;
        s.write_all(head.as_bytes()).map_err(io)?;
        s.write_all(body).map_err(io)?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).map_err(io)?;
        let resp = parse_response(&raw, method == "HEAD")
            .ok_or_else(|| S3Error::Io(format!("{method} {target}: malformed HTTP response")))?;
        if (200..300).contains(&resp.status) {
            return Ok(resp);
        }
        let text = String::from_utf8_lossy(&resp.body);
        Err(S3Error::Http {
            status: resp.status,
            code: element(&text, "Code").unwrap_or_default(),
            message: element(&text, "Message").unwrap_or_else(|| text.trim().to_string()),
        })
    }
}

fn object_path(bucket: &str, key: &str) -> String {
    format!("/{}/{}", encode(bucket, false), encode(key, false))
}

/// RFC 3986 encoding as SigV4 wants it: unreserved characters kept; `/` kept in paths.
fn encode(s: &str, encode_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b'/' if !encode_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut ipad = [0x36u8; 64];
    let mut opad = [0x5cu8; 64];
    for i in 0..64 {
        ipad[i] ^= k[i];
        opad[i] ^= k[i];
    }
    let inner = Sha256::new()
        .chain_update(ipad)
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(opad)
        .chain_update(inner)
        .finalize()
        .into()
}

/// ("YYYYMMDD", "YYYYMMDDTHHMMSSZ") for a Unix time (UTC).
fn amz_dates(unix: u64) -> (String, String) {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let date = format!("{y:04}{m:02}{d:02}");
    let time = format!("{:02}{:02}{:02}", secs / 3600, (secs / 60) % 60, secs % 60);
    (date.clone(), format!("{date}T{time}Z"))
}

fn parse_response(raw: &[u8], head: bool) -> Option<Response> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let header = String::from_utf8_lossy(&raw[..split]);
    let mut lines = header.split("\r\n");
    let status: u16 = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let mut chunked = false;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
            {
                chunked = true;
            }
        }
    }
    let rest = &raw[split + 4..];
    let body = if head {
        Vec::new()
    } else if chunked {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    Some(Response { status, body })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data.windows(2).position(|w| w == b"\r\n")?;
        let size_line = std::str::from_utf8(&data[..eol]).ok()?;
        let size = usize::from_str_radix(size_line.split(';').next()?.trim(), 16).ok()?;
        data = &data[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        if data.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// The bodies of every `<tag>...</tag>` in `xml` (no nesting of the same tag assumed).
fn elements(xml: &str, tag: &str) -> Vec<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(after[..j].to_string());
        rest = &after[j + close.len()..];
    }
    out
}

/// The unescaped text of the first `<tag>` in `xml`.
fn element(xml: &str, tag: &str) -> Option<String> {
    elements(xml, tag).into_iter().next().map(|s| unescape(&s))
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(amz_dates(0), ("19700101".into(), "19700101T000000Z".into()));
        // 2024-02-29T12:34:56Z
        assert_eq!(amz_dates(1_709_210_096).1, "20240229T123456Z");
    }

    #[test]
    fn hmac_rfc4231_case2() {
        let mac = hmac(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn dechunks() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap(),
            b"abcde"
        );
    }

    #[test]
    fn xml() {
        let x = "<a><Contents><Key>k&amp;1</Key><Size>3</Size></Contents><Contents><Key>k2</Key></Contents></a>";
        let c = elements(x, "Contents");
        assert_eq!(c.len(), 2);
        assert_eq!(element(&c[0], "Key").unwrap(), "k&1");
    }
}
