//! The attributes of files as this mount last had them from the server, so that a lookup of a
//! name whose inode a known directory names ([`crate::listings`]) is answered without a round
//! trip: the lookup before each unlink, rename or open of a file whose kernel entry has expired.
//!
//! The kernel takes attributes from a lookup's answer even for an inode it still holds, and an
//! answer older than the one it has would move that inode back (a shorter size drops its pages).
//! So what is kept here is never older than what the kernel was told: every change this mount
//! makes to an inode forgets it here, and an answer from the server is kept only if no change
//! (and no newer answer) was made after its request went out, as the kernel orders answers by
//! its own attribute version. Changes made by other mounts are not seen here: the kernel gets
//! these attributes with the time they have left of [`FRESH_FOR`] (none, once older), so it asks
//! again before it uses them for anything (`stat`, a permission check, a read past the end), as
//! with attributes it cached itself.

use crate::listings::FRESH_FOR;
use cairn_proto::{Attr, FileKind, Ino};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Inodes remembered at once; past it, all are forgotten (a lookup then asks the server).
const MAX_INODES: usize = 65_536;

struct Slot {
    /// `None`: forgotten by a change of this mount's.
    attr: Option<Attr>,
    /// When the request that answered `attr` went out.
    sent: Instant,
    /// The ticket of that request, or of the change that forgot it.
    ticket: u64,
}

#[derive(Default)]
struct Slots {
    map: HashMap<Ino, Slot>,
    /// Answers to requests with an older ticket are not kept (the map was emptied after them).
    floor: u64,
}

/// Attributes of files this mount had from the server, newest first ([`crate::known_attrs`]).
#[derive(Default)]
pub struct KnownAttrs {
    slots: Mutex<Slots>,
    tickets: AtomicU64,
}

/// A lookup's answer, and how long the kernel may keep it.
#[derive(Debug, Clone)]
pub struct EntryReply {
    /// The inode's attributes.
    pub attr: Attr,
    /// How long the kernel may keep the name: as long as the directory's listing is vouched for.
    pub entry_ttl: Duration,
    /// How long the kernel may keep the attributes: what is left of [`FRESH_FOR`] since they
    /// were asked for.
    pub attr_ttl: Duration,
}

impl EntryReply {
    /// An answer the server just gave: the kernel keeps it for [`FRESH_FOR`].
    pub fn fresh(attr: Attr) -> Self {
        EntryReply {
            attr,
            entry_ttl: FRESH_FOR,
            attr_ttl: FRESH_FOR,
        }
    }
}

impl KnownAttrs {
    /// Taken before sending a request whose answer may be kept ([`KnownAttrs::answered`]).
    pub fn ticket(&self) -> u64 {
        self.tickets.load(Ordering::Acquire)
    }

    /// The server answered `attr` to a request sent at `sent` with `ticket`. Kept for a file
    /// that has one name; a directory's attributes move with its entries, and a file with
    /// several names can change through one this mount does not know of.
    pub fn answered(&self, attr: &Attr, ticket: u64, sent: Instant) {
        if attr.kind == FileKind::Dir {
            // Never answered from here: not worth the lock, on every directory's GETATTR.
            return;
        }
        let usable = attr.nlink == 1;
        let mut s = self.slots.lock().expect("known attrs lock");
        if ticket < s.floor {
            return;
        }
        if let Some(slot) = s.map.get(&attr.ino) {
            if slot.ticket > ticket {
                return;
            }
        }
        if s.map.len() >= MAX_INODES {
            s.map.clear();
            s.floor = self.tickets.fetch_add(1, Ordering::AcqRel) + 1;
            if ticket < s.floor {
                return;
            }
        }
        s.map.insert(
            attr.ino,
            Slot {
                attr: usable.then(|| attr.clone()),
                sent,
                ticket,
            },
        );
    }

    /// This mount changes `ino` (or has changed it): what is known of it no longer holds, nor
    /// does any answer to a request sent before now.
    pub fn forget(&self, ino: Ino) {
        let ticket = self.tickets.fetch_add(1, Ordering::AcqRel) + 1;
        let mut s = self.slots.lock().expect("known attrs lock");
        if s.map.len() >= MAX_INODES {
            s.map.clear();
            s.floor = ticket;
            return;
        }
        s.map.insert(
            ino,
            Slot {
                attr: None,
                sent: Instant::now(),
                ticket,
            },
        );
    }

    /// Whether `ino`'s attributes are known (then a lookup of a name for it is worth a check of
    /// its directory).
    pub fn knows(&self, ino: Ino) -> bool {
        let s = self.slots.lock().expect("known attrs lock");
        s.map.get(&ino).is_some_and(|slot| slot.attr.is_some())
    }

    /// Runs `change`, a change of this mount's to `inos`: what is known of them is forgotten
    /// before it (no lookup is answered from it while the change is under way) and again after
    /// it (no answer to a request sent before the change landed is kept).
    pub async fn changing<T>(
        &self,
        inos: impl IntoIterator<Item = Ino> + Clone,
        change: impl std::future::Future<Output = T>,
    ) -> T {
        inos.clone().into_iter().for_each(|ino| self.forget(ino));
        let done = change.await;
        inos.into_iter().for_each(|ino| self.forget(ino));
        done
    }

    /// The entry to answer a lookup with, for `ino` named in a directory whose listing is vouched
    /// for until `listing_until`; `None` if its attributes are not known or the listing's
    /// vouching has run out.
    pub fn entry(&self, ino: Ino, listing_until: Instant) -> Option<EntryReply> {
        let now = Instant::now();
        let entry_ttl = listing_until.checked_duration_since(now)?;
        let s = self.slots.lock().expect("known attrs lock");
        let slot = s.map.get(&ino)?;
        let attr = slot.attr.clone()?;
        let attr_ttl = (slot.sent + FRESH_FOR).saturating_duration_since(now);
        Some(EntryReply {
            attr,
            entry_ttl,
            attr_ttl,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::Timestamp;

    fn file(ino: Ino, size: u64, nlink: u32) -> Attr {
        Attr {
            ino,
            kind: FileKind::File,
            perm: 0o644,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            size,
            atime: Timestamp::default(),
            mtime: Timestamp::default(),
            ctime: Timestamp::default(),
            crtime: Timestamp::default(),
            generation: 0,
        }
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn an_answer_sent_before_a_change_is_not_kept() {
        let k = KnownAttrs::default();
        let before = k.ticket();
        let sent = Instant::now();
        // This mount truncates the file while a lookup of it is out.
        k.forget(7);
        k.answered(&file(7, 100, 1), before, sent);
        assert!(
            k.entry(7, later()).is_none(),
            "the older size would go back"
        );
        let t = k.ticket();
        k.answered(&file(7, 0, 1), t, Instant::now());
        assert_eq!(k.entry(7, later()).unwrap().attr.size, 0);
    }

    #[test]
    fn an_older_answer_does_not_replace_a_newer_one() {
        let k = KnownAttrs::default();
        let first = k.ticket();
        k.forget(3);
        let second = k.ticket();
        k.answered(&file(3, 10, 1), second, Instant::now());
        k.answered(&file(3, 99, 1), first, Instant::now());
        assert_eq!(k.entry(3, later()).unwrap().attr.size, 10);
    }

    #[test]
    fn directories_and_linked_files_are_not_kept() {
        let k = KnownAttrs::default();
        let t = k.ticket();
        k.answered(&file(4, 1, 1), t, Instant::now());
        k.answered(&file(4, 1, 2), t, Instant::now());
        assert!(
            k.entry(4, later()).is_none(),
            "a second name forgets the first answer"
        );
        let mut d = file(5, 0, 1);
        d.kind = FileKind::Dir;
        k.answered(&d, t, Instant::now());
        assert!(k.entry(5, later()).is_none());
    }

    #[test]
    fn the_kernel_keeps_attributes_only_for_what_is_left_of_their_freshness() {
        let k = KnownAttrs::default();
        let t = k.ticket();
        k.answered(&file(6, 1, 1), t, Instant::now() - FRESH_FOR * 2);
        let e = k.entry(6, later()).unwrap();
        assert_eq!(e.attr_ttl, Duration::ZERO);
        assert!(e.entry_ttl > Duration::from_secs(4));
        k.answered(&file(6, 1, 1), t, Instant::now());
        assert!(k.entry(6, later()).unwrap().attr_ttl > Duration::ZERO);
        assert!(
            k.entry(6, Instant::now() - Duration::from_millis(1))
                .is_none(),
            "a listing no longer vouched for names nothing"
        );
    }

    #[test]
    fn a_full_memory_starts_over_and_refuses_answers_from_before() {
        let k = KnownAttrs::default();
        let old = k.ticket();
        for ino in 0..MAX_INODES as u64 {
            k.answered(&file(ino + 100, 1, 1), old, Instant::now());
        }
        // Full: the next answer empties it, and answers sent before that are not kept.
        k.answered(&file(1, 1, 1), old, Instant::now());
        assert!(k.entry(100, later()).is_none());
        assert!(k.entry(1, later()).is_none());
        k.answered(&file(2, 1, 1), k.ticket(), Instant::now());
        assert!(k.entry(2, later()).is_some());
    }
}
