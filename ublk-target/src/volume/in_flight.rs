//! Data blocks allocated for writes whose data is still on its way to the
//! data device: allocated, not yet mapped. A commit carries them into the
//! next transaction (fscore's `begin_commit_carrying`) instead of waiting
//! for the writes, so it persists them as free and a crash leaks nothing.
//!
//! A writer registers its new blocks under the same gate pass as it
//! allocates them, and unregisters them under the pass in which it maps
//! (or frees) them; the commit reads the set with the gate closed. So the
//! set the commit sees is exact: every block allocated and not mapped.

use fscore::Extent;
use std::sync::Mutex;

#[derive(Default)]
pub(crate) struct InFlightAllocations {
    extents: Mutex<Vec<Extent>>,
}

impl InFlightAllocations {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Extent>> {
        self.extents.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn register(&self, extents: &[Extent]) {
        self.lock().extend_from_slice(extents);
    }

    /// Forgets `extents` (each registered before). The set holds at most
    /// one chunk's extents per request in flight: a scan is cheap.
    pub(crate) fn unregister(&self, extents: &[Extent]) {
        if !extents.is_empty() {
            self.lock().retain(|e| !extents.contains(e));
        }
    }

    pub(crate) fn snapshot(&self) -> Vec<Extent> {
        self.lock().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unregistering_forgets_exactly_those_extents() {
        let set = InFlightAllocations::default();
        set.register(&[Extent::new(10, 2), Extent::new(40, 1)]);
        set.register(&[Extent::new(7, 3)]);
        set.unregister(&[Extent::new(40, 1), Extent::new(7, 3)]);
        assert_eq!(set.snapshot(), vec![Extent::new(10, 2)]);
        set.unregister(&[Extent::new(10, 2)]);
        assert!(set.snapshot().is_empty());
    }
}
