//! `GilCell<T>`: the mutable state of a frozen pyclass, guarded by the GIL.
//!
//! Why: a mutable (non-frozen) pyclass pays PyO3's borrow flag on every
//! `borrow()`/`borrow_mut()` and every `&mut self` method call, and on PyO3
//! 0.30 that flag is an atomic: a locked compare-exchange to take it (and a
//! locked decrement to release a shared borrow). The request path takes
//! dozens of them per layer, and they showed up as about half the samples of
//! `DriveCore::step`. Our classes are only ever touched with the GIL held, so
//! a plain `RefCell` (non-atomic counter) inside a frozen class does the
//! same job.
//!
//! Safety (GIL builds): `borrow`/`borrow_mut` require a `Python` token, proof
//! that the calling thread holds the GIL. Only one thread holds it at a time,
//! and handing it from one thread to another synchronizes (acquire/release),
//! so the `RefCell`'s counter and contents are never accessed concurrently,
//! which is what `Sync` needs. Re-entrancy on one thread (Python code called
//! while a borrow is alive, calling back in) is still caught by the `RefCell`:
//! `borrow`/`borrow_mut` panic on a conflict (PyO3 turns a panic into a
//! `PanicException` at the boundary, as a conflicting `Bound::borrow_mut`
//! did before), and `try_borrow_mut` gives a `RuntimeError` instead, as PyO3
//! does for a `&mut self` method re-entered. Code that holds a borrow must
//! not call into Python code that could reach the same object.
//!
//! Free-threaded builds (`Py_GIL_DISABLED`) have no GIL to rely on: there the
//! cell is an `RwLock` used with `try_read`/`try_write`, so a conflict fails
//! the same way instead of blocking, at the cost of the atomics this avoids.

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

#[cfg(not(Py_GIL_DISABLED))]
mod imp {
    use std::cell::RefCell;

    pub type Ref<'a, T> = std::cell::Ref<'a, T>;
    pub type RefMut<'a, T> = std::cell::RefMut<'a, T>;

    pub struct Inner<T>(RefCell<T>);

    // SAFETY: every access goes through a method taking a `Python` token (the
    // GIL is held); see the module documentation.
    unsafe impl<T: Send> Sync for Inner<T> {}

    impl<T> Inner<T> {
        pub fn new(value: T) -> Self {
            Inner(RefCell::new(value))
        }

        pub fn try_borrow(&self) -> Option<Ref<'_, T>> {
            self.0.try_borrow().ok()
        }

        pub fn try_borrow_mut(&self) -> Option<RefMut<'_, T>> {
            self.0.try_borrow_mut().ok()
        }
    }
}

#[cfg(Py_GIL_DISABLED)]
mod imp {
    use std::sync::RwLock;

    pub type Ref<'a, T> = std::sync::RwLockReadGuard<'a, T>;
    pub type RefMut<'a, T> = std::sync::RwLockWriteGuard<'a, T>;

    pub struct Inner<T>(RwLock<T>);

    impl<T> Inner<T> {
        pub fn new(value: T) -> Self {
            Inner(RwLock::new(value))
        }

        pub fn try_borrow(&self) -> Option<Ref<'_, T>> {
            self.0.try_read().ok()
        }

        pub fn try_borrow_mut(&self) -> Option<RefMut<'_, T>> {
            self.0.try_write().ok()
        }
    }
}

pub use imp::{Ref, RefMut};

/// A `RefCell` that can only be borrowed with the GIL held (see the module docs).
pub struct GilCell<T>(imp::Inner<T>);

impl<T> GilCell<T> {
    pub fn new(value: T) -> Self {
        GilCell(imp::Inner::new(value))
    }

    /// A shared borrow; panics if it is mutably borrowed.
    #[track_caller]
    pub fn borrow(&self, _py: Python<'_>) -> Ref<'_, T> {
        self.0.try_borrow().expect("ferroware: state already mutably borrowed")
    }

    /// An exclusive borrow; panics if it is borrowed.
    #[track_caller]
    pub fn borrow_mut(&self, _py: Python<'_>) -> RefMut<'_, T> {
        self.0.try_borrow_mut().expect("ferroware: state already borrowed")
    }

    /// A shared borrow, or None if it is mutably borrowed.
    pub fn try_borrow(&self, _py: Python<'_>) -> Option<Ref<'_, T>> {
        self.0.try_borrow()
    }

    /// An exclusive borrow, or a `RuntimeError` if it is borrowed (an object
    /// re-entered from Python code it is running).
    pub fn try_borrow_mut(&self, _py: Python<'_>) -> PyResult<RefMut<'_, T>> {
        self.0.try_borrow_mut().ok_or_else(|| PyRuntimeError::new_err("Already borrowed"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borrows_conflict_as_a_refcell() {
        Python::initialize();
        Python::attach(|py| {
            let cell = GilCell::new(1);
            {
                let a = cell.borrow(py);
                let b = cell.borrow(py);
                assert_eq!(*a + *b, 2);
                assert!(cell.try_borrow_mut(py).is_err());
            }
            *cell.borrow_mut(py) += 1;
            let held = cell.borrow_mut(py);
            assert!(cell.try_borrow(py).is_none());
            let err = cell.try_borrow_mut(py).err().unwrap();
            assert!(err.is_instance_of::<PyRuntimeError>(py));
            drop(held);
            assert_eq!(*cell.borrow(py), 2);
        });
    }
}
