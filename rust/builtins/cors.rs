//! `CORSMiddleware`'s request logic: is this a preflight, is the origin
//! allowed, the preflight response, and the header edit of a simple response.
//!
//! Behaviour follows Starlette 1.10.0's `CORSMiddleware`. The configuration is
//! normalised in Python (`ferroware.middleware.cors`) and handed over as bytes;
//! `allow_origin_regex` stays a Python pattern so it matches exactly as `re` does.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use super::{first_value, is_message, latin1, py_lower, py_strip, scope_headers, start_headers, value_bytes};
use crate::headers::{pair_tuple, set_raw, values_raw};

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
    preflight: PreflightParts,
}

/// What every preflight answer is made of, built once at construction: the
/// fixed fields, in order, as the very `(name, value)` tuples that go into each
/// answer's header list (tuples of bytes are immutable, so sharing them can't
/// be observed), and the content fields and body of the `200 OK` answer.
/// A preflight answer then allocates only its list, its two message dicts and
/// the fields that depend on the request.
struct PreflightParts {
    /// Names lowercase, each with its field tuple.
    fixed: Vec<(Vec<u8>, Py<PyTuple>)>,
    ok_length: Py<PyTuple>,
    content_type: Py<PyTuple>,
    ok_body: Py<PyBytes>,
}

const OK_BODY: &[u8] = b"OK";

impl PreflightParts {
    fn new(py: Python<'_>, fixed: Vec<(Vec<u8>, Vec<u8>)>) -> PyResult<Self> {
        let fixed = fixed
            .into_iter()
            .map(|(name, value)| {
                let field = bytes_field(py, &name, PyBytes::new(py, &value).into_any())?.unbind();
                Ok((name, field))
            })
            .collect::<PyResult<_>>()?;
        Ok(PreflightParts {
            fixed,
            ok_length: content_length(py, OK_BODY.len())?.unbind(),
            content_type: bytes_field(py, b"content-type", PyBytes::new(py, b"text/plain; charset=utf-8").into_any())?
                .unbind(),
            ok_body: PyBytes::new(py, OK_BODY).unbind(),
        })
    }

    /// The fixed fields, ready to be edited by `put` for one answer.
    fn fields<'py>(&self, py: Python<'py>) -> Vec<Bound<'py, PyAny>> {
        self.fixed.iter().map(|(_, field)| field.bind(py).clone().into_any()).collect()
    }

    /// Sets `name` in `fields` (made by `fields`) as Starlette sets a key of its
    /// dict: a fixed field keeps its place and gets the value; a new one goes last.
    fn put<'py>(&self, fields: &mut Vec<Bound<'py, PyAny>>, name: &[u8], value: Bound<'py, PyAny>) -> PyResult<()> {
        let field = bytes_field(value.py(), name, value)?.into_any();
        match self.fixed.iter().position(|(n, _)| n.as_slice() == name) {
            Some(i) => fields[i] = field,
            None => fields.push(field),
        }
        Ok(())
    }
}

/// A `(name, value)` field tuple with a new name object.
fn bytes_field<'py>(py: Python<'py>, name: &[u8], value: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyTuple>> {
    pair_tuple(py, PyBytes::new(py, name).into_any(), value)
}

fn content_length(py: Python<'_>, len: usize) -> PyResult<Bound<'_, PyTuple>> {
    bytes_field(py, b"content-length", PyBytes::new(py, len.to_string().as_bytes()).into_any())
}

/// A header value as an exact `bytes` object: the one given if it is one.
fn exact_bytes<'py>(value: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    if let Ok(bytes) = value.cast_exact::<PyBytes>() {
        return Ok(bytes.clone());
    }
    Ok(PyBytes::new(value.py(), &value_bytes(value)?))
}

/// The `(start, body)` messages of a plain-text response, as Starlette's
/// `PlainTextResponse(text, status_code, headers)` sends them.
fn response_messages<'py>(
    py: Python<'py>,
    status: u16,
    fields: Vec<Bound<'py, PyAny>>,
    body: Bound<'py, PyBytes>,
) -> PyResult<Bound<'py, PyTuple>> {
    let start = PyDict::new(py);
    start.set_item(intern!(py, "type"), intern!(py, "http.response.start"))?;
    start.set_item(intern!(py, "status"), status)?;
    start.set_item(intern!(py, "headers"), PyList::new(py, fields)?)?;
    let end = PyDict::new(py);
    end.set_item(intern!(py, "type"), intern!(py, "http.response.body"))?;
    end.set_item(intern!(py, "body"), body)?;
    pair_tuple(py, start.into_any(), end.into_any())
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

    /// Whether every header of `Access-Control-Request-Headers` is allowed.
    fn allows_headers(&self, requested: &[u8]) -> bool {
        let lowered = py_lower(&latin1(requested));
        lowered.split(',').all(|h| self.allow_headers.iter().any(|a| a == py_strip(h)))
    }

    /// The `(start, body)` messages answering a preflight request.
    fn preflight_response<'py>(
        &self,
        py: Python<'py>,
        list: &Bound<'py, PyList>,
        origin: &Bound<'py, PyBytes>,
        method: &[u8],
    ) -> PyResult<Bound<'py, PyTuple>> {
        let requested_headers = first_value(list, b"access-control-request-headers")?;
        let private_network = first_value(list, b"access-control-request-private-network")?.is_some();

        let parts = &self.preflight;
        let mut fields = parts.fields(py);
        let mut failures: Vec<&str> = Vec::new();
        if self.is_allowed_origin(py, origin.as_bytes())? {
            if self.explicit_origin {
                parts.put(&mut fields, ACAO, origin.clone().into_any())?;
            }
        } else {
            failures.push("origin");
        }
        if !self.methods.iter().any(|m| m.as_slice() == method) {
            failures.push("method");
        }
        if let Some(requested) = &requested_headers {
            if self.allow_all_headers {
                parts.put(&mut fields, ACAH, exact_bytes(requested)?.into_any())?;
            } else if !self.allows_headers(&value_bytes(requested)?) {
                failures.push("headers");
            }
        }
        if private_network {
            if self.allow_private_network {
                parts.put(&mut fields, ACAPN, PyBytes::new(py, b"true").into_any())?;
            } else {
                failures.push("private-network");
            }
        }
        if failures.is_empty() {
            fields.push(parts.ok_length.bind(py).clone().into_any());
            fields.push(parts.content_type.bind(py).clone().into_any());
            return response_messages(py, 200, fields, parts.ok_body.bind(py).clone());
        }
        let body = format!("Disallowed CORS {}", failures.join(", ")).into_bytes();
        fields.push(content_length(py, body.len())?.into_any());
        fields.push(parts.content_type.bind(py).clone().into_any());
        response_messages(py, 400, fields, PyBytes::new(py, &body))
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
        py: Python<'_>,
    ) -> PyResult<Self> {
        Ok(CorsPolicy {
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
            preflight: PreflightParts::new(py, preflight)?,
        })
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
        let origin = match first_value(&list, b"origin")? {
            Some(o) => Some(exact_bytes(&o)?),
            None => None,
        };
        if let Some(origin) = &origin {
            let is_options = method.cast::<PyString>().is_ok_and(|m| m.to_str().is_ok_and(|m| m == "OPTIONS"));
            if is_options {
                if let Some(requested) = first_value(&list, b"access-control-request-method")? {
                    return Ok(slf.get().preflight_response(py, &list, origin, &value_bytes(&requested)?)?.into_any());
                }
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
