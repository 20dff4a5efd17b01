//! The context the downstream app runs in.
//!
//! Starlette's `call_next` starts the app in a new task, which copies
//! `dispatch`'s context at that moment: every step of the app (its response,
//! its streamed body, its background work) sees the contextvars as they were
//! then, and nothing `dispatch` sets afterwards. We step the app in the
//! middleware's own task, so we give it the same: a copy of the context taken
//! when `call_next` starts it, entered around each step of the app.
//!
//! One deliberate improvement is kept (Starlette #1081): a value the app sets
//! before its response starts is visible in `dispatch` after `call_next`
//! returns. There the vars the app changed are set again in `dispatch`'s own
//! context; what the app sees is not affected by it.
//!
//! Telling whether the app changed anything is the one costly part: a walk of
//! the context per layer per request. A context's vars are an immutable map
//! that every `set` replaces, and a copy shares its original's, so "the app
//! set nothing" is "the app's context still holds the map it was copied
//! with". CPython has no API for that pointer; `ContextLayout` reads it from
//! the object, after checking at import that the object is laid out as
//! CPython 3.11-3.13 lay it out (`PyContext` in `pycore_context.h`), and the
//! walk is made every time if it isn't.

use std::sync::OnceLock;

use pyo3::exceptions::PyKeyError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyAny;

pub struct AppContext {
    /// The app's context: a copy of `dispatch`'s when the app started.
    context: Py<PyAny>,
    /// The vars the app started with, as a mapping: what the app changed is
    /// what differs from it. Where `ContextLayout` holds, this is the map the
    /// copy shared with `dispatch`'s context then (one copy per layer instead
    /// of two; the map is immutable, and this reference keeps its address
    /// from being reused); elsewhere, a second copy, never entered.
    started_with: Py<PyAny>,
}

impl AppContext {
    /// A copy of the current context (the one `dispatch` runs in).
    pub fn copy_current(py: Python<'_>) -> PyResult<Self> {
        let context = copy_current(py)?;
        let started_with = match ContextLayout::checked(py) {
            // SAFETY: a live context, laid out as checked; its map is a live
            // object (non-null: checked with the layout), owned anew here.
            Some(layout) => unsafe { Bound::from_borrowed_ptr(py, layout.vars(context.as_ptr()).cast_mut()).unbind() },
            None => copy_current(py)?,
        };
        Ok(AppContext { context, started_with })
    }

    /// The context itself (a `contextvars.Context`).
    pub fn context(&self) -> &Py<PyAny> {
        &self.context
    }

    /// Bound to the GIL, to be used while the channel holding this is not
    /// borrowed (a step of the app may reach it). Bound references are
    /// dropped without PyO3's thread-local check of a `Py`'s drop, which
    /// stepping pays per step and layer.
    pub fn bind<'py>(&self, py: Python<'py>) -> BoundAppContext<'py> {
        BoundAppContext { context: self.context.bind(py).clone(), started_with: self.started_with.bind(py).clone() }
    }
}

pub struct BoundAppContext<'py> {
    context: Bound<'py, PyAny>,
    started_with: Bound<'py, PyAny>,
}

impl BoundAppContext<'_> {
    /// `step()`, run in the app's context.
    pub fn run<T>(&self, step: impl FnOnce() -> T) -> PyResult<T> {
        let py = self.context.py();
        // SAFETY: a live context object; 0, or -1 with an exception (it is
        // entered already: a step of the app inside another step of it).
        if unsafe { ffi::PyContext_Enter(self.context.as_ptr()) } != 0 {
            return Err(PyErr::fetch(py));
        }
        let result = step();
        // SAFETY: the context entered above, still current: what the step
        // entered it has exited (contexts nest).
        if unsafe { ffi::PyContext_Exit(self.context.as_ptr()) } != 0 {
            return Err(PyErr::fetch(py));
        }
        Ok(result)
    }

    /// Sets in the current context each var the app changed in its own.
    pub fn adopt_changes(&self) -> PyResult<()> {
        let py = self.context.py();
        let (context, started_with) = (&self.context, &self.started_with);
        if let Some(layout) = ContextLayout::checked(py) {
            // SAFETY: a live context, laid out as checked.
            if unsafe { layout.vars(context.as_ptr()) } == started_with.as_ptr().cast_const() {
                return Ok(());
            }
        }
        for var in context.try_iter()? {
            let var = var?;
            let value = context.get_item(&var)?;
            let unchanged = match started_with.get_item(&var) {
                Ok(before) => before.is(&value),
                Err(err) if err.is_instance_of::<PyKeyError>(py) => false,
                Err(err) => return Err(err),
            };
            if !unchanged {
                var.call_method1(pyo3::intern!(py, "set"), (value,))?;
            }
        }
        Ok(())
    }
}

/// Whether telling that the app changed no var is a pointer comparison here
/// (the layout check passed), not a walk of its context.
#[pyfunction]
fn reads_context_maps(py: Python<'_>) -> bool {
    ContextLayout::checked(py).is_some()
}

pub fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(reads_context_maps, m)?)
}

fn copy_current(py: Python<'_>) -> PyResult<Py<PyAny>> {
    // SAFETY: a new reference to a new context, or NULL with an exception.
    unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyContext_CopyCurrent()).map(Bound::unbind) }
}

/// Where a `PyContext` keeps its map of vars: right after the object header
/// and the `ctx_prev` pointer.
#[derive(Clone, Copy)]
struct ContextLayout {
    vars_offset: usize,
}

impl ContextLayout {
    const EXPECTED: ContextLayout =
        ContextLayout { vars_offset: std::mem::size_of::<ffi::PyObject>() + std::mem::size_of::<*mut ffi::PyObject>() };

    /// The layout, if this interpreter's contexts behave as it says.
    fn checked(py: Python<'_>) -> Option<ContextLayout> {
        static CHECKED: OnceLock<Option<ContextLayout>> = OnceLock::new();
        *CHECKED.get_or_init(|| Self::EXPECTED.holds(py).unwrap_or(false).then_some(Self::EXPECTED))
    }

    /// Reads the vars pointer of `context`.
    ///
    /// SAFETY: `context` is a live `contextvars.Context` of an interpreter
    /// whose layout passed `holds`.
    unsafe fn vars(self, context: *mut ffi::PyObject) -> *const ffi::PyObject {
        unsafe { *(context.cast::<u8>().add(self.vars_offset) as *const *const ffi::PyObject) }
    }

    /// True if, read at this offset: a copy of a context shares its
    /// original's (non-null) map, and a `set` in the copy replaces the copy's
    /// map and leaves the original's.
    fn holds(self, py: Python<'_>) -> PyResult<bool> {
        let contextvars = py.import("contextvars")?;
        let context_type = contextvars.getattr("Context")?;
        // SAFETY: a type object; its instances' size, to stay within them.
        let basicsize = unsafe { (*context_type.as_ptr().cast::<ffi::PyTypeObject>()).tp_basicsize };
        if (basicsize as usize) < self.vars_offset + std::mem::size_of::<*mut ffi::PyObject>() {
            return Ok(false);
        }
        // SAFETY (each read): live contexts, big enough (checked above).
        let read = |context: &Bound<'_, PyAny>| unsafe { self.vars(context.as_ptr()) };
        let var = contextvars.getattr("ContextVar")?.call1(("ferroware_layout_check",))?;
        let original = context_type.call0()?;
        let copy = original.call_method0("copy")?;
        let before = read(&copy);
        let shared = !before.is_null() && read(&original) == before;
        copy.call_method1("run", (var.getattr("set")?, 1))?;
        let replaced = read(&copy) != before && read(&original) == before;
        Ok(shared && replaced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_cpython_lays_contexts_out_as_expected() {
        Python::initialize();
        Python::attach(|py| assert!(ContextLayout::checked(py).is_some()));
    }
}
