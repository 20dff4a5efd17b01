//! `SecurityHeadersMiddleware`'s response edit: its fixed fields (encoded and
//! validated once, at construction) added to every HTTP response start in one
//! pass over the app's header list. A field the app already set, in any case,
//! is left alone, or replaced in place with `overwrite` (no duplicates either
//! way).

use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyTuple};

use super::{configured_name, is_message, latin1, put_fields, start_headers, to_latin1};
use crate::headers::{check_value, pair_tuple};

/// At most this many fields (`put_fields` tracks them in a `u64`).
const MAX_FIELDS: usize = 64;

struct Field {
    /// `(name, value)` as bytes, the name lowercase as in ASGI header lists.
    pair: Py<PyTuple>,
    /// Only sent on https responses (Strict-Transport-Security: RFC 6797 §7.2
    /// forbids it over plain http, and browsers ignore it there).
    https_only: bool,
}

/// One `SecurityHeadersMiddleware`'s fields and options.
#[pyclass(module = "ferroware._core", frozen)]
pub struct SecurityHeadersPolicy {
    fields: Vec<Field>,
    overwrite: bool,
}

#[pymethods]
impl SecurityHeadersPolicy {
    /// `fields`: `(name, value, https_only)` triples. Raises `ValueError`
    /// naming the field for a name that is not an RFC 9110 token, a value that
    /// is not latin-1 or contains CR, LF or NUL, or a name given twice.
    #[new]
    #[pyo3(signature = (fields, *, overwrite))]
    fn new(py: Python<'_>, fields: Vec<(String, String, bool)>, overwrite: bool) -> PyResult<Self> {
        if fields.len() > MAX_FIELDS {
            return Err(PyValueError::new_err(format!("at most {MAX_FIELDS} security headers, got {}", fields.len())));
        }
        // Python's repr, so messages quote names as the other header errors do.
        let repr =
            |text: &str| PyString::new(py, text).repr().map(|r| r.to_string()).unwrap_or_else(|_| format!("{text:?}"));
        let mut encoded: Vec<Field> = Vec::with_capacity(fields.len());
        let mut names: Vec<Vec<u8>> = Vec::with_capacity(fields.len());
        for (name, value, https_only) in fields {
            let lower = configured_name(py, &name)?;
            let value_bytes = to_latin1(&value).ok_or_else(|| {
                PyValueError::new_err(format!(
                    "invalid value for header {}: {} is not latin-1",
                    repr(&latin1(&lower)),
                    repr(&value)
                ))
            })?;
            check_value(py, &lower, &value_bytes)?;
            if names.contains(&lower) {
                return Err(PyValueError::new_err(format!("header {} is given twice", repr(&name))));
            }
            let pair = pair_tuple(py, PyBytes::new(py, &lower).into_any(), PyBytes::new(py, &value_bytes).into_any())?;
            encoded.push(Field { pair: pair.unbind(), https_only });
            names.push(lower);
        }
        Ok(SecurityHeadersPolicy { fields: encoded, overwrite })
    }

    /// The `send` to give the app for one HTTP request.
    fn wrap<'py>(
        slf: &Bound<'py, Self>,
        scope: &Bound<'py, PyAny>,
        send: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        // The ASGI default scheme is "http"; a missing key means plain http.
        let https = match scope.get_item(intern!(py, "scheme")) {
            Ok(s) => s.cast::<PyString>().is_ok_and(|s| s.to_str().is_ok_and(|s| s == "https")),
            Err(_) => false,
        };
        let wrapped = SecuritySend { policy: slf.clone().unbind(), send: send.unbind(), https };
        Ok(Bound::new(py, wrapped)?.into_any())
    }
}

/// The `send` a wrapped app gets: adds the fields to the response start.
#[pyclass(module = "ferroware._core", frozen)]
pub struct SecuritySend {
    policy: Py<SecurityHeadersPolicy>,
    send: Py<PyAny>,
    https: bool,
}

#[pymethods]
impl SecuritySend {
    fn __call__<'py>(&self, py: Python<'py>, message: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        if is_message(&message, "http.response.start")? {
            self.edit_start(py, &message)?;
        }
        self.send.bind(py).call1((message,))
    }
}

impl SecuritySend {
    fn edit_start(&self, py: Python<'_>, message: &Bound<'_, PyAny>) -> PyResult<()> {
        let policy = self.policy.get();
        let list = start_headers(message)?;
        let fields: Vec<&Bound<'_, PyTuple>> =
            policy.fields.iter().filter(|f| self.https || !f.https_only).map(|f| f.pair.bind(py)).collect();
        put_fields(&list, &fields, policy.overwrite)
    }
}

pub fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<SecurityHeadersPolicy>()?;
    m.add_class::<SecuritySend>()?;
    Ok(())
}
