//! A value that can be replaced while the reactors run, each reading it through a cached copy
//! that costs one atomic load per use: what lets SIGHUP change settings without a lock on the
//! hot path and without dropping a connection.
//!
//! The writer swaps the value under a lock, then bumps a version. A reader keeps an
//! `Arc` of the value it last saw and its version; it takes the lock only when the version
//! moved, i.e. once per reload per reactor.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

/// The current value, replaceable from any thread.
#[derive(Debug)]
pub struct Versioned<T> {
    version: AtomicU64,
    value: RwLock<Arc<T>>,
}

impl<T> Versioned<T> {
    /// Holds `value` as version 0.
    pub fn new(value: T) -> Versioned<T> {
        Versioned {
            version: AtomicU64::new(0),
            value: RwLock::new(Arc::new(value)),
        }
    }

    /// The current value.
    pub fn load(&self) -> Arc<T> {
        self.value
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the value; readers see it at their next [`Cached::get`].
    pub fn store(&self, value: T) {
        *self.value.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(value);
        // After the swap: a reader that sees the new version finds the new value.
        self.version.fetch_add(1, Ordering::Release);
    }

    /// A reader's copy of the current value.
    pub fn cached(&self) -> Cached<T> {
        Cached {
            version: self.version.load(Ordering::Acquire),
            value: self.load(),
        }
    }
}

/// One reader's copy of a [`Versioned`] value (one per reactor).
#[derive(Debug)]
pub struct Cached<T> {
    version: u64,
    value: Arc<T>,
}

impl<T> Cached<T> {
    /// Takes the source's value if it was replaced since the last call: one atomic load when
    /// it was not.
    pub fn refresh(&mut self, source: &Versioned<T>) {
        let version = source.version.load(Ordering::Acquire);
        if version != self.version {
            self.value = source.load();
            self.version = version;
        }
    }

    /// The value as of the last [`Cached::refresh`].
    pub fn get(&self) -> &T {
        &self.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_see_a_new_value_at_their_next_refresh() {
        let source = Versioned::new(1);
        let mut reader = source.cached();
        assert_eq!(*reader.get(), 1);
        source.store(2);
        assert_eq!(
            *reader.get(),
            1,
            "nothing changes under a reader mid-request"
        );
        reader.refresh(&source);
        assert_eq!(*reader.get(), 2);
        source.store(3);
        source.store(4);
        reader.refresh(&source);
        assert_eq!(*reader.get(), 4);
    }

    #[test]
    fn threads_converge_on_the_last_value() {
        let source = Arc::new(Versioned::new(0u64));
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let source = source.clone();
                std::thread::spawn(move || {
                    let mut reader = source.cached();
                    let mut last = 0;
                    while last != 1000 {
                        reader.refresh(&source);
                        assert!(*reader.get() >= last, "values only move forward");
                        last = *reader.get();
                        std::thread::yield_now();
                    }
                })
            })
            .collect();
        for value in 1..=1000 {
            source.store(value);
        }
        for reader in readers {
            reader.join().unwrap();
        }
    }
}
