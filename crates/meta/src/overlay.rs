//! A transaction within a transaction: buffered writes that are applied only if an operation
//! succeeds, so that many operations can share one commit (group commit) and a failed one
//! leaves no trace.

use crate::store::{Pairs, ReadTxn, StoreError, Table, WriteTxn};
use std::collections::BTreeMap;

/// Writes of one operation, buffered over the batch's transaction.
pub struct Overlay<'a> {
    base: &'a mut dyn WriteTxn,
    writes: BTreeMap<(Table, Vec<u8>), Option<Vec<u8>>>,
}

impl<'a> Overlay<'a> {
    /// Buffer writes over `base`.
    pub fn new(base: &'a mut dyn WriteTxn) -> Self {
        Overlay {
            base,
            writes: BTreeMap::new(),
        }
    }

    /// Apply the buffered writes to the batch's transaction.
    pub fn apply(self) -> Result<(), StoreError> {
        for ((t, k), v) in self.writes {
            match v {
                Some(v) => self.base.put(t, &k, &v)?,
                None => self.base.delete(t, &k)?,
            }
        }
        Ok(())
    }
}

impl ReadTxn for Overlay<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.writes.get(&(table, key.to_vec())) {
            Some(v) => Ok(v.clone()),
            None => self.base.get(table, key),
        }
    }

    fn range(
        &self,
        table: Table,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Pairs, StoreError> {
        if start >= end {
            return Ok(Vec::new());
        }
        let local: Vec<_> = self
            .writes
            .range((table, start.to_vec())..(table, end.to_vec()))
            .collect();
        if local.is_empty() {
            return self.base.range(table, start, end, limit);
        }
        // Each buffered delete can hide at most one base row: ask the base for that many more.
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = self
            .base
            .range(table, start, end, limit.saturating_add(local.len()))?
            .into_iter()
            .collect();
        for ((_, k), v) in local {
            match v {
                Some(v) => merged.insert(k.clone(), v.clone()),
                None => merged.remove(k),
            };
        }
        Ok(merged.into_iter().take(limit).collect())
    }
}

impl WriteTxn for Overlay<'_> {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.writes
            .insert((table, key.to_vec()), Some(value.to_vec()));
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), StoreError> {
        self.writes.insert((table, key.to_vec()), None);
        Ok(())
    }
}
