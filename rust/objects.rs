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

/// A new instance of `cls` with the attributes of `template`, then `fields`,
/// set. `cls` must be a plain class (a `__dict__`, no `__setattr__` of its own).
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
    // Attribute by attribute, so the instance keeps the class's shared-key
    // layout (assigning a whole __dict__ would give it a private one).
    for (key, value) in template.iter() {
        set_attr(&obj, &key, &value)?;
    }
    for (key, value) in fields {
        set_attr(&obj, key, value)?;
    }
    Ok(obj)
}

fn set_attr(obj: &Bound<'_, PyAny>, key: &Bound<'_, PyAny>, value: &Bound<'_, PyAny>) -> PyResult<()> {
    // SAFETY: live objects; GenericSetAttr skips the class's __setattr__ lookup,
    // which these plain classes don't override.
    let status = unsafe { ffi::PyObject_GenericSetAttr(obj.as_ptr(), key.as_ptr(), value.as_ptr()) };
    if status != 0 {
        return Err(PyErr::take(obj.py()).unwrap_or_else(|| PyTypeError::new_err("could not set an attribute")));
    }
    Ok(())
}
