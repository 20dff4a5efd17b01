//! Building the user's middleware stack.
//!
//! Starlette builds it with `for cls, args, kwargs in reversed(middleware): app =
//! cls(app, *args, **kwargs)`. We do the same, so every layer is instantiated
//! exactly as Starlette would, and pass each new layer through `accelerate`,
//! which swaps a stock `BaseHTTPMiddleware` for one on the compiled dispatcher
//! and returns anything else (pure ASGI layers) untouched: those are called
//! directly, with no wrapper at all.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

/// `build_stack(app, middleware, accelerate) -> ASGIApp`
#[pyfunction]
fn build_stack(
    app: Bound<'_, PyAny>,
    middleware: &Bound<'_, PyAny>,
    accelerate: &Bound<'_, PyAny>,
) -> PyResult<Py<PyAny>> {
    let layers: Vec<Bound<'_, PyAny>> = middleware.try_iter()?.collect::<PyResult<_>>()?;
    let mut app = app;
    for layer in layers.iter().rev() {
        let (cls, args, kwargs) = split_layer(layer)?;
        let mut call_args = Vec::with_capacity(args.len() + 1);
        call_args.push(app);
        call_args.extend(args.iter());
        let built = cls.call(PyTuple::new(layer.py(), call_args)?, Some(&kwargs))?;
        app = accelerate.call1((built,))?;
    }
    Ok(app.unbind())
}

/// A `starlette.middleware.Middleware` unpacks to `(cls, args, kwargs)`.
fn split_layer<'py>(
    layer: &Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>, Bound<'py, PyDict>)> {
    let parts: Vec<Bound<'py, PyAny>> = layer.try_iter()?.collect::<PyResult<_>>()?;
    match <[Bound<'py, PyAny>; 3]>::try_from(parts) {
        Ok([cls, args, kwargs]) => Ok((
            cls,
            args.cast_into::<PyTuple>().map_err(PyErr::from)?,
            kwargs.cast_into::<PyDict>().map_err(PyErr::from)?,
        )),
        Err(_) => Err(PyTypeError::new_err(format!(
            "middleware entries must unpack to (cls, args, kwargs), got {}",
            layer.repr()?
        ))),
    }
}

pub fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(build_stack, m)?)?;
    Ok(())
}
