//! The request table: sequences stored in a slab (stable slot indices, reused after removal)
//! with an id -> slot index. The per-step paths (the running list, plan rows, update) address
//! sequences by slot, so a decode step does no hashing per row.

use std::ops::Index;

use crate::id_map::IdMap;
use crate::sequence::{RequestId, Sequence};

#[derive(Default)]
pub struct SeqTable {
    slots: Vec<Option<Sequence>>,
    free: Vec<usize>,
    index: IdMap<RequestId, usize>,
}

impl SeqTable {
    /// Store a sequence (its id must be new) and return its slot.
    pub fn insert(&mut self, id: RequestId, seq: Sequence) -> usize {
        debug_assert_eq!(id, seq.id);
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s] = Some(seq);
                s
            }
            None => {
                self.slots.push(Some(seq));
                self.slots.len() - 1
            }
        };
        self.index.insert(id, slot);
        slot
    }

    pub fn remove(&mut self, id: &RequestId) -> Option<Sequence> {
        let slot = self.index.remove(id)?;
        self.free.push(slot);
        self.slots[slot].take()
    }

    pub fn slot_of(&self, id: &RequestId) -> Option<usize> {
        self.index.get(id).copied()
    }

    pub fn get(&self, id: &RequestId) -> Option<&Sequence> {
        self.slot_of(id).and_then(|s| self.slots[s].as_ref())
    }

    pub fn get_mut(&mut self, id: &RequestId) -> Option<&mut Sequence> {
        let slot = self.slot_of(id)?;
        self.slots[slot].as_mut()
    }

    /// The sequence in `slot` (panics if the slot is empty).
    #[inline]
    pub fn at(&self, slot: usize) -> &Sequence {
        self.slots[slot].as_ref().expect("occupied slot")
    }

    #[inline]
    pub fn at_mut(&mut self, slot: usize) -> &mut Sequence {
        self.slots[slot].as_mut().expect("occupied slot")
    }

    /// The sequence in `slot` if it is still request `id` (it may have been removed and reused).
    #[inline]
    pub fn at_if(&mut self, slot: usize, id: RequestId) -> Option<&mut Sequence> {
        self.slots.get_mut(slot)?.as_mut().filter(|s| s.id == id)
    }

    pub fn at_if_ref(&self, slot: usize, id: RequestId) -> Option<&Sequence> {
        self.slots.get(slot)?.as_ref().filter(|s| s.id == id)
    }

    pub fn contains_key(&self, id: &RequestId) -> bool {
        self.index.contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn values(&self) -> impl Iterator<Item = &Sequence> {
        self.slots.iter().flatten()
    }

    pub fn keys(&self) -> impl Iterator<Item = &RequestId> {
        self.index.keys()
    }
}

impl Index<&RequestId> for SeqTable {
    type Output = Sequence;

    fn index(&self, id: &RequestId) -> &Sequence {
        self.get(id).expect("known request id")
    }
}
