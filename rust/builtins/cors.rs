//! `CORSMiddleware`'s request logic: is this a preflight, is the origin
//! allowed, the preflight response, and the header edit of a simple response.
//!
//! Behaviour follows Starlette 1.10.0's `CORSMiddleware`. The configuration is
//! normalised in Python (`ferroware.middleware.cors`) and handed over as bytes;
//! `allow_origin_regex` stays a Python pattern so it matches exactly as `re` does.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};

use super::{first_value, is_message, latin1, py_lower, py_strip, scope_headers, start_headers, text_response, value_bytes};
use crate::headers::{set_raw, values_raw};

const ACAO: &[u8] = b"access-control-allow-origin";
const ACAH: &[u8] = b"access-control-allow-headers";
const ACAPN: &[u8] = b"access-control-allow-private-network";

/// One `CORSMiddleware`'s configuration.
#[pyclass(module = "ferroware._core", frozen)]
pub struct CorsPolicy {
    allow_all_origins: bool,
    allow_all_headers: bool,
    allow_credentials: bool,
    /// Starlette's `preflight_explicit_allow_origin`.
    explicit_origin: bool,
    allow_private_network: bool,
    origins: Vec<Vec<u8>>,
    /// The compiled pattern's `fullmatch`.
    regex_fullmatch: Option<Py<PyAny>>,
    methods: Vec<Vec<u8>>,
    /// Lowercased, safelisted ones included.
    allow_headers: Vec<String>,
    /// Fields set on every response to a request with an Origin (names lowercase).
    simple: Vec<(Vec<u8>, Py<PyBytes>)>,
    /// The preflight response's fixed fields, in order (names lowercase).
    preflight: Vec<(Vec<u8>, Vec<u8>)>,
}

impl CorsPolicy {
    fn is_allowed_origin(&self, py: Python<'_>, origin: &[u8]) -> PyResult<bool> {
        if self.allow_all_origins {
            return Ok(true);
        }
        if let Some(fullmatch) = &self.regex_fullmatch {
            if fullmatch.bind(py).call1((latin1(origin),))?.is_truthy()? {
                return Ok(true);
            }
        }
        Ok(self.origins.iter().any(|o| o.as_slice() == origin))
    }

    /// The `(start, body)` messages answering a preflight request.
    fn preflight_response<'py>(
        &self,
        py: Python<'py>,
        list: &Bound<'py, PyList>,
        origin: &[u8],
    ) -> PyResult<Bound<'py, PyTuple>> {
        let method = match first_value(list, b"access-control-request-method")? {
            Some(v) => value_bytes(&v)?.into_owned(),
            None => Vec::new(),
        };
        let requested_headers = first_value(list, b"access-control-request-headers")?;
        let requested_headers = match &requested_headers {
            Some(v) => Some(value_bytes(v)?.into_owned()),
            None => None,
        };
        let private_network = first_value(list, b"access-control-request-private-network")?.is_some();

        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = self.preflight.clone();
        // A dict in Starlette: setting a name already there replaces its value in place.
        fn put(fields: &mut Vec<(Vec<u8>, Vec<u8>)>, name: &[u8], value: &[u8]) {
            match fields.iter_mut().find(|(n, _)| n.as_slice() == name) {
                Some(slot) => slot.1 = value.to_vec(),
                None => fields.push((name.to_vec(), value.to_vec())),
            }
        }
        let mut failures: Vec<&str> = Vec::new();
        if self.is_allowed_origin(py, origin)? {
            if self.explicit_origin {
                put(&mut fields, ACAO, origin);
            }
        } else {
            failures.push("origin");
        }
        if !self.methods.iter().any(|m| m.as_slice() == method.as_slice()) {
            failures.push("method");
        }
        match &requested_headers {
            Some(requested) if self.allow_all_headers => put(&mut fields, ACAH, requested),
            Some(requested) => {
                let lowered = py_lower(&latin1(requested));
                if lowered.split(',').any(|h| !self.allow_headers.iter().any(|a| a == py_strip(h))) {
                    failures.push("headers");
                }
            }
            None => {}
        }
        if private_network {
            if self.allow_private_network {
                put(&mut fields, ACAPN, b"true");
            } else {
                failures.push("private-network");
            }
        }
        let (status, body) = if failures.is_empty() {
            (200, b"OK".to_vec())
        } else {
            (400, format!("Disallowed CORS {}", failures.join(", ")).into_bytes())
        };
        let borrowed: Vec<(&[u8], &[u8])> = fields.iter().map(|(n, v)| (n.as_slice(), v.as_slice())).collect();
        let (start, end) = text_response(py, status, &borrowed, &body)?;
        PyTuple::new(py, [start, end])
    }
}

#[pymethods]
impl CorsPolicy {
    #[new]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (*, allow_all_origins, allow_all_headers, allow_credentials, explicit_origin,
                        allow_private_network, origins, regex_fullmatch, methods, allow_headers, simple, preflight))]
    fn new(
        allow_all_origins: bool,
        allow_all_headers: bool,
        allow_credentials: bool,
        explicit_origin: bool,
        allow_private_network: bool,
        origins: Vec<Vec<u8>>,
        regex_fullmatch: Option<Py<PyAny>>,
        methods: Vec<Vec<u8>>,
        allow_headers: Vec<String>,
        simple: Vec<(Vec<u8>, Py<PyBytes>)>,
        preflight: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Self {
        CorsPolicy {
            allow_all_origins,
            allow_all_headers,
            allow_credentials,
            explicit_origin,
            allow_private_network,
            origins,
            regex_fullmatch,
            methods,
            allow_headers,
            simple,
            preflight,
        }
    }

    /// For one HTTP request: the `(start, body)` messages if it is a preflight
    /// request, else the `send` to give the app (it edits the response start).
    fn request<'py>(
        slf: &Bound<'py, Self>,
        scope: &Bound<'py, PyAny>,
        send: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let list = scope_headers(scope)?;
        let method = scope.get_item(intern!(py, "method"))?;
        let origin = first_value(&list, b"origin")?;
        let origin = match origin {
            Some(o) => Some(PyBytes::new(py, &value_bytes(&o)?)),
            None => None,
        };
        if let Some(origin) = &origin {
            let is_options = method.cast::<PyString>().is_ok_and(|m| m.to_str().is_ok_and(|m| m == "OPTIONS"));
            if is_options && first_value(&list, b"access-control-request-method")?.is_some() {
                return Ok(slf.get().preflight_response(py, &list, origin.as_bytes())?.into_any());
            }
        }
        let wrapped = CorsSend { policy: slf.clone().unbind(), send: send.unbind(), origin: origin.map(Bound::unbind) };
        Ok(Bound::new(py, wrapped)?.into_any())
    }

    /// Whether `origin` is allowed (Starlette's `is_allowed_origin`).
    fn is_allowed_origin_str(&self, py: Python<'_>, origin: &str) -> PyResult<bool> {
        match super::to_latin1(origin) {
            Some(bytes) => self.is_allowed_origin(py, &bytes),
            // Can't come from a header; only the regex can say.
            None => match &self.regex_fullmatch {
                Some(f) if !self.allow_all_origins => f.bind(py).call1((origin,))?.is_truthy(),
                _ => Ok(self.allow_all_origins),
            },
        }
    }
}

/// The `send` a CORS-wrapped app gets: adds the CORS fields to the response start.
#[pyclass(module = "ferroware._core", frozen)]
pub struct CorsSend {
    policy: Py<CorsPolicy>,
    send: Py<PyAny>,
    origin: Option<Py<PyBytes>>,
}

/// `headers["Vary"] = ", ".join([*headers.getlist("Vary"), "Origin"])`.
fn add_vary_origin(list: &Bound<'_, PyList>) -> PyResult<()> {
    let mut joined = Vec::new();
    for value in values_raw(list, b"vary")? {
        joined.extend_from_slice(&value_bytes(&value)?);
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(b"Origin");
    set_raw(list, b"vary", PyBytes::new(list.py(), &joined).into_any())
}

#[pymethods]
impl CorsSend {
    fn __call__<'py>(&self, py: Python<'py>, message: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        if is_message(&message, "http.response.start")? {
            self.edit_start(py, &message)?;
        }
        self.send.bind(py).call1((message,))
    }
}

impl CorsSend {
    fn edit_start(&self, py: Python<'_>, message: &Bound<'_, PyAny>) -> PyResult<()> {
        let list = start_headers(message)?;

        let policy = self.policy.get();
        let Some(origin) = &self.origin else {
            return add_vary_origin(&list);
        };
        for (name, value) in &policy.simple {
            set_raw(&list, name, value.bind(py).clone().into_any())?;
        }
        let origin = origin.bind(py);
        let explicit = if policy.allow_all_origins {
            policy.allow_credentials
        } else {
            policy.is_allowed_origin(py, origin.as_bytes())?
        };
        if explicit {
            set_raw(&list, ACAO, origin.clone().into_any())?;
        }
        add_vary_origin(&list)
    }
}

pub fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<CorsPolicy>()?;
    m.add_class::<CorsSend>()?;
    Ok(())
}
