//! Building plain Python objects without running their `__init__`.
//!
//! The request `dispatch` sees and the response `call_next` returns are made
//! once per request per layer. Their classes are ordinary Python classes whose
//! `__init__` only stores attributes, so we allocate the instance and fill its
//! `__dict__` directly: no Python frame, no argument parsing.
//!
//! The `__dict__` is filled from a prepared dict that already has every key (a
//! "shape"): an empty dict updated from one is one block copy of its table,
//! and setting the per-instance values then only replaces entries, where
//! inserting them one by one into an empty dict would grow and rehash it on
//! the way.
//!
//! All of it is public C API (`tp_alloc`, `PyDict_Copy` and
//! `PyObject_GenericSetDict`, or `PyObject_GenericGetDict` and
//! `PyDict_Update`). Instance dicts are where CPython keeps changing things:
//! on 3.13.0 (inline values) a dict given with `PyObject_GenericSetDict` leaves
//! the attributes unreachable. So each shape checks once, when it is made,
//! that an instance built one way reads back what was put in it, and takes
//! the first way that does: the copied dict set as the instance's (the
//! cheapest: one block copy, no insertion), the instance's own dict updated
//! from the shape's (3.13), or the slow, ordinary way.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyType};

/// How instances are built, cheapest first; a shape takes the first that
/// passes its check.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Way {
    /// `tp_alloc`, then a copy of the shape's dict set as the instance's.
    SetCopy,
    /// `tp_alloc`, then the instance's own dict updated from the shape's.
    UpdateOwn,
    /// `object.__new__` and `setattr`, as an `__init__` would store them.
    Setattr,
}

/// How to build instances of one class: its attributes, and the way that
/// passed its check.
pub struct Shape {
    cls: Py<PyType>,
    attrs: Py<PyDict>,
    way: Way,
}

impl Shape {
    /// A shape for instances of `cls` that get `defaults` plus the
    /// per-instance `fields` (None until `instantiate` sets them). `cls` must
    /// be a plain class with a `__dict__` (no `__slots__`).
    pub fn new(cls: &Bound<'_, PyType>, defaults: Option<&Bound<'_, PyDict>>, fields: &[&str]) -> PyResult<Self> {
        let py = cls.py();
        let attrs = PyDict::new(py);
        if let Some(defaults) = defaults {
            attrs.update(defaults.as_mapping())?;
        }
        for name in fields {
            attrs.set_item(PyString::intern(py, name), py.None())?;
        }
        let mut shape = Shape { cls: cls.clone().unbind(), attrs: attrs.unbind(), way: Way::SetCopy };
        for way in [Way::SetCopy, Way::UpdateOwn, Way::Setattr] {
            shape.way = way;
            if way == Way::Setattr || shape.reads_back(py, fields)? {
                break;
            }
        }
        Ok(shape)
    }

    /// Whether the shape's way works on this interpreter: an instance built
    /// with a fresh object in each field finds each of them as its attribute.
    fn reads_back(&self, py: Python<'_>, fields: &[&str]) -> PyResult<bool> {
        let names: Vec<Bound<'_, PyString>> = fields.iter().map(|name| PyString::intern(py, name)).collect();
        let values: Vec<Bound<'_, PyAny>> =
            names.iter().map(|_| py.eval(c"object()", None, None)).collect::<PyResult<_>>()?;
        let set: Vec<_> = names.iter().zip(&values).collect();
        let obj = self.instantiate(py, &set)?;
        for (name, value) in set {
            match obj.getattr(name) {
                Ok(found) if found.is(value) => {}
                _ => return Ok(false),
            }
        }
        Ok(true)
    }

    /// Whether instances are built directly (a direct way passed its check).
    pub fn is_direct(&self) -> bool {
        self.way != Way::Setattr
    }

    /// A new instance with the shape's attributes and `fields` set.
    pub fn instantiate<'py>(
        &self,
        py: Python<'py>,
        fields: &[(&Bound<'py, PyString>, &Bound<'py, PyAny>)],
    ) -> PyResult<Bound<'py, PyAny>> {
        let cls = self.cls.bind(py);
        if self.way == Way::Setattr {
            let obj = cls.call_method1(pyo3::intern!(py, "__new__"), (cls,))?;
            for (key, value) in self.attrs.bind(py).iter() {
                obj.setattr(key.cast_into::<PyString>()?, value)?;
            }
            for (key, value) in fields {
                obj.setattr(*key, *value)?;
            }
            return Ok(obj);
        }
        // SAFETY: `tp_alloc` is the allocator the class itself uses in
        // `object.__new__`; it returns a new reference or NULL with an exception.
        let obj = unsafe {
            let tp = cls.as_type_ptr();
            let alloc = (*tp).tp_alloc.unwrap_or(ffi::PyType_GenericAlloc);
            Bound::from_owned_ptr_or_err(py, alloc(tp, 0))?
        };
        let attrs = match self.way {
            Way::SetCopy => {
                let attrs = self.attrs.bind(py).copy()?;
                // SAFETY: a live object whose type has a `__dict__`, and a dict;
                // 0, or -1 with an exception.
                if unsafe { ffi::PyObject_GenericSetDict(obj.as_ptr(), attrs.as_ptr(), std::ptr::null_mut()) } != 0 {
                    return Err(PyErr::fetch(py));
                }
                attrs
            }
            _ => {
                let attrs = instance_dict(&obj)?;
                attrs.update(self.attrs.bind(py).as_mapping())?;
                attrs
            }
        };
        for (key, value) in fields {
            attrs.set_item(key, value)?;
        }
        Ok(obj)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn class<'py>(py: Python<'py>) -> Bound<'py, PyType> {
        let globals = PyDict::new(py);
        py.run(
            c"class Plain:\n    kind = 'class'\n    def __init__(self):\n        self.a = self.b = None\n",
            Some(&globals),
            None,
        )
        .unwrap();
        let cls = globals.get_item("Plain").unwrap().unwrap().cast_into::<PyType>().unwrap();
        cls.call0().unwrap(); // as the real classes are, before the layer builds any
        cls
    }

    #[test]
    fn both_ways_build_the_same_instance() {
        Python::initialize();
        Python::attach(|py| {
            let defaults = PyDict::new(py);
            defaults.set_item("flag", true).unwrap();
            let mut shape = Shape::new(&class(py), Some(&defaults), &["a", "b"]).unwrap();
            assert!(shape.is_direct(), "no direct way passes its check on this CPython");
            let checked = shape.way;
            for way in [checked, Way::UpdateOwn, Way::Setattr] {
                shape.way = way;
                let (a, b) = (py.eval(c"object()", None, None).unwrap(), 7i64.into_pyobject(py).unwrap().into_any());
                let obj =
                    shape.instantiate(py, &[(&PyString::new(py, "a"), &a), (&PyString::new(py, "b"), &b)]).unwrap();
                assert!(obj.getattr("a").unwrap().is(&a));
                assert_eq!(obj.getattr("b").unwrap().extract::<i64>().unwrap(), 7);
                assert!(obj.getattr("flag").unwrap().extract::<bool>().unwrap());
                assert_eq!(obj.getattr("kind").unwrap().extract::<String>().unwrap(), "class");
                let keys: Vec<String> = instance_dict(&obj).unwrap().keys().extract().unwrap();
                assert_eq!(keys, ["flag", "a", "b"]);
            }
        });
    }
}
