//! The key/value cache: for each sequence slot, each layer and each head,
//! the keys and values of every position seen so far.
//!
//! Layout `[slot][layer][head][position][head_dim]`, so attention for one
//! head of one sequence reads one contiguous block.

use crate::config::Config;

pub struct KvCache {
    n_layer: usize,
    n_head: usize,
    head_dim: usize,
    capacity: usize,
    keys: Vec<f32>,
    values: Vec<f32>,
    lens: Vec<usize>,
}

impl KvCache {
    /// A cache for `slots` sequences of up to `capacity` positions each
    /// (at most the model's context).
    pub fn new(config: &Config, slots: usize, capacity: usize) -> KvCache {
        let capacity = capacity.min(config.n_ctx);
        let size = slots * config.n_layer * config.n_embd * capacity;
        KvCache {
            n_layer: config.n_layer,
            n_head: config.n_head,
            head_dim: config.head_dim(),
            capacity,
            keys: vec![0.0; size],
            values: vec![0.0; size],
            lens: vec![0; slots],
        }
    }

    pub fn slots(&self) -> usize {
        self.lens.len()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Positions already stored for `slot`.
    pub fn len(&self, slot: usize) -> usize {
        self.lens[slot]
    }

    pub fn is_empty(&self, slot: usize) -> bool {
        self.lens[slot] == 0
    }

    /// Forgets `slot`'s sequence so a new one can start there.
    pub fn reset(&mut self, slot: usize) {
        self.lens[slot] = 0;
    }

    /// Drops the last positions of `slot` so it holds `len`.
    pub fn truncate(&mut self, slot: usize, len: usize) {
        self.lens[slot] = self.lens[slot].min(len);
    }

    pub fn reset_all(&mut self) {
        self.lens.iter_mut().for_each(|l| *l = 0);
    }

    /// Makes `to` hold a copy of `from`'s sequence (for several samples that
    /// share one prompt).
    pub fn copy_slot(&mut self, from: usize, to: usize) {
        if from == to {
            return;
        }
        let n = self.lens[from] * self.head_dim;
        for layer in 0..self.n_layer {
            for h in 0..self.n_head {
                let (src, dst) = (self.block(from, layer, h), self.block(to, layer, h));
                self.keys.copy_within(src..src + n, dst);
                self.values.copy_within(src..src + n, dst);
            }
        }
        self.lens[to] = self.lens[from];
    }

    pub(crate) fn advance(&mut self, slot: usize, by: usize) {
        self.lens[slot] += by;
    }

    fn block(&self, slot: usize, layer: usize, head: usize) -> usize {
        ((slot * self.n_layer + layer) * self.n_head + head) * self.capacity * self.head_dim
    }

    /// Stores one position's key and value rows (each `[n_head * head_dim]`).
    pub(crate) fn store(
        &mut self,
        slot: usize,
        layer: usize,
        pos: usize,
        key: &[f32],
        value: &[f32],
    ) {
        let hd = self.head_dim;
        for h in 0..self.n_head {
            let at = self.block(slot, layer, h) + pos * hd;
            self.keys[at..at + hd].copy_from_slice(&key[h * hd..(h + 1) * hd]);
            self.values[at..at + hd].copy_from_slice(&value[h * hd..(h + 1) * hd]);
        }
    }

    /// Keys and values of positions `0..len` for one head: `[len, head_dim]` each.
    pub(crate) fn head(
        &self,
        slot: usize,
        layer: usize,
        head: usize,
        len: usize,
    ) -> (&[f32], &[f32]) {
        let at = self.block(slot, layer, head);
        let n = len * self.head_dim;
        (&self.keys[at..at + n], &self.values[at..at + n])
    }
}
