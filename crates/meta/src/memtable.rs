//! The memtable: acknowledged commits held in memory in front of the database, and the layered
//! read view that merges write layers over a base.
//!
//! In logged mode ([`crate::store::RedbStore::open_logged`]) a commit is made durable by its
//! redo log record alone, so it does not need a database transaction: its writes go into a
//! [`MemTable`], and a checkpoint now and then applies the memtable to the database in one
//! transaction. The protocol (when writes enter and leave the memtable, and the lock rule that
//! keeps reads consistent) is in [`crate::store`], "Logged mode".
//!
//! This module holds what does not depend on the engine: a layer is a sorted map of buffered
//! writes, where `Some(value)` is a put and `None` a delete (a tombstone, which hides the key in
//! every layer below). [`get`] and [`range`] read through layers, newest first, and then a base
//! [`ReadTxn`]. One merge serves every stack: the write set of a commit over the memtable over
//! the database, and any other buffered writes over a transaction (as [`crate::overlay`] does
//! with one layer).
//!
//! [`range`] streams: it walks the layers' entries in key order alongside pages of base rows,
//! so a small `limit` costs little even when the layers hold many entries in the range (a
//! directory of fresh files). A tombstone, or a put over an existing row, uses up a base row
//! without yielding one, so the base is first asked for `limit` rows and then for pages of
//! doubling size after the last row seen, until `limit` rows are found or the base has no more.

use crate::store::{Pairs, ReadTxn, StoreError, Table};
use std::collections::btree_map;
use std::collections::BTreeMap;
use std::iter::Peekable;
use std::ops::Bound;

/// Buffered writes, in key order: `Some(value)` for a put, `None` for a delete (a tombstone).
pub type Writes = BTreeMap<(Table, Vec<u8>), Option<Vec<u8>>>;

/// An empty layer, to stand in for an absent one without allocating.
pub static EMPTY: Writes = BTreeMap::new();

/// Acknowledged writes that the database does not hold yet, with their size, so the store can
/// bound the memory they take.
#[derive(Default)]
pub struct MemTable {
    rows: Writes,
    bytes: usize,
}

impl MemTable {
    /// An empty memtable.
    pub fn new() -> Self {
        Self::default()
    }

    /// The buffered writes, for reads through [`get`] and [`range`] and for the checkpoint that
    /// applies them.
    pub fn rows(&self) -> &Writes {
        &self.rows
    }

    /// Number of keys held (puts and tombstones).
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Bytes of keys and values held: the measure of the store's memory bound (the map's own
    /// overhead comes on top).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Add a later commit's writes: each replaces what the memtable held for its key.
    pub fn merge(&mut self, writes: Writes) {
        for (key, value) in writes {
            let (klen, vlen) = (key.1.len(), value.as_ref().map_or(0, Vec::len));
            match self.rows.insert(key, value) {
                Some(old) => {
                    self.bytes = self.bytes - old.map_or(0, |v| v.len()) + vlen;
                }
                None => self.bytes += klen + vlen,
            }
        }
    }
}

/// Buffer a put (`Some`) or a delete (`None`, a tombstone) of a transaction's own writes.
pub fn buffer(writes: &mut Writes, table: Table, key: &[u8], value: Option<&[u8]>) {
    writes.insert((table, key.to_vec()), value.map(<[u8]>::to_vec));
}

/// The value under `key` as seen through `layers` (newest first) over `base`: the newest layer
/// that holds the key decides; a tombstone means absent.
pub fn get(
    layers: &[&Writes],
    base: &dyn ReadTxn,
    table: Table,
    key: &[u8],
) -> Result<Option<Vec<u8>>, StoreError> {
    if layers.iter().all(|l| l.is_empty()) {
        return base.get(table, key);
    }
    let k = (table, key.to_vec());
    for layer in layers {
        if let Some(v) = layer.get(&k) {
            return Ok(v.clone());
        }
    }
    base.get(table, key)
}

/// Up to `limit` pairs with `start <= key < end`, in key order, as seen through `layers`
/// (newest first) over `base` (see the module doc for how the base is paged).
pub fn range(
    layers: &[&Writes],
    base: &dyn ReadTxn,
    table: Table,
    start: &[u8],
    end: &[u8],
    limit: usize,
) -> Result<Pairs, StoreError> {
    if start >= end || limit == 0 {
        return Ok(Vec::new());
    }
    let lo = (table, start.to_vec());
    let hi = (table, end.to_vec());
    let mut upper = Merge {
        iters: layers
            .iter()
            .map(|l| {
                l.range::<(Table, Vec<u8>), _>((Bound::Included(&lo), Bound::Excluded(&hi)))
                    .peekable()
            })
            .collect(),
    }
    .peekable();
    if upper.peek().is_none() {
        return base.range(table, start, end, limit);
    }
    let mut page = limit;
    let mut rows = Page::fetch(base, table, start, end, page)?;
    let mut out = Vec::new();
    while out.len() < limit {
        if rows.rows.peek().is_none() {
            if let Some(resume) = rows.resume.take() {
                page = page.saturating_mul(2);
                rows = Page::fetch(base, table, &resume, end, page)?;
            }
        }
        let take_upper = match (upper.peek(), rows.rows.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some((u, _)), Some((b, _))) => *u <= b.as_slice(),
        };
        if take_upper {
            let Some((k, v)) = upper.next() else { break };
            // The layer's entry replaces or hides the base row under the same key.
            if rows.rows.peek().is_some_and(|(b, _)| b.as_slice() == k) {
                rows.rows.next();
            }
            if let Some(v) = v {
                out.push((k.to_vec(), v.to_vec()));
            }
        } else if let Some(row) = rows.rows.next() {
            out.push(row);
        }
    }
    Ok(out)
}

/// One page of base rows, and where the next page starts if the base may hold more.
struct Page {
    rows: Peekable<std::vec::IntoIter<(Vec<u8>, Vec<u8>)>>,
    resume: Option<Vec<u8>>,
}

impl Page {
    fn fetch(
        base: &dyn ReadTxn,
        table: Table,
        start: &[u8],
        end: &[u8],
        page: usize,
    ) -> Result<Page, StoreError> {
        let rows = base.range(table, start, end, page)?;
        // A full page may be followed by more rows: the next page starts just after its last
        // key (the key with a zero byte appended is the least key above it).
        let resume = match rows.last() {
            Some((k, _)) if rows.len() == page => {
                let mut r = k.clone();
                r.push(0);
                Some(r)
            }
            _ => None,
        };
        Ok(Page {
            rows: rows.into_iter().peekable(),
            resume,
        })
    }
}

/// One layer's entries in a key range.
type LayerIter<'a> = Peekable<btree_map::Range<'a, (Table, Vec<u8>), Option<Vec<u8>>>>;

/// The entries of several layers in key order, each key once, from the newest layer holding it.
struct Merge<'a> {
    iters: Vec<LayerIter<'a>>,
}

impl<'a> Iterator for Merge<'a> {
    type Item = (&'a [u8], Option<&'a [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        // The least key; on a tie the first (newest) layer, as `<` keeps the earlier one.
        let mut best: Option<(usize, &'a Vec<u8>)> = None;
        for (i, it) in self.iters.iter_mut().enumerate() {
            if let Some((k, _)) = it.peek() {
                let k: &'a (Table, Vec<u8>) = k;
                if best.is_none_or(|(_, b)| k.1 < *b) {
                    best = Some((i, &k.1));
                }
            }
        }
        let (top, key) = best?;
        let (_, value) = self.iters[top].next()?;
        // Older layers' entries under the same key are hidden by the newest one.
        for it in &mut self.iters {
            if it.peek().is_some_and(|(k, _)| k.1 == *key) {
                it.next();
            }
        }
        Some((key.as_slice(), value.as_deref()))
    }
}

/// A read view of write layers (newest first) over a base transaction.
pub struct Layered<'a> {
    layers: &'a [&'a Writes],
    base: &'a dyn ReadTxn,
}

impl<'a> Layered<'a> {
    /// Read through `layers`, newest first, then `base`.
    pub fn new(layers: &'a [&'a Writes], base: &'a dyn ReadTxn) -> Self {
        Layered { layers, base }
    }
}

impl ReadTxn for Layered<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        get(self.layers, self.base, table, key)
    }

    fn range(
        &self,
        table: Table,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Pairs, StoreError> {
        range(self.layers, self.base, table, start, end, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::cell::Cell;

    /// A base of committed rows that counts the range calls made on it.
    #[derive(Default)]
    struct Base {
        rows: BTreeMap<(Table, Vec<u8>), Vec<u8>>,
        calls: Cell<usize>,
    }

    impl ReadTxn for Base {
        fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(self.rows.get(&(table, key.to_vec())).cloned())
        }
        fn range(
            &self,
            table: Table,
            start: &[u8],
            end: &[u8],
            limit: usize,
        ) -> Result<Pairs, StoreError> {
            self.calls.set(self.calls.get() + 1);
            if start >= end {
                return Ok(Vec::new());
            }
            Ok(self
                .rows
                .range((table, start.to_vec())..(table, end.to_vec()))
                .take(limit)
                .map(|((_, k), v)| (k.clone(), v.clone()))
                .collect())
        }
    }

    fn put(w: &mut Writes, t: Table, k: &str, v: &str) {
        w.insert((t, k.as_bytes().to_vec()), Some(v.as_bytes().to_vec()));
    }

    fn del(w: &mut Writes, t: Table, k: &str) {
        w.insert((t, k.as_bytes().to_vec()), None);
    }

    fn strs(p: Pairs) -> Vec<(String, String)> {
        p.into_iter()
            .map(|(k, v)| (String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap()))
            .collect()
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const T: Table = Table::Dentries;

    /// Three layers (a commit's writes, the active memtable, a frozen one) over a base: each
    /// key's value comes from the newest layer holding it, and tombstones hide older rows.
    fn stack() -> (Writes, Writes, Writes, Base) {
        let mut base = Base::default();
        for k in ["a", "b", "c", "d", "e", "f"] {
            base.rows
                .insert((T, k.as_bytes().to_vec()), format!("base-{k}").into_bytes());
        }
        // Another table's rows, which must never show up.
        base.rows
            .insert((Table::Inodes, b"c".to_vec()), b"other".to_vec());
        let mut frozen = Writes::new();
        del(&mut frozen, T, "b");
        put(&mut frozen, T, "c", "frozen-c");
        put(&mut frozen, T, "g", "frozen-g");
        del(&mut frozen, T, "h");
        let mut active = Writes::new();
        put(&mut active, T, "b", "active-b");
        del(&mut active, T, "c");
        del(&mut active, T, "d");
        put(&mut active, T, "h", "active-h");
        let mut own = Writes::new();
        put(&mut own, T, "c", "own-c");
        del(&mut own, T, "e");
        del(&mut own, T, "g");
        put(&mut own, Table::Inodes, "d", "other");
        (own, active, frozen, base)
    }

    #[test]
    fn get_takes_the_newest_layer_holding_the_key() {
        let (own, active, frozen, base) = stack();
        let layers = [&own, &active, &frozen];
        let v = Layered::new(&layers, &base);
        let get = |k: &str| {
            v.get(T, k.as_bytes())
                .unwrap()
                .map(|v| String::from_utf8(v).unwrap())
        };
        assert_eq!(get("a").as_deref(), Some("base-a"));
        assert_eq!(get("b").as_deref(), Some("active-b")); // put over a frozen tombstone
        assert_eq!(get("c").as_deref(), Some("own-c")); // put over an active tombstone
        assert_eq!(get("d"), None); // active tombstone over a base row
        assert_eq!(get("e"), None); // own tombstone over a base row
        assert_eq!(get("f").as_deref(), Some("base-f"));
        assert_eq!(get("g"), None); // own tombstone over a frozen put
        assert_eq!(get("h").as_deref(), Some("active-h")); // active put over a frozen tombstone
        assert_eq!(get("z"), None);
        // Without the commit's own layer, the memtable's view shows through.
        let layers = [&active, &frozen];
        let v = Layered::new(&layers, &base);
        assert_eq!(v.get(T, b"c").unwrap(), None);
        assert_eq!(v.get(T, b"e").unwrap(), Some(b"base-e".to_vec()));
        assert_eq!(v.get(T, b"g").unwrap(), Some(b"frozen-g".to_vec()));
    }

    #[test]
    fn range_merges_layers_in_key_order() {
        let (own, active, frozen, base) = stack();
        let layers = [&own, &active, &frozen];
        let v = Layered::new(&layers, &base);
        let all = strs(v.range(T, b"", b"zz", usize::MAX).unwrap());
        assert_eq!(
            all,
            pairs(&[
                ("a", "base-a"),
                ("b", "active-b"),
                ("c", "own-c"),
                ("f", "base-f"),
                ("h", "active-h"),
            ])
        );
        // Bounds: start inclusive, end exclusive, other tables never mixed in.
        let mid = strs(v.range(T, b"b", b"f", usize::MAX).unwrap());
        assert_eq!(mid, pairs(&[("b", "active-b"), ("c", "own-c")]));
        assert!(v.range(T, b"d", b"f", 10).unwrap().is_empty());
        assert!(v.range(T, b"f", b"b", 10).unwrap().is_empty());
        assert!(v.range(T, b"b", b"b", 10).unwrap().is_empty());
        assert!(v.range(T, b"a", b"z", 0).unwrap().is_empty());
    }

    #[test]
    fn range_limit_counts_only_rows_that_survive_tombstones() {
        let mut base = Base::default();
        for i in 0..100 {
            base.rows
                .insert((T, format!("k{i:03}").into_bytes()), b"base".to_vec());
        }
        // The first 40 base rows are deleted in the memtable, and 10 more in a commit.
        let mut active = Writes::new();
        for i in 0..40 {
            del(&mut active, T, &format!("k{i:03}"));
        }
        let mut own = Writes::new();
        for i in 40..50 {
            del(&mut own, T, &format!("k{i:03}"));
        }
        let layers = [&own, &active];
        let v = Layered::new(&layers, &base);
        let got = strs(v.range(T, b"k", b"l", 3).unwrap());
        assert_eq!(
            got,
            pairs(&[("k050", "base"), ("k051", "base"), ("k052", "base")])
        );
        // The base was paged (3, 6, 12, 24, 48 rows) rather than read whole.
        assert!(base.calls.get() > 1, "{}", base.calls.get());
        // Everything deleted: nothing, and no endless paging.
        for i in 50..100 {
            del(&mut own, T, &format!("k{i:03}"));
        }
        let layers = [&own, &active];
        let v = Layered::new(&layers, &base);
        assert!(v.range(T, b"k", b"l", 1).unwrap().is_empty());
    }

    #[test]
    fn memtable_merge_keeps_the_newest_write_and_counts_bytes() {
        let mut m = MemTable::new();
        let mut w = Writes::new();
        put(&mut w, T, "ab", "1234");
        del(&mut w, T, "c");
        m.merge(w);
        assert_eq!((m.len(), m.bytes()), (2, 2 + 4 + 1));
        let mut w = Writes::new();
        del(&mut w, T, "ab");
        put(&mut w, T, "c", "xy");
        m.merge(w);
        assert_eq!((m.len(), m.bytes()), (2, 2 + 1 + 2));
        assert_eq!(m.rows().get(&(T, b"ab".to_vec())), Some(&None));
        assert_eq!(
            m.rows().get(&(T, b"c".to_vec())),
            Some(&Some(b"xy".to_vec()))
        );
    }

    /// Random stacks against a plain model: apply the layers oldest first onto a copy of the
    /// base, then compare every get and many ranges with limits.
    #[test]
    fn random_stacks_agree_with_a_flattened_model() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _round in 0..300 {
            let key = |rng: &mut rand::rngs::StdRng| vec![b'a' + rng.random_range(0..12u8)];
            let mut base = Base::default();
            for _ in 0..rng.random_range(0..12) {
                let k = key(&mut rng);
                base.rows.insert((T, k), vec![b'0']);
            }
            let mut layers: Vec<Writes> = Vec::new();
            for depth in 0..rng.random_range(0..4) {
                let mut w = Writes::new();
                for _ in 0..rng.random_range(0..10) {
                    let k = key(&mut rng);
                    let v = rng.random_bool(0.5).then(|| vec![b'1' + depth as u8]);
                    w.insert((T, k), v);
                }
                layers.push(w);
            }
            // The model: oldest layer (last) first.
            let mut model: BTreeMap<Vec<u8>, Vec<u8>> = base
                .rows
                .iter()
                .map(|((_, k), v)| (k.clone(), v.clone()))
                .collect();
            for w in layers.iter().rev() {
                for ((_, k), v) in w {
                    match v {
                        Some(v) => model.insert(k.clone(), v.clone()),
                        None => model.remove(k),
                    };
                }
            }
            let refs: Vec<&Writes> = layers.iter().collect();
            let v = Layered::new(&refs, &base);
            for c in b'a'..b'a' + 13 {
                assert_eq!(v.get(T, &[c]).unwrap(), model.get(&vec![c]).cloned());
            }
            for _ in 0..20 {
                let (s, e) = (key(&mut rng), key(&mut rng));
                let limit = rng.random_range(0..8);
                let want: Pairs = if s < e {
                    model
                        .range(s.clone()..e.clone())
                        .take(limit)
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                } else {
                    Vec::new()
                };
                assert_eq!(
                    v.range(T, &s, &e, limit).unwrap(),
                    want,
                    "{s:?}..{e:?} {limit}"
                );
            }
        }
    }
}
