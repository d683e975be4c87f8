//! Buffers that go back to a per-thread shelf when dropped, so the heads a
//! request path builds and parses (the backend's request head, a response
//! head and its field positions) cost no allocation once a serving thread
//! has seen a few requests. A shelf keeps at most [`SHELF`] buffers of at
//! most [`KEEP`] bytes of room each: a large head's room is let go of.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};
use std::thread::LocalKey;

/// Buffers kept per thread and type.
const SHELF: usize = 64;
/// The most room a kept buffer may have, in bytes.
const KEEP: usize = 16 * 1024;

/// A buffer type with a per-thread shelf.
pub trait Shelved: Default + 'static {
    /// This type's shelf.
    fn shelf() -> &'static LocalKey<RefCell<Vec<Self>>>;
    /// Empties the buffer, keeping its room.
    fn clear(&mut self);
    /// Its room, in bytes.
    fn room(&self) -> usize;
}

impl Shelved for Vec<u8> {
    fn shelf() -> &'static LocalKey<RefCell<Vec<Self>>> {
        thread_local! {
            static SHELF: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
        }
        &SHELF
    }

    fn clear(&mut self) {
        Vec::clear(self);
    }

    fn room(&self) -> usize {
        self.capacity()
    }
}

/// A buffer from this thread's shelf, put back when dropped.
pub struct Reused<T: Shelved>(T);

impl<T: Shelved> Reused<T> {
    /// An empty buffer: one from the shelf, or a new one.
    pub fn take() -> Self {
        Self(T::shelf().with_borrow_mut(Vec::pop).unwrap_or_default())
    }
}

impl<T: Shelved> Default for Reused<T> {
    fn default() -> Self {
        Self::take()
    }
}

impl<T: Shelved> Deref for Reused<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: Shelved> DerefMut for Reused<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T: Shelved> Drop for Reused<T> {
    fn drop(&mut self) {
        let mut value = std::mem::take(&mut self.0);
        if value.room() == 0 || value.room() > KEEP {
            return;
        }
        value.clear();
        let _ = T::shelf().try_with(|shelf| {
            let mut shelf = shelf.borrow_mut();
            if shelf.len() < SHELF {
                shelf.push(value);
            }
        });
    }
}

impl<T: Shelved + std::fmt::Debug> std::fmt::Debug for Reused<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_dropped_comes_back_empty_with_its_room() {
        let mut first: Reused<Vec<u8>> = Reused::take();
        first.extend_from_slice(b"hello");
        let room = first.capacity();
        let at = first.as_ptr();
        drop(first);
        let second: Reused<Vec<u8>> = Reused::take();
        assert!(second.is_empty());
        assert_eq!((second.capacity(), second.as_ptr()), (room, at));
    }

    #[test]
    fn a_large_buffer_is_let_go_of() {
        let mut big: Reused<Vec<u8>> = Reused::take();
        big.reserve(KEEP + 1);
        let at = big.as_ptr();
        drop(big);
        let next: Reused<Vec<u8>> = Reused::take();
        assert_ne!(next.as_ptr(), at);
    }
}
