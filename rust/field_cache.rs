//! A small per-process cache of recently built header fields, for
//! `MutableHeaders.append`: `(name str, value str)` -> the validated
//! `(name bytes, value bytes)` tuple that was stored for them; and, for a
//! value seen for the first time, `name str` -> the validated name bytes.
//!
//! Why: `headers.append("Set-Cookie", "theme=dark; Path=/")` in Starlette costs
//! a few C calls, and most of ours went into allocating the two byte strings
//! and the tuple. The strings an app appends are mostly the same objects every
//! time (literals in its code), so the second append of the same pair stores
//! the very tuple built the first time. Computed values (a cookie, an id) are
//! new objects each time, but their names are still literals: the name's bytes
//! are reused, and only the value is encoded. A tuple of bytes is immutable, so
//! sharing it between header lists can't be observed except through `is`.
//!
//! Correctness: an entry is found only by the identity of *both* exact `str`
//! objects, and it holds strong references to them, so an address can't be
//! reused by another string while its entry lives; a `str` never changes, so
//! the same objects always encode to the same field. Only fields that passed
//! validation are stored. Size is bounded: `SLOTS` entries, direct-mapped (a
//! new pair evicts whatever shared its slot), and values longer than
//! `MAX_VALUE_LEN` are never kept.
//!
//! Thread safety: the table is guarded by the GIL, so it exists only on builds
//! that have one (`Py_GIL_DISABLED` builds always miss). While it is borrowed
//! nothing runs Python code or allocates GC-tracked objects (which could start a
//! collection and run finalizers): lookups only compare pointers, and evicted
//! entries are released after the borrow ends.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyTuple};

#[cfg(not(Py_GIL_DISABLED))]
pub(crate) use table::{lookup, lookup_name, store, store_name};

#[cfg(not(Py_GIL_DISABLED))]
mod table {
    use super::*;
    use std::cell::UnsafeCell;

    /// Entries in the table (a power of two).
    const SLOTS: usize = 64;

    /// Longer values aren't cached, so the table can't pin large strings.
    const MAX_VALUE_LEN: usize = 256;

    /// The two `str` objects and the field built from them.
    struct Entry {
        name: Py<PyString>,
        value: Py<PyString>,
        field: Py<PyTuple>,
    }

    /// A name `str` and its validated, lowercased latin-1 bytes.
    struct NameEntry {
        name: Py<PyString>,
        bytes: Py<PyBytes>,
    }

    struct Table<E>(UnsafeCell<[Option<E>; SLOTS]>);

    // SAFETY: only reached through `with_table`, which needs a `Python` token,
    // and on a build with a GIL (this module doesn't exist without one): the
    // GIL is held, and the closures it runs never release it.
    unsafe impl<E> Sync for Table<E> {}

    static TABLE: Table<Entry> = Table(UnsafeCell::new([const { None }; SLOTS]));
    static NAMES: Table<NameEntry> = Table(UnsafeCell::new([const { None }; SLOTS]));

    /// Runs `f` on a table. `f` must not run Python code or allocate Python objects.
    #[inline]
    fn with_table<E, R>(_py: Python<'_>, table: &'static Table<E>, f: impl FnOnce(&mut [Option<E>; SLOTS]) -> R) -> R {
        // SAFETY: see `Table`'s `Sync`; no other borrow can be alive, as `f`
        // doesn't call back into anything that could reach here.
        f(unsafe { &mut *table.0.get() })
    }

    /// An object's part in a slot number (objects are 16-byte aligned: drop the low bits).
    #[inline]
    fn addr(obj: &Bound<'_, PyString>) -> usize {
        obj.as_ptr() as usize >> 4
    }

    /// The slot for a pair of objects, from their addresses.
    #[inline]
    fn slot(name: &Bound<'_, PyString>, value: &Bound<'_, PyString>) -> usize {
        (addr(name) ^ addr(value).wrapping_mul(0x9E37_79B9)) % SLOTS
    }

    /// The field stored earlier for exactly these two `str` objects, if still cached.
    pub(crate) fn lookup<'py>(
        name: &Bound<'py, PyString>,
        value: &Bound<'py, PyString>,
    ) -> Option<Bound<'py, PyTuple>> {
        let py = name.py();
        with_table(py, &TABLE, |table| match &table[slot(name, value)] {
            Some(e) if e.name.as_ptr() == name.as_ptr() && e.value.as_ptr() == value.as_ptr() => {
                Some(e.field.bind(py).clone())
            }
            _ => None,
        })
    }

    /// Remembers `field` as the validated field for these two `str` objects.
    pub(crate) fn store(name: &Bound<'_, PyString>, value: &Bound<'_, PyString>, field: &Bound<'_, PyTuple>) {
        // SAFETY: `value` is a live str; reading its length has no side effects.
        let len = unsafe { pyo3::ffi::PyUnicode_GET_LENGTH(value.as_ptr()) } as usize;
        if len > MAX_VALUE_LEN {
            return;
        }
        let entry = Entry { name: name.clone().unbind(), value: value.clone().unbind(), field: field.clone().unbind() };
        let evicted = with_table(name.py(), &TABLE, |table| table[slot(name, value)].replace(entry));
        // The evicted entry is released only now, outside the borrow.
        drop(evicted);
    }

    /// The name bytes stored earlier for exactly this `str` object, if still cached.
    pub(crate) fn lookup_name<'py>(name: &Bound<'py, PyString>) -> Option<Bound<'py, PyBytes>> {
        let py = name.py();
        with_table(py, &NAMES, |table| match &table[addr(name) % SLOTS] {
            Some(e) if e.name.as_ptr() == name.as_ptr() => Some(e.bytes.bind(py).clone()),
            _ => None,
        })
    }

    /// Remembers `bytes` as the validated name bytes for this `str` object.
    pub(crate) fn store_name(name: &Bound<'_, PyString>, bytes: &Bound<'_, PyBytes>) {
        let entry = NameEntry { name: name.clone().unbind(), bytes: bytes.clone().unbind() };
        let evicted = with_table(name.py(), &NAMES, |table| table[addr(name) % SLOTS].replace(entry));
        drop(evicted);
    }
}

/// Free-threaded builds: no GIL to guard the table, so nothing is cached.
#[cfg(Py_GIL_DISABLED)]
pub(crate) fn lookup<'py>(_name: &Bound<'py, PyString>, _value: &Bound<'py, PyString>) -> Option<Bound<'py, PyTuple>> {
    None
}

#[cfg(Py_GIL_DISABLED)]
pub(crate) fn store(_name: &Bound<'_, PyString>, _value: &Bound<'_, PyString>, _field: &Bound<'_, PyTuple>) {}

#[cfg(Py_GIL_DISABLED)]
pub(crate) fn lookup_name<'py>(_name: &Bound<'py, PyString>) -> Option<Bound<'py, PyBytes>> {
    None
}

#[cfg(Py_GIL_DISABLED)]
pub(crate) fn store_name(_name: &Bound<'_, PyString>, _bytes: &Bound<'_, PyBytes>) {}
