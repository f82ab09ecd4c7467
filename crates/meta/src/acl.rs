//! POSIX ACLs as the kernel stores them in `system.posix_acl_access` and
//! `system.posix_acl_default`: what the metadata server must do with them.
//!
//! With FUSE_POSIX_ACL the kernel enforces ACLs on access itself; the filesystem keeps them and
//! (1) keeps the mode bits and the access ACL in step (a chmod rewrites the owner, mask or group,
//! and other entries; setting an access ACL rewrites the mode), and (2) gives new entries the
//! ACL of their directory's default ACL, masked by the mode they were created with, instead of
//! applying the umask (posix_acl_create in the kernel).
//!
//! Format (little-endian): a `u32` version (2), then entries of `u16` tag, `u16` permissions and
//! `u32` id.

/// xattr name of the access ACL.
pub const ACCESS: &[u8] = b"system.posix_acl_access";
/// xattr name of a directory's default ACL.
pub const DEFAULT: &[u8] = b"system.posix_acl_default";

const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    tag: u16,
    perm: u16,
    id: u32,
}

/// A parsed ACL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acl(Vec<Entry>);

impl Acl {
    /// Parse the xattr value; `None` if it is not a well-formed ACL.
    pub fn parse(b: &[u8]) -> Option<Acl> {
        let version = u32::from_le_bytes(b.get(..4)?.try_into().ok()?);
        if version != VERSION || !(b.len() - 4).is_multiple_of(8) {
            return None;
        }
        let mut entries = Vec::with_capacity((b.len() - 4) / 8);
        for c in b[4..].chunks_exact(8) {
            let tag = u16::from_le_bytes([c[0], c[1]]);
            let perm = u16::from_le_bytes([c[2], c[3]]);
            let id = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
            if !matches!(tag, USER_OBJ | USER | GROUP_OBJ | GROUP | MASK | OTHER) || perm > 7 {
                return None;
            }
            entries.push(Entry { tag, perm, id });
        }
        let count = |t| entries.iter().filter(|e| e.tag == t).count();
        let named = count(USER) + count(GROUP);
        if count(USER_OBJ) != 1
            || count(GROUP_OBJ) != 1
            || count(OTHER) != 1
            || count(MASK) > 1
            || (named > 0 && count(MASK) != 1)
        {
            return None;
        }
        Some(Acl(entries))
    }

    /// The xattr value.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = VERSION.to_le_bytes().to_vec();
        for e in &self.0 {
            b.extend_from_slice(&e.tag.to_le_bytes());
            b.extend_from_slice(&e.perm.to_le_bytes());
            b.extend_from_slice(&e.id.to_le_bytes());
        }
        b
    }

    /// Whether the mode bits say everything this ACL says (only the three base entries).
    pub fn is_minimal(&self) -> bool {
        self.0
            .iter()
            .all(|e| matches!(e.tag, USER_OBJ | GROUP_OBJ | OTHER))
    }

    /// The rwx bits of the mode this ACL implies (owner, mask or group, other).
    pub fn mode_bits(&self) -> u32 {
        let get = |t: u16| {
            self.0
                .iter()
                .find(|e| e.tag == t)
                .map_or(0, |e| u32::from(e.perm))
        };
        let group = if self.0.iter().any(|e| e.tag == MASK) {
            get(MASK)
        } else {
            get(GROUP_OBJ)
        };
        (get(USER_OBJ) << 6) | (group << 3) | get(OTHER)
    }

    /// Rewrite the owner, mask (or group) and other entries from `mode` (a chmod).
    pub fn chmod(&mut self, mode: u32) {
        let has_mask = self.0.iter().any(|e| e.tag == MASK);
        for e in &mut self.0 {
            match e.tag {
                USER_OBJ => e.perm = ((mode >> 6) & 7) as u16,
                MASK => e.perm = ((mode >> 3) & 7) as u16,
                GROUP_OBJ if !has_mask => e.perm = ((mode >> 3) & 7) as u16,
                OTHER => e.perm = (mode & 7) as u16,
                _ => {}
            }
        }
    }

    /// Mask the owner, mask (or group) and other entries by `mode` (posix_acl_create).
    fn mask_by(&mut self, mode: u32) {
        let has_mask = self.0.iter().any(|e| e.tag == MASK);
        for e in &mut self.0 {
            match e.tag {
                USER_OBJ => e.perm &= ((mode >> 6) & 7) as u16,
                MASK => e.perm &= ((mode >> 3) & 7) as u16,
                GROUP_OBJ if !has_mask => e.perm &= ((mode >> 3) & 7) as u16,
                OTHER => e.perm &= (mode & 7) as u16,
                _ => {}
            }
        }
    }
}

/// What a new entry gets in a directory with the default ACL `default`: its mode, its access
/// ACL (none when the mode says it all) and, for a directory, its own default ACL.
pub fn inherit(default: &Acl, perm: u32, is_dir: bool) -> (u32, Option<Acl>, Option<Acl>) {
    let mut access = default.clone();
    access.mask_by(perm);
    let perm = (perm & !0o777) | access.mode_bits();
    let access = (!access.is_minimal()).then_some(access);
    (perm, access, is_dir.then(|| default.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Acl {
        Acl(entries
            .iter()
            .map(|&(tag, perm, id)| Entry { tag, perm, id })
            .collect())
    }

    #[test]
    fn round_trip_and_validation() {
        let a = acl(&[
            (USER_OBJ, 6, 0),
            (USER, 6, 1001),
            (GROUP_OBJ, 4, 0),
            (MASK, 6, 0),
            (OTHER, 0, 0),
        ]);
        assert_eq!(Acl::parse(&a.to_bytes()), Some(a.clone()));
        assert_eq!(a.mode_bits(), 0o660);
        // A named entry needs a mask.
        let bad = acl(&[
            (USER_OBJ, 6, 0),
            (USER, 6, 1001),
            (GROUP_OBJ, 4, 0),
            (OTHER, 0, 0),
        ]);
        assert_eq!(Acl::parse(&bad.to_bytes()), None);
        assert_eq!(Acl::parse(&[1, 2, 3]), None);
    }

    #[test]
    fn inheritance_masks_by_the_create_mode() {
        let d = acl(&[
            (USER_OBJ, 7, 0),
            (USER, 7, 1001),
            (GROUP_OBJ, 5, 0),
            (MASK, 7, 0),
            (OTHER, 5, 0),
        ]);
        let (perm, access, default) = inherit(&d, 0o644, false);
        assert_eq!(perm, 0o644);
        let access = access.unwrap();
        assert!(access.0.contains(&Entry {
            tag: MASK,
            perm: 4,
            id: 0
        }));
        assert!(default.is_none());
        let (_, _, default) = inherit(&d, 0o755, true);
        assert_eq!(default, Some(d));
    }
}
