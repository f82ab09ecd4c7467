//! Directories whose every name this mount knows, so that a lookup of a name that is not there
//! is answered here instead of by a round trip to the metadata server.
//!
//! Every create asks the kernel's LOOKUP first, for a name that (nearly always) does not exist
//! yet: in a directory this mount made and filled itself (an output folder, an unpacked archive,
//! a copied tree) that answer is known. A directory becomes known when this mount makes it
//! (empty) and stays known while every change of its entries is this mount's own: each change's
//! answer carries the directory's ctime before and after ([`DirChange`]), and the server moves a
//! directory's ctime forward with every change of its entries. A change whose `was` is not the
//! ctime known here means someone else changed the directory in between: it is forgotten.
//!
//! Changes made by other mounts are seen the next time the directory's ctime is checked. A
//! "no such name" answered here rests on a check (or one of this mount's own changes, which
//! proves the same) at most [`FRESH_FOR`] old: the kernel's entry and attribute TTL, so no answer
//! is staler than one the kernel itself may give from its caches. Past that, the mount asks the
//! server for the directory's attributes once and goes on if the ctime has not moved.

use cairn_proto::{Attr, DirChange, Ino, Timestamp, FIRST_COOKIE};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a check of a directory's ctime vouches for its names.
pub const FRESH_FOR: Duration = Duration::from_secs(1);
/// Directories known at once; past it, the least recently checked are forgotten.
const MAX_DIRS: usize = 4096;
/// Names known per directory; a directory that grows past it is forgotten (its lookups go to
/// the server, as for any directory).
const MAX_NAMES: usize = 100_000;

/// What this mount knows of a name in a directory.
#[derive(Debug, PartialEq, Eq)]
pub enum Known {
    /// The name is not in the directory (as of a check less than [`FRESH_FOR`] ago).
    Absent,
    /// The directory's names were known, but the last check is too old: check its ctime.
    Stale,
    /// The name is in the directory and names `ino`, as of a check vouched for until `until`
    /// (which may be past: then check the directory's ctime first).
    Present { ino: Ino, until: Instant },
    /// Nothing useful: ask the server.
    Unknown,
}

/// A directory's names and the inode each names (0: not known; the name is still known to be
/// there).
pub type Names = HashMap<Vec<u8>, Ino>;

struct Listing {
    names: Names,
    /// The directory's ctime when its names were last known to be `names`.
    ctime: Timestamp,
    /// When the server last vouched for `ctime` (a check, or a change of this mount's).
    checked: Instant,
}

/// A listing being read, chunk by chunk, by one reader (a second reader of the same directory
/// starts it over; then neither learns anything, which costs only the saving).
struct Reading {
    names: Names,
    ctime: Timestamp,
    /// The cookie the next chunk must start after.
    next: u64,
}

/// The directories this mount knows every name of.
#[derive(Default)]
pub struct Listings {
    known: Mutex<HashMap<Ino, Listing>>,
    reading: Mutex<HashMap<Ino, Reading>>,
}

impl Listings {
    /// What is known of `name` in `dir`.
    pub fn lookup(&self, dir: Ino, name: &[u8]) -> Known {
        let m = self.known.lock().expect("listings lock");
        match m.get(&dir) {
            Some(l) => match l.names.get(name) {
                Some(0) => Known::Unknown,
                Some(&ino) => Known::Present {
                    ino,
                    until: l.checked + FRESH_FOR,
                },
                None if l.checked.elapsed() < FRESH_FOR => Known::Absent,
                None => Known::Stale,
            },
            None => Known::Unknown,
        }
    }

    /// This mount made the directory `dir` (its attributes as made, with a request sent at
    /// `sent`): it is empty.
    pub fn made(&self, dir: &Attr, sent: Instant) {
        let mut m = self.known.lock().expect("listings lock");
        Self::make_room(&mut m);
        m.insert(
            dir.ino,
            Listing {
                names: Names::new(),
                ctime: dir.ctime,
                checked: sent,
            },
        );
    }

    /// A chunk of a listing of `dir`, read after `sent`: the entries after `cookie` (each with
    /// its name, inode and cookie), whether they are the last, and the directory's ctime as of them.
    /// A listing read from its start to its end at one ctime holds every name the directory had
    /// (the ctime moves with every change of its entries), and is then known.
    pub fn listed<'a>(
        &self,
        dir: Ino,
        cookie: u64,
        entries: impl Iterator<Item = (&'a [u8], Ino, u64)>,
        eof: bool,
        ctime: Timestamp,
        sent: Instant,
    ) {
        let mut reading = self.reading.lock().expect("listings lock");
        if cookie < FIRST_COOKIE {
            if reading.len() >= MAX_DIRS {
                reading.clear();
            }
            reading.insert(
                dir,
                Reading {
                    names: Names::new(),
                    ctime,
                    next: cookie,
                },
            );
        }
        let Some(r) = reading.get_mut(&dir) else {
            return;
        };
        // The kernel may ask again from within the last chunk (its buffer took only part of
        // it): entries read twice are the same names, as long as the ctime has not moved.
        if cookie > r.next || r.ctime != ctime {
            reading.remove(&dir);
            return;
        }
        for (name, ino, c) in entries {
            r.names.insert(name.to_vec(), ino);
            r.next = c;
        }
        if r.names.len() > MAX_NAMES {
            reading.remove(&dir);
            return;
        }
        if !eof {
            return;
        }
        let Some(r) = reading.remove(&dir) else {
            return;
        };
        drop(reading);
        let mut m = self.known.lock().expect("listings lock");
        if let Some(l) = m.get(&dir) {
            // What this mount knows already stands if it is as new; a listing of an older
            // ctime (read while a change of this mount's landed) is not news.
            if l.ctime >= r.ctime {
                return;
            }
        }
        Self::make_room(&mut m);
        m.insert(
            dir,
            Listing {
                names: r.names,
                ctime: r.ctime,
                checked: sent,
            },
        );
    }

    fn make_room(m: &mut HashMap<Ino, Listing>) {
        if m.len() >= MAX_DIRS {
            let oldest = m.iter().min_by_key(|(_, l)| l.checked).map(|(ino, _)| *ino);
            if let Some(ino) = oldest {
                m.remove(&ino);
            }
        }
    }

    /// One of this mount's changes (sent at `sent`) changed the directory as `change` says;
    /// `edit` applies it to the names. A change that does not follow the ctime known here
    /// forgets the directory.
    pub fn changed(&self, change: &DirChange, sent: Instant, edit: impl FnOnce(&mut Names)) {
        let mut m = self.known.lock().expect("listings lock");
        let Some(l) = m.get_mut(&change.attr.ino) else {
            return;
        };
        if l.ctime != change.was {
            m.remove(&change.attr.ino);
            return;
        }
        edit(&mut l.names);
        if l.names.len() > MAX_NAMES {
            m.remove(&change.attr.ino);
            return;
        }
        l.ctime = change.attr.ctime;
        // The server found the directory as known here when it made the change, after `sent`.
        l.checked = l.checked.max(sent);
    }

    /// The server gave the directory's attributes, read after `sent`: they vouch for what is
    /// known if its ctime has not moved, else the directory is forgotten.
    pub fn checked(&self, dir: &Attr, sent: Instant) {
        let mut m = self.known.lock().expect("listings lock");
        if let Some(l) = m.get_mut(&dir.ino) {
            if l.ctime == dir.ctime {
                l.checked = l.checked.max(sent);
            } else {
                m.remove(&dir.ino);
            }
        }
    }

    /// Something showed that the directory's names are not what is known here (a lookup found
    /// a name this mount does not know, or missed one it does).
    pub fn forget(&self, dir: Ino) {
        self.known.lock().expect("listings lock").remove(&dir);
    }

    /// The inode `name` names in `dir`, if this mount knows it.
    pub fn ino_of(&self, dir: Ino, name: &[u8]) -> Option<Ino> {
        let m = self.known.lock().expect("listings lock");
        m.get(&dir)
            .and_then(|l| l.names.get(name).copied())
            .filter(|&ino| ino != 0)
    }

    /// Whether `name` is among the names known in `dir` (for a lookup's answer to be checked
    /// against); `None` when the directory is not known.
    pub fn contains(&self, dir: Ino, name: &[u8]) -> Option<bool> {
        let m = self.known.lock().expect("listings lock");
        m.get(&dir).map(|l| l.names.contains_key(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::FileKind;

    fn dir(ino: Ino, ctime: u32) -> Attr {
        Attr {
            ino,
            kind: FileKind::Dir,
            perm: 0o755,
            nlink: 2,
            uid: 0,
            gid: 0,
            rdev: 0,
            size: 0,
            atime: Timestamp::default(),
            mtime: Timestamp::default(),
            ctime: Timestamp {
                secs: 1,
                nanos: ctime,
            },
            crtime: Timestamp::default(),
            generation: 0,
        }
    }

    fn change(ino: Ino, was: u32, now: u32) -> DirChange {
        DirChange {
            attr: dir(ino, now),
            was: Timestamp {
                secs: 1,
                nanos: was,
            },
        }
    }

    #[test]
    fn a_made_directory_answers_for_names_until_someone_else_changes_it() {
        let l = Listings::default();
        let t = Instant::now();
        assert_eq!(l.lookup(5, b"a"), Known::Unknown);
        l.made(&dir(5, 10), t);
        assert_eq!(l.lookup(5, b"a"), Known::Absent);
        l.changed(&change(5, 10, 11), t, |n| {
            n.insert(b"a".to_vec(), 0);
        });
        assert_eq!(l.lookup(5, b"a"), Known::Unknown, "a exists now");
        assert_eq!(l.lookup(5, b"b"), Known::Absent);
        // A change that does not follow ctime 11: another mount changed the directory first.
        l.changed(&change(5, 12, 13), t, |n| {
            n.insert(b"c".to_vec(), 0);
        });
        assert_eq!(l.lookup(5, b"b"), Known::Unknown);
    }

    #[test]
    fn an_old_check_asks_for_another_and_a_moved_ctime_forgets() {
        let l = Listings::default();
        let long_ago = Instant::now() - FRESH_FOR * 2;
        l.made(&dir(7, 1), long_ago);
        assert_eq!(l.lookup(7, b"x"), Known::Stale);
        l.checked(&dir(7, 1), Instant::now());
        assert_eq!(l.lookup(7, b"x"), Known::Absent);
        l.checked(&dir(7, 2), Instant::now());
        assert_eq!(l.lookup(7, b"x"), Known::Unknown);
    }

    #[test]
    fn a_whole_listing_at_one_ctime_is_known_and_a_torn_one_is_not() {
        let l = Listings::default();
        let t = Instant::now();
        let ts = |n| Timestamp { secs: 1, nanos: n };
        let chunk = |names: &'static [(&'static str, u64)]| {
            names.iter().map(|(n, c)| (n.as_bytes(), 0, *c))
        };
        l.listed(3, 0, chunk(&[("a", 3), ("b", 4)]), false, ts(5), t);
        assert_eq!(l.lookup(3, b"z"), Known::Unknown, "half a listing");
        l.listed(3, 4, chunk(&[("c", 5)]), true, ts(5), t);
        assert_eq!(l.lookup(3, b"z"), Known::Absent);
        assert_eq!(l.lookup(3, b"c"), Known::Unknown, "c is there");

        // The directory changed between two chunks: nothing learned.
        l.listed(4, 0, chunk(&[("a", 3)]), false, ts(5), t);
        l.listed(4, 3, chunk(&[("b", 4)]), true, ts(6), t);
        assert_eq!(l.lookup(4, b"z"), Known::Unknown);
        // A chunk that does not follow the last one: nothing learned.
        l.listed(6, 0, chunk(&[("a", 3)]), false, ts(5), t);
        l.listed(6, 7, chunk(&[("b", 8)]), true, ts(5), t);
        assert_eq!(l.lookup(6, b"z"), Known::Unknown);
        // Asked again from within the last chunk (the kernel's buffer was full): still whole.
        l.listed(
            8,
            2,
            chunk(&[("a", 3), ("b", 4), ("c", 5)]),
            false,
            ts(5),
            t,
        );
        l.listed(8, 4, chunk(&[("c", 5), ("d", 6)]), true, ts(5), t);
        assert_eq!(l.lookup(8, b"z"), Known::Absent);
        assert_eq!(l.lookup(8, b"d"), Known::Unknown);
    }

    #[test]
    fn a_removal_makes_the_name_absent_again() {
        let l = Listings::default();
        let t = Instant::now();
        l.made(&dir(9, 1), t);
        l.changed(&change(9, 1, 2), t, |n| {
            n.insert(b"f".to_vec(), 12);
        });
        assert_eq!(
            l.lookup(9, b"f"),
            Known::Present {
                ino: 12,
                until: t + FRESH_FOR
            }
        );
        assert_eq!(l.ino_of(9, b"f"), Some(12));
        l.changed(&change(9, 2, 3), t, |n| {
            n.remove(&b"f"[..]);
        });
        assert_eq!(l.lookup(9, b"f"), Known::Absent);
        assert_eq!(l.contains(9, b"f"), Some(false));
    }
}
