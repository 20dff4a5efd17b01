//! Driving Python coroutines by hand: one resume step with send or throw, and the
//! small awaitables the dispatcher hands out.
//!
//! We never wrap a downstream coroutine in a task. Whoever awaits one of our
//! awaitables lends us its own task; we step the coroutine with `send`/`throw`
//! and pass whatever it yields (asyncio futures, trio traps) straight up.

use pyo3::exceptions::PyStopIteration;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyTuple, PyType};
use pyo3::{intern, IntoPyObjectExt};
use std::sync::atomic::{AtomicBool, Ordering};

/// What a resumed coroutine did.
pub enum Step {
    /// It suspended, yielding this object to whoever drives it.
    Yield(Py<PyAny>),
    /// It finished with this value.
    Return(Py<PyAny>),
}

/// What to resume a coroutine with.
pub enum Input {
    Send(Py<PyAny>),
    Throw(PyErr),
}

impl Input {
    pub fn none(py: Python<'_>) -> Self {
        Input::Send(py.None())
    }
}

/// Resume `iter` once. Errors are the exceptions it raised (StopIteration excluded).
pub fn resume(py: Python<'_>, iter: &Bound<'_, PyAny>, input: Input) -> PyResult<Step> {
    match input {
        Input::Send(value) => send(py, iter, value.bind(py)),
        Input::Throw(err) => throw(py, iter, err),
    }
}

fn send(py: Python<'_>, iter: &Bound<'_, PyAny>, value: &Bound<'_, PyAny>) -> PyResult<Step> {
    let mut out: *mut ffi::PyObject = std::ptr::null_mut();
    // SAFETY: both pointers are live for the call; PyIter_Send returns a new
    // reference in `out` for PYGEN_RETURN and PYGEN_NEXT, and leaves an
    // exception set for PYGEN_ERROR.
    let status = unsafe { ffi::PyIter_Send(iter.as_ptr(), value.as_ptr(), &mut out) };
    match status {
        ffi::PySendResult::PYGEN_NEXT => Ok(Step::Yield(unsafe { Bound::from_owned_ptr(py, out) }.unbind())),
        ffi::PySendResult::PYGEN_RETURN => Ok(Step::Return(unsafe { Bound::from_owned_ptr(py, out) }.unbind())),
        ffi::PySendResult::PYGEN_ERROR => Err(PyErr::fetch(py)),
    }
}

fn throw(py: Python<'_>, iter: &Bound<'_, PyAny>, err: PyErr) -> PyResult<Step> {
    let exc = err.into_value(py);
    match iter.call_method1(intern!(py, "throw"), (exc,)) {
        Ok(value) => Ok(Step::Yield(value.unbind())),
        Err(e) if e.is_instance_of::<PyStopIteration>(py) => {
            let value = e.value(py).getattr(intern!(py, "value"))?;
            Ok(Step::Return(value.unbind()))
        }
        Err(e) => Err(e),
    }
}

/// The exception to throw for `throw(typ[, val[, tb]])`, the three forms Python accepts.
pub fn exception_from_throw_args(
    py: Python<'_>,
    typ: &Bound<'_, PyAny>,
    val: Option<&Bound<'_, PyAny>>,
    tb: Option<&Bound<'_, PyAny>>,
) -> PyResult<PyErr> {
    let val = val.filter(|v| !v.is_none());
    let exc = if let Ok(cls) = typ.cast::<PyType>() {
        match val {
            Some(v) if v.is_instance(cls)? => v.clone(),
            Some(v) if v.is_instance_of::<PyTuple>() => cls.call1(v.cast::<PyTuple>()?)?,
            Some(v) => cls.call1((v,))?,
            None => cls.call0()?,
        }
    } else {
        typ.clone()
    };
    if let Some(tb) = tb.filter(|t| !t.is_none()) {
        exc.setattr(intern!(py, "__traceback__"), tb)?;
    }
    // `from_value` turns a non-exception into the TypeError Python raises for it.
    Ok(PyErr::from_value(exc))
}

/// The Python awaitable protocol (`__await__`, `__iter__`, `__next__`, `send`,
/// `throw`) for a frozen pyclass with a method `step(&self, py, Input) ->
/// PyResult<Option<Py<PyAny>>>` (Some: yield it; None: done, returning None),
/// plus the extra methods given. One `#[pymethods]` block per class, as PyO3
/// wants it.
#[macro_export]
macro_rules! awaitable_pymethods {
    ($ty:ty { $($extra:tt)* }) => {
        #[pyo3::pymethods]
        impl $ty {
            fn __await__(slf: pyo3::PyRef<'_, Self>) -> pyo3::PyRef<'_, Self> {
                slf
            }

            fn __iter__(slf: pyo3::PyRef<'_, Self>) -> pyo3::PyRef<'_, Self> {
                slf
            }

            fn __next__(&self, py: pyo3::Python<'_>) -> pyo3::PyResult<Option<pyo3::Py<pyo3::PyAny>>> {
                self.step(py, $crate::coro::Input::none(py))
            }

            fn send(&self, py: pyo3::Python<'_>, value: pyo3::Py<pyo3::PyAny>) -> pyo3::PyResult<pyo3::Py<pyo3::PyAny>> {
                match self.step(py, $crate::coro::Input::Send(value))? {
                    Some(value) => Ok(value),
                    None => Err($crate::coro::stop_iteration(py, py.None())),
                }
            }

            #[pyo3(signature = (typ, val=None, tb=None))]
            fn throw(
                &self,
                py: pyo3::Python<'_>,
                typ: &pyo3::Bound<'_, pyo3::PyAny>,
                val: Option<&pyo3::Bound<'_, pyo3::PyAny>>,
                tb: Option<&pyo3::Bound<'_, pyo3::PyAny>>,
            ) -> pyo3::PyResult<pyo3::Py<pyo3::PyAny>> {
                let err = $crate::coro::exception_from_throw_args(py, typ, val, tb)?;
                match self.step(py, $crate::coro::Input::Throw(err))? {
                    Some(value) => Ok(value),
                    None => Err($crate::coro::stop_iteration(py, py.None())),
                }
            }

            $($extra)*
        }
    };
}

/// The value carried by a `StopIteration`, as the error that finishes an awaitable.
pub fn stop_iteration(py: Python<'_>, value: Py<PyAny>) -> PyErr {
    if value.is_none(py) {
        PyStopIteration::new_err(())
    } else {
        PyStopIteration::new_err((value,))
    }
}

/// An awaitable that suspends once (yielding None, which asyncio takes as
/// "run me again soon") and then returns: asyncio's cheapest checkpoint.
/// Frozen, its flag a relaxed atomic (a plain load or store), as `Pause`'s.
#[pyclass(module = "ferroware._core", frozen)]
pub struct YieldOnce {
    yielded: AtomicBool,
}

impl YieldOnce {
    fn step(&self, py: Python<'_>, input: Input) -> PyResult<Option<Py<PyAny>>> {
        yield_once(&self.yielded, input, || py.None())
    }
}

/// One step of an awaitable that yields `value()` once, then returns (None):
/// `yielded` is its flag, a relaxed atomic (a plain load or store).
pub fn yield_once(
    yielded: &AtomicBool,
    input: Input,
    value: impl FnOnce() -> Py<PyAny>,
) -> PyResult<Option<Py<PyAny>>> {
    match input {
        Input::Throw(err) => Err(err),
        Input::Send(_) if yielded.load(Ordering::Relaxed) => Ok(None),
        Input::Send(_) => {
            yielded.store(true, Ordering::Relaxed);
            Ok(Some(value()))
        }
    }
}

crate::awaitable_pymethods!(YieldOnce {
    #[new]
    fn new() -> Self {
        YieldOnce { yielded: AtomicBool::new(false) }
    }
});

/// An awaitable that is already done: `await Ready()` is None with no
/// suspension (for `aclose()` on the body iterator, which has nothing to wait for).
#[pyclass(module = "ferroware._core", frozen, freelist = 64)]
pub struct Ready;

impl Ready {
    pub fn none(py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ready.into_py_any(py)
    }

    fn step(&self, _py: Python<'_>, input: Input) -> PyResult<Option<Py<PyAny>>> {
        match input {
            Input::Send(_) => Ok(None),
            Input::Throw(err) => Err(err),
        }
    }
}

crate::awaitable_pymethods!(Ready {});

pub fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Ready>()?;
    m.add_class::<YieldOnce>()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pyo3::exceptions::{PyKeyError, PyValueError};
    use pyo3::types::PyDict;

    fn generator<'py>(py: Python<'py>, source: &str) -> Bound<'py, PyAny> {
        let globals = PyDict::new(py);
        py.run(&std::ffi::CString::new(source).unwrap(), Some(&globals), None).unwrap();
        globals.get_item("gen").unwrap().unwrap().call0().unwrap()
    }

    #[test]
    fn resume_reports_yields_returns_and_errors() {
        Python::initialize();
        Python::attach(|py| {
            let gen = generator(py, "def gen():\n    got = yield 1\n    return got * 2\n");
            match resume(py, &gen, Input::none(py)).unwrap() {
                Step::Yield(v) => assert_eq!(v.extract::<i64>(py).unwrap(), 1),
                Step::Return(_) => panic!("expected a yield"),
            }
            let sent = 21i64.into_pyobject(py).unwrap().into_any().unbind();
            match resume(py, &gen, Input::Send(sent)).unwrap() {
                Step::Return(v) => assert_eq!(v.extract::<i64>(py).unwrap(), 42),
                Step::Yield(_) => panic!("expected a return"),
            }
            let gen = generator(py, "def gen():\n    yield 1\n");
            resume(py, &gen, Input::none(py)).unwrap();
            let err = resume(py, &gen, Input::Throw(PyValueError::new_err("thrown"))).err().unwrap();
            assert!(err.is_instance_of::<PyValueError>(py));
        });
    }

    #[test]
    fn throw_returns_the_value_of_a_generator_that_catches() {
        Python::initialize();
        Python::attach(|py| {
            let gen =
                generator(py, "def gen():\n    try:\n        yield 1\n    except KeyError:\n        return 'caught'\n");
            resume(py, &gen, Input::none(py)).unwrap();
            match resume(py, &gen, Input::Throw(PyKeyError::new_err("k"))).unwrap() {
                Step::Return(v) => assert_eq!(v.extract::<String>(py).unwrap(), "caught"),
                Step::Yield(_) => panic!("expected a return"),
            }
        });
    }

    #[test]
    fn throw_arguments_in_all_three_forms() {
        Python::initialize();
        Python::attach(|py| {
            let cls = py.get_type::<PyValueError>();
            let from_class = exception_from_throw_args(py, cls.as_any(), None, None).unwrap();
            assert!(from_class.is_instance_of::<PyValueError>(py));
            let instance = PyValueError::new_err("x").into_value(py).into_bound(py).into_any();
            let from_instance = exception_from_throw_args(py, &instance, None, None).unwrap();
            assert!(from_instance.value(py).is(&instance));
            let arg = "message".into_pyobject(py).unwrap().into_any();
            let from_pair = exception_from_throw_args(py, cls.as_any(), Some(&arg), None).unwrap();
            assert_eq!(from_pair.value(py).str().unwrap().to_string(), "message");
            let not_an_exception = 5i64.into_pyobject(py).unwrap().into_any();
            let thrown = exception_from_throw_args(py, &not_an_exception, None, None).unwrap();
            assert!(thrown.is_instance_of::<pyo3::exceptions::PyTypeError>(py));
        });
    }
}
