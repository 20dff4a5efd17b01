//! Building plain Python objects without running their `__init__`.
//!
//! The request `dispatch` sees and the response `call_next` returns are made
//! once per request per layer. Their classes are ordinary Python classes whose
//! `__init__` only stores attributes, so we allocate the instance and give it a
//! ready `__dict__` directly: no Python frame, no argument parsing.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyType};

/// A new instance of `cls` with the attributes of `template`, then `fields`,
/// set. `cls` must be a plain class with a `__dict__` (no `__slots__`).
pub fn instantiate<'py>(
    cls: &Bound<'py, PyType>,
    template: &Bound<'py, PyDict>,
    fields: &[(&Bound<'py, PyString>, &Bound<'py, PyAny>)],
) -> PyResult<Bound<'py, PyAny>> {
    let py = cls.py();
    // SAFETY: `tp_alloc` is the allocator the class itself uses in
    // `object.__new__`; it returns a new reference or NULL with an exception.
    let obj = unsafe {
        let tp = cls.as_type_ptr();
        let alloc = (*tp).tp_alloc.unwrap_or(ffi::PyType_GenericAlloc);
        Bound::from_owned_ptr_or_err(py, alloc(tp, 0))?
    };
    // Straight into the instance's own __dict__: no per-attribute lookup of
    // the class (which `setattr` does, and which can miss the interpreter's
    // method cache when names collide there).
    // SAFETY: a live instance of a class with a __dict__; returns a new
    // reference to that dict or NULL with an exception.
    let attrs = unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyObject_GenericGetDict(obj.as_ptr(), std::ptr::null_mut()))? }
        .cast_into::<PyDict>()
        .map_err(PyErr::from)?;
    for (key, value) in template.iter() {
        attrs.set_item(key, value)?;
    }
    for (key, value) in fields {
        attrs.set_item(key, value)?;
    }
    Ok(obj)
}
