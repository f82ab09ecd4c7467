//! A transaction within a transaction: buffered writes that are applied only if an operation
//! succeeds, so that many operations can share one commit (group commit) and a failed one
//! leaves no trace.

use crate::memtable::{self, Writes};
use crate::store::{Pairs, ReadTxn, StoreError, Table, WriteTxn};

/// Writes of one operation, buffered over the batch's transaction.
pub struct Overlay<'a> {
    base: &'a mut dyn WriteTxn,
    writes: Writes,
}

impl<'a> Overlay<'a> {
    /// Buffer writes over `base`.
    pub fn new(base: &'a mut dyn WriteTxn) -> Self {
        Overlay {
            base,
            writes: Writes::new(),
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
        memtable::get(&[&self.writes], &*self.base, table, key)
    }

    fn range(
        &self,
        table: Table,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Pairs, StoreError> {
        memtable::range(&[&self.writes], &*self.base, table, start, end, limit)
    }
}

impl WriteTxn for Overlay<'_> {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        memtable::buffer(&mut self.writes, table, key, Some(value));
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), StoreError> {
        memtable::buffer(&mut self.writes, table, key, None);
        Ok(())
    }
}
