//! `RequestIDMiddleware`'s per-request work: read the incoming id from the
//! scope, validate it (the default check natively), make a new one when
//! needed (the default uuid4 natively), put the final id into the request's
//! header list and the contextvar, and add it to the response start.
//!
//! The semantics are those of asgi-correlation-id's `CorrelationIdMiddleware`;
//! the deliberate differences are listed in `ferroware.middleware.requestid`.
//! User-supplied generator, validator and transformer stay Python callables.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyTuple};

use super::{
    as_list, configured_name, first_value, latin1, put_fields, scope_headers, start_headers, to_latin1, value_bytes,
};
use crate::headers::{check_value, pair_tuple, set_raw, splits_response};

/// A new request id: a random (version 4) UUID as 32 lowercase hex digits,
/// the format of Python's `uuid4().hex`.
fn new_id() -> [u8; 32] {
    let mut out = [0u8; 32];
    uuid::Uuid::new_v4().simple().encode_lower(&mut out);
    out
}

/// A generated id as Python text.
fn id_text<'py>(py: Python<'py>, id: &[u8; 32]) -> Bound<'py, PyString> {
    // Hex digits are ASCII, so valid UTF-8.
    PyString::new(py, std::str::from_utf8(id).unwrap_or_default())
}

/// Whether Python's `int(text, 16)` accepts `text` (its characters, each a
/// latin-1 code point). Python keeps ASCII characters as they are, turns
/// non-ASCII whitespace (U+0085, U+00A0) into spaces, then parses: optional
/// surrounding ASCII whitespace, an optional sign, an optional `0x`/`0X`
/// prefix that may be followed by one underscore, and hex digits with single
/// underscores between them.
fn parses_as_hex_int(text: &[char]) -> bool {
    let is_space = |c: char| matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r' | '\u{85}' | '\u{a0}');
    let mut s = text;
    while let [c, rest @ ..] = s {
        if !is_space(*c) {
            break;
        }
        s = rest;
    }
    while let [rest @ .., c] = s {
        if !is_space(*c) {
            break;
        }
        s = rest;
    }
    if let [c, rest @ ..] = s {
        if *c == '+' || *c == '-' {
            s = rest;
        }
    }
    if let ['0', 'x' | 'X', rest @ ..] = s {
        s = rest;
        if let ['_', rest @ ..] = s {
            s = rest;
        }
    }
    if s.is_empty() || s[0] == '_' || s[s.len() - 1] == '_' {
        return false;
    }
    let mut previous_underscore = false;
    for &c in s {
        if c == '_' {
            if previous_underscore {
                return false;
            }
            previous_underscore = true;
        } else if c.is_ascii_hexdigit() {
            previous_underscore = false;
        } else {
            return false;
        }
    }
    true
}

/// `text.replace(pattern, "")`, scanning left to right as Python does.
fn remove_all(text: &[char], pattern: &str) -> Vec<char> {
    let pattern: Vec<char> = pattern.chars().collect();
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i..].starts_with(&pattern) {
            i += pattern.len();
        } else {
            out.push(text[i]);
            i += 1;
        }
    }
    out
}

/// 32 hex digits, or 8-4-4-4-12 of them with dashes: the shapes clients send,
/// checked without the general path's copies.
fn usual_uuid_shape<T: Copy + Into<char>>(text: &[T]) -> bool {
    let hex = |c: T| c.into().is_ascii_hexdigit();
    match text.len() {
        32 => text.iter().all(|&c| hex(c)),
        36 => {
            text.iter().enumerate().all(|(i, &c)| if matches!(i, 8 | 13 | 18 | 23) { c.into() == '-' } else { hex(c) })
        }
        _ => false,
    }
}

/// asgi-correlation-id's `is_valid_uuid4`: whether `uuid.UUID(text, version=4)`
/// accepts the text, i.e. the steps of `UUID.__init__` for a hex string: drop
/// every `urn:` then every `uuid:`, strip `{`/`}` from both ends, drop every
/// `-`, then 32 characters that `int(_, 16)` parses. (A loose check: any 32
/// hex digits pass, whatever their version bits, as in the original.)
fn is_valid_uuid4_chars(text: &[char]) -> bool {
    if usual_uuid_shape(text) {
        return true;
    }
    let text = remove_all(&remove_all(text, "urn:"), "uuid:");
    let mut s: &[char] = &text;
    while let [c, rest @ ..] = s {
        if *c != '{' && *c != '}' {
            break;
        }
        s = rest;
    }
    while let [rest @ .., c] = s {
        if *c != '{' && *c != '}' {
            break;
        }
        s = rest;
    }
    let s: Vec<char> = s.iter().copied().filter(|&c| c != '-').collect();
    s.len() == 32 && parses_as_hex_int(&s)
}

fn is_valid_uuid4_bytes(value: &[u8]) -> bool {
    if usual_uuid_shape(value) {
        return true;
    }
    let chars: Vec<char> = value.iter().map(|&b| b as char).collect();
    is_valid_uuid4_chars(&chars)
}

/// Whether `value` is a request id in the default format: a UUID string as
/// `uuid.UUID(value, version=4)` accepts it (asgi-correlation-id's loose
/// check: any 32 hex digits, with or without dashes, braces or a `urn:uuid:`
/// prefix). Text beyond latin-1 can't come from a header and is refused.
#[pyfunction]
fn is_valid_uuid4(value: &Bound<'_, PyAny>) -> PyResult<bool> {
    let text = value.cast::<PyString>().map_err(|_| {
        PyTypeError::new_err(format!(
            "is_valid_uuid4() expects a str, got {}",
            value.get_type().name().map(|n| n.to_string()).unwrap_or_default()
        ))
    })?;
    let text = text.to_cow()?;
    let chars: Vec<char> = text.chars().collect();
    Ok(chars.iter().all(|&c| u32::from(c) <= 0xff) && is_valid_uuid4_chars(&chars))
}

/// A new request id: `uuid4().hex` (32 lowercase hex digits), made in Rust.
#[pyfunction]
fn generate_request_id(py: Python<'_>) -> Bound<'_, PyString> {
    id_text(py, &new_id())
}

/// `var.set(value)`, straight through the C API (the token is not needed: the
/// value is deliberately left set after the request, see the Python module).
fn set_context_var(var: &Py<PyAny>, value: &Bound<'_, PyString>) -> PyResult<()> {
    let py = value.py();
    // SAFETY: `var` was checked to be a ContextVar at construction; the call
    // returns a new reference to a Token, or NULL with an exception set.
    let token = unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyContextVar_Set(var.as_ptr(), value.as_ptr()))? };
    drop(token);
    Ok(())
}

/// How incoming ids are checked.
enum Validator {
    /// Every non-empty id is accepted (`validator=None`).
    Off,
    /// `is_valid_uuid4`, run natively.
    Uuid4,
    /// A Python callable `str -> bool`.
    Custom(Py<PyAny>),
}

/// One `RequestIDMiddleware`'s configuration.
#[pyclass(module = "ferroware._core", frozen)]
pub struct RequestIdPolicy {
    /// Lowercase, latin-1 encoded, validated as a field name.
    name: Vec<u8>,
    /// The same name as a bytes object, for the response field.
    name_object: Py<PyBytes>,
    update_request_header: bool,
    /// None: `generate_request_id`, natively.
    generator: Option<Py<PyAny>>,
    validator: Validator,
    transformer: Option<Py<PyAny>>,
    /// The `ContextVar` that holds the id.
    var: Py<PyAny>,
    /// The bound `warning` method of the middleware's logger.
    warn: Py<PyAny>,
    warning_message: Py<PyString>,
}

/// A final id: the text for the contextvar and the bytes for the headers.
struct RequestId<'py> {
    text: Bound<'py, PyString>,
    bytes: Vec<u8>,
}

impl RequestIdPolicy {
    fn generate<'py>(&self, py: Python<'py>) -> PyResult<RequestId<'py>> {
        match &self.generator {
            None => {
                let id = new_id();
                Ok(RequestId { text: id_text(py, &id), bytes: id.to_vec() })
            }
            Some(generator) => self.checked(generator.bind(py).call0()?, "generator"),
        }
    }

    /// A value returned by a user callable, checked as a header value.
    fn checked<'py>(&self, value: Bound<'py, PyAny>, what: &str) -> PyResult<RequestId<'py>> {
        let py = value.py();
        let text = value.cast_into::<PyString>().map_err(|e| {
            let type_name = e.into_inner().get_type().name().map(|n| n.to_string()).unwrap_or_default();
            PyTypeError::new_err(format!("RequestIDMiddleware: the {what} returned {type_name}, expected str"))
        })?;
        let bytes = to_latin1(&text.to_cow()?).ok_or_else(|| {
            PyValueError::new_err(format!(
                "RequestIDMiddleware: the {what} returned {}, which can't be sent in a header (not latin-1)",
                text.repr().map(|r| r.to_string()).unwrap_or_default()
            ))
        })?;
        check_value(py, &self.name, &bytes).map_err(|e| {
            PyValueError::new_err(format!("RequestIDMiddleware: the {what} returned an unsendable id: {}", e.value(py)))
        })?;
        Ok(RequestId { text, bytes })
    }

    fn accepts(&self, py: Python<'_>, value: &[u8]) -> PyResult<bool> {
        // Never echo what could split the response, whatever the validator says.
        if value.iter().any(splits_response) {
            return Ok(false);
        }
        match &self.validator {
            Validator::Off => Ok(true),
            Validator::Uuid4 => Ok(is_valid_uuid4_bytes(value)),
            Validator::Custom(f) => f.bind(py).call1((latin1(value),))?.is_truthy(),
        }
    }
}

#[pymethods]
impl RequestIdPolicy {
    #[new]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (*, header_name, update_request_header, generator, validator, native_validator,
                        transformer, var, warn, warning_message))]
    fn new(
        py: Python<'_>,
        header_name: &str,
        update_request_header: bool,
        generator: Option<Py<PyAny>>,
        validator: Option<Py<PyAny>>,
        native_validator: bool,
        transformer: Option<Py<PyAny>>,
        var: Py<PyAny>,
        warn: Py<PyAny>,
        warning_message: Py<PyString>,
    ) -> PyResult<Self> {
        let name = configured_name(py, header_name)?;
        let validator = match (native_validator, validator) {
            (true, _) => Validator::Uuid4,
            (false, Some(f)) => Validator::Custom(f),
            (false, None) => Validator::Off,
        };
        // SAFETY: a type check on a live object.
        if unsafe { ffi::PyContextVar_CheckExact(var.as_ptr()) } == 0 {
            return Err(PyTypeError::new_err("RequestIdPolicy: var must be a contextvars.ContextVar"));
        }
        let name_object = PyBytes::new(py, &name).unbind();
        Ok(RequestIdPolicy {
            name,
            name_object,
            update_request_header,
            generator,
            validator,
            transformer,
            var,
            warn,
            warning_message,
        })
    }

    /// For one HTTP or websocket connection: decides the id, updates the
    /// request headers and the contextvar, and returns the `send` to give the
    /// app (for HTTP, one that adds the id to the response start).
    fn start<'py>(
        &self,
        scope: &Bound<'py, PyAny>,
        send: Bound<'py, PyAny>,
        is_http: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = scope.py();
        let list = scope_headers(scope)?;
        let incoming = match first_value(&list, &self.name)? {
            Some(v) => Some(value_bytes(&v)?.into_owned()),
            None => None,
        };
        let mut failed_validation = false;
        let mut id = match &incoming {
            Some(value) if !value.is_empty() => {
                if self.accepts(py, value)? {
                    RequestId { text: PyString::new(py, &latin1(value)), bytes: value.clone() }
                } else {
                    failed_validation = true;
                    self.generate(py)?
                }
            }
            _ => self.generate(py)?,
        };
        if let Some(transformer) = &self.transformer {
            id = self.checked(transformer.bind(py).call1((&id.text,))?, "transformer")?;
        }
        if failed_validation {
            self.warn.bind(py).call1((self.warning_message.bind(py), &id.text))?;
        }
        if self.update_request_header && incoming.as_deref() != Some(id.bytes.as_slice()) {
            // A new list, as Starlette's MutableHeaders(scope=scope) makes: the
            // one in the scope may be shared with whoever built the scope.
            let edited = as_list(&list)?;
            set_raw(&edited, &self.name, PyBytes::new(py, &id.bytes).into_any())?;
            scope.set_item(intern!(py, "headers"), edited)?;
        }
        set_context_var(&self.var, &id.text)?;
        if !is_http || id.bytes.is_empty() {
            return Ok(send);
        }
        let field =
            pair_tuple(py, self.name_object.bind(py).clone().into_any(), PyBytes::new(py, &id.bytes).into_any())?;
        let wrapped = RequestIdSend { field: field.unbind(), send: send.unbind() };
        Ok(Bound::new(py, wrapped)?.into_any())
    }
}

/// The `send` a wrapped HTTP app gets: sets the id on the response start.
#[pyclass(module = "ferroware._core", frozen)]
pub struct RequestIdSend {
    /// `(name, id)` as bytes.
    field: Py<PyTuple>,
    send: Py<PyAny>,
}

#[pymethods]
impl RequestIdSend {
    fn __call__<'py>(&self, py: Python<'py>, message: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        if super::is_message(&message, "http.response.start")? {
            let list = start_headers(&message)?;
            // Set, not appended: one id field even if the app set its own (in any case).
            put_fields(&list, &[self.field.bind(py)], true)?;
        }
        self.send.bind(py).call1((message,))
    }
}

pub fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<RequestIdPolicy>()?;
    m.add_class::<RequestIdSend>()?;
    m.add_function(wrap_pyfunction!(is_valid_uuid4, m)?)?;
    m.add_function(wrap_pyfunction!(generate_request_id, m)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid(text: &str) -> bool {
        is_valid_uuid4_chars(&text.chars().collect::<Vec<_>>())
    }

    #[test]
    fn generated_ids_are_uuid4_hex() {
        let id = new_id();
        assert!(id.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b)));
        assert_eq!(id[12], b'4');
        assert!(valid(std::str::from_utf8(&id).unwrap()));
        assert_ne!(new_id(), id);
    }

    #[test]
    fn uuid_shapes_python_accepts() {
        let hex = "1b4e28ba2fa1411d8e4f5e6f8a9b0c1d";
        assert!(valid(hex));
        assert!(valid("1b4e28ba-2fa1-411d-8e4f-5e6f8a9b0c1d"));
        assert!(valid("{1b4e28ba-2fa1-411d-8e4f-5e6f8a9b0c1d}"));
        assert!(valid("urn:uuid:1b4e28ba-2fa1-411d-8e4f-5e6f8a9b0c1d"));
        assert!(valid(&format!(" {}", &hex[1..])));
        assert!(valid(&format!("+{}", &hex[1..])));
        assert!(valid(&format!("0x{}", &hex[2..])));
        assert!(valid(&format!("0x_{}", &hex[3..])));
        assert!(valid(&format!("{}_0", &hex[2..])));
    }

    #[test]
    fn shapes_python_refuses() {
        assert!(!valid(""));
        assert!(!valid("not-a-uuid"));
        assert!(!valid(&"0".repeat(31)));
        assert!(!valid(&format!("\x1c{}", "0".repeat(31))));
        assert!(!valid(&format!("0x__{}", "0".repeat(28))));
        assert!(!valid(&format!("{}_", "0".repeat(31))));
        assert!(!valid(&format!("g{}", "0".repeat(31))));
    }
}
