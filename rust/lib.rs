//! ferroware's compiled core: the `call_next` dispatcher, the stack builder,
//! the header classes, live timings and the built-in middleware.
//!
//! Each submodule owns one job and registers its classes through its own `init`;
//! this file only wires them into the `ferroware._core` module.

use pyo3::prelude::*;

mod builtins;
mod chain;
mod context;
mod coro;
mod dispatch;
mod drive;
mod field_cache;
mod forward;
mod gil_cell;
mod headers;
mod layer;
mod message;
mod objects;
mod pull;
mod timing;

// Free-threaded CPython (3.14t): the crate compiles for it (CI checks a
// `Py_GIL_DISABLED` configuration), but nothing here has run on one, and the
// dispatcher's objects are built for one thread at a time (`GilCell` turns a
// concurrent access into an error there, not a wait). So the module says it
// needs the GIL: a free-threaded interpreter re-enables it on import, with
// its own warning, rather than run unverified code without it.
#[pymodule(gil_used = true)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    context::init(m)?;
    coro::init(m)?;
    dispatch::init(m)?;
    drive::init(m)?;
    forward::init(m)?;
    layer::init(m)?;
    pull::init(m)?;
    chain::init(m)?;
    headers::init(m)?;
    timing::init(m)?;
    builtins::cors::init(m)?;
    builtins::hosts::init(m)?;
    builtins::request_id::init(m)?;
    builtins::security::init(m)?;
    builtins::gzip::init(m)?;
    builtins::encode::init(m)?;
    builtins::compress::init(m)?;
    Ok(())
}
