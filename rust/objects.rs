//! Building plain Python objects without running their `__init__`.
//!
//! The request `dispatch` sees and the response `call_next` returns are made
//! once per request per layer. Their classes are ordinary Python classes whose
//! `__init__` only stores attributes, so we allocate the instance and give it a
//! ready `__dict__` directly: no Python frame, no argument parsing.
//!
//! The `__dict__` is a copy of a prepared dict that already has every key (a
//! "shape"): copying a dict of that size is one block copy, and setting the
//! per-instance values then only replaces entries, where inserting them one by
//! one into an empty dict would grow and rehash it on the way.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyType};

/// A shape for instances that get `defaults` plus the per-instance `fields`
/// (set to None here, to be replaced by `instantiate`).
pub fn shape<'py>(
    py: Python<'py>,
    defaults: Option<&Bound<'py, PyDict>>,
    fields: &[&str],
) -> PyResult<Bound<'py, PyDict>> {
    let shape = PyDict::new(py);
    if let Some(defaults) = defaults {
        for (key, value) in defaults.iter() {
            shape.set_item(key, value)?;
        }
    }
    for name in fields {
        shape.set_item(PyString::intern(py, name), py.None())?;
    }
    Ok(shape)
}

/// A new instance of `cls` whose `__dict__` is a copy of `shape` with
/// `fields` set. `cls` must be a plain class with a `__dict__` (no `__slots__`).
pub fn instantiate<'py>(
    cls: &Bound<'py, PyType>,
    shape: &Bound<'py, PyDict>,
    fields: &[(&Bound<'py, PyString>, &Bound<'py, PyAny>)],
) -> PyResult<Bound<'py, PyAny>> {
    let py = cls.py();
    // SAFETY: PyDict_Copy returns a new reference to a dict or NULL with an exception.
    let attrs = unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyDict_Copy(shape.as_ptr()))? };
    let attrs = attrs.cast_into::<PyDict>().map_err(PyErr::from)?;
    for (key, value) in fields {
        attrs.set_item(key, value)?;
    }
    // SAFETY: `tp_alloc` is the allocator the class itself uses in
    // `object.__new__`; it returns a new reference or NULL with an exception.
    let obj = unsafe {
        let tp = cls.as_type_ptr();
        let alloc = (*tp).tp_alloc.unwrap_or(ffi::PyType_GenericAlloc);
        Bound::from_owned_ptr_or_err(py, alloc(tp, 0))?
    };
    // SAFETY: a live instance of a class with a __dict__ and a dict to become
    // it (borrowed: the call takes its own reference); 0 or -1 with an exception.
    if unsafe { ffi::PyObject_GenericSetDict(obj.as_ptr(), attrs.as_ptr(), std::ptr::null_mut()) } != 0 {
        return Err(PyErr::fetch(py));
    }
    Ok(obj)
}

/// The `__dict__` of an instance built by `instantiate` (or any object with one).
pub fn instance_dict<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyDict>> {
    // SAFETY: returns a new reference to the dict, or NULL with an exception
    // for an object without one.
    let attrs = unsafe {
        Bound::from_owned_ptr_or_err(obj.py(), ffi::PyObject_GenericGetDict(obj.as_ptr(), std::ptr::null_mut()))?
    };
    attrs.cast_into::<PyDict>().map_err(PyErr::from)
}

/// `obj.name`, read from `attrs` (its `__dict__`) when given and found there:
/// for attributes that only ever live in the instance, this skips the lookup
/// through the class that `getattr` makes first.
pub fn own_attr<'py>(
    obj: &Bound<'py, PyAny>,
    attrs: Option<&Bound<'py, PyDict>>,
    name: &Bound<'py, PyString>,
) -> PyResult<Bound<'py, PyAny>> {
    if let Some(value) = attrs.map(|attrs| attrs.get_item(name)).transpose()?.flatten() {
        return Ok(value);
    }
    obj.getattr(name)
}
