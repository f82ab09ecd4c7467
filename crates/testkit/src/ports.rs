//! Free TCP ports on 127.0.0.1 for servers that tests start.
//!
//! Ports come from 15000..30000, below the kernel's ephemeral range (32768..60999 on Linux), so a
//! port we hand out is never taken meanwhile by an outgoing connection's source port. A port is
//! handed out at most once per process (several test threads start servers at once), and only after
//! a bind on it succeeded. Another process can still take it between our check and the server's
//! bind: callers that start servers retry with fresh ports when the server fails to come up.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

const LOW: u16 = 15000;
const HIGH: u16 = 30000;

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

fn bindable(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

fn seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    (nanos as u64) ^ ((std::process::id() as u64) << 32)
}

/// A free port on 127.0.0.1, not handed out before by this process.
pub fn free_port() -> u16 {
    free_port_with_offset(0)
}

/// A free port `p` such that `p + offset` is free too (both reserved). SeaweedFS derives some ports
/// from others (its admin worker dials admin port + 10000), so those must be free as a pair.
pub fn free_port_with_offset(offset: u16) -> u16 {
    let high = HIGH - offset;
    let span = u64::from(high - LOW);
    let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let taken = guard.get_or_insert_with(HashSet::new);
    let mut x = seed();
    for _ in 0..10_000 {
        // splitmix64 step
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let port = LOW + (z % span) as u16;
        let pair = port + offset;
        if taken.contains(&port) || taken.contains(&pair) {
            continue;
        }
        if bindable(port) && (offset == 0 || bindable(pair)) {
            taken.insert(port);
            taken.insert(pair);
            return port;
        }
    }
    panic!("no free TCP port pair found in {LOW}..{HIGH} (offset {offset})");
}
