//! Read-only storage of a tensor's elements: a view into a memory-mapped
//! checkpoint (what loading prefers: no copy, pages shared between
//! processes) or a vector of its own. f32 tensors and packed bytes both
//! live in one.

use memmap2::Mmap;
use std::sync::Arc;

/// Element types that may be viewed in place in a map: any bit pattern is
/// a value.
pub trait Plain: Copy + 'static {}
impl Plain for f32 {}
impl Plain for u8 {}

#[derive(Clone)]
pub enum Storage<T: Plain> {
    /// invariant: `offset` is aligned for `T` within `map` and
    /// `offset + len * size_of::<T>() <= map.len()`; checked in
    /// [`Storage::mapped`], the only place that builds one.
    Mapped {
        map: Arc<Mmap>,
        offset: usize,
        len: usize,
    },
    Owned(Arc<Vec<T>>),
}

impl<T: Plain> Storage<T> {
    pub fn owned(values: Vec<T>) -> Self {
        Storage::Owned(Arc::new(values))
    }

    /// `len` elements in place at byte `offset` of `map`; `None` when they
    /// are not aligned for `T`, run past the map, or (for multi-byte `T`)
    /// the machine is not little-endian (the caller then copies).
    pub fn mapped(map: &Arc<Mmap>, offset: usize, len: usize) -> Option<Self> {
        let size = std::mem::size_of::<T>();
        let end = len.checked_mul(size)?.checked_add(offset)?;
        let aligned = (map.as_ptr() as usize + offset).is_multiple_of(std::mem::align_of::<T>());
        let endian_ok = size == 1 || cfg!(target_endian = "little");
        (aligned && end <= map.len() && endian_ok).then(|| Storage::Mapped {
            map: Arc::clone(map),
            offset,
            len,
        })
    }

    pub fn as_slice(&self) -> &[T] {
        match self {
            Storage::Owned(v) => v,
            Storage::Mapped { map, offset, len } => {
                // SAFETY: see the invariant on `Storage::Mapped`; `T` is
                // `Plain`, the map is read-only and outlives the borrow.
                unsafe { std::slice::from_raw_parts(map.as_ptr().add(*offset) as *const T, *len) }
            }
        }
    }

    pub fn is_mapped(&self) -> bool {
        matches!(self, Storage::Mapped { .. })
    }
}
