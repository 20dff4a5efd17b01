//! Building plain Python objects without running their `__init__`.
//!
//! The request `dispatch` sees and the response `call_next` returns are made
//! once per request per layer. Their classes are ordinary Python classes whose
//! `__init__` only stores attributes, so we allocate the instance and give it a
//! ready `__dict__` directly: no Python frame, no argument parsing.

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyType};

/// A new instance of `cls` whose `__dict__` is a copy of `template` with
/// `fields` set. `cls` must be a plain class (no `__slots__`, a `__dict__`).
pub fn instantiate<'py>(
    cls: &Bound<'py, PyType>,
    template: &Bound<'py, PyDict>,
    fields: &[(&Bound<'py, PyString>, &Bound<'py, PyAny>)],
) -> PyResult<Bound<'py, PyAny>> {
    let py = cls.py();
    let attrs = template.copy()?;
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
    // SAFETY: both objects are live; GenericSetDict takes its own reference.
    let status = unsafe { ffi::PyObject_GenericSetDict(obj.as_ptr(), attrs.as_ptr(), std::ptr::null_mut()) };
    if status != 0 {
        return Err(PyErr::take(py).unwrap_or_else(|| PyTypeError::new_err("could not set the instance __dict__")));
    }
    Ok(obj)
}
