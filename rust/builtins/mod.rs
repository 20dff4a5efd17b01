//! The compiled parts of `ferroware.middleware`: Starlette's built-in
//! middleware (CORS, trusted hosts, HTTPS redirect, gzip) with their request
//! and header logic in Rust. One job per module, each with its own `init`:
//!
//! | module | job |
//! | --- | --- |
//! | `cors` | origin/method/header matching, the preflight response, the simple-response header edit |
//! | `hosts` | Host header parsing (Starlette's `parse_host_header`) and allowed-host matching |
//! | `gzip` | `GZipMiddleware`'s response-header decisions (shared with `CompressionMiddleware`) |
//! | `encode` | streaming gzip, brotli and zstd encoders, flushed per chunk (both compressing middleware) |
//! | `compress` | `CompressionMiddleware`'s choice of coding from `Accept-Encoding` |
//! | `request_id` | `RequestIDMiddleware`: the incoming id, uuid4 checks and ids, the request and response header edits |
//! | `security` | `SecurityHeadersMiddleware`: its validated fields and the one-pass response-header edit |
//!
//! This file holds what they share: reading a scope's header list and
//! Python's text rules (latin-1, `str.strip`, `str.lower`) on header bytes.

use std::borrow::Cow;

use pyo3::exceptions::PyValueError;
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use crate::headers::{check_name, find_raw, pair, value_at};

pub mod compress;
pub mod cors;
pub mod encode;
pub mod gzip;
pub mod hosts;
pub mod request_id;
pub mod security;

/// `scope["headers"]` as a list, as Starlette's `Headers(scope=scope)` sees it
/// (a non-list is copied into a list and put back into the scope, as there).
pub(crate) fn scope_headers<'py>(scope: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
    let py = scope.py();
    let headers = scope.get_item(intern!(py, "headers"))?;
    match headers.cast_into::<PyList>() {
        Ok(list) => Ok(list),
        Err(e) => {
            let list = as_list(&e.into_inner())?;
            scope.set_item(intern!(py, "headers"), &list)?;
            Ok(list)
        }
    }
}

/// A configured header name as ASGI lists hold it: lowercased as Python's
/// `str.lower()` does, latin-1 encoded, and checked to be an RFC 9110 token
/// (`ValueError` naming it otherwise).
pub(crate) fn configured_name(py: Python<'_>, name: &str) -> PyResult<Vec<u8>> {
    let lowered = to_latin1(&py_lower(name)).ok_or_else(|| {
        let quoted = PyString::new(py, name).repr().map(|r| r.to_string()).unwrap_or_else(|_| format!("{name:?}"));
        PyValueError::new_err(format!("invalid header name {quoted}: not latin-1"))
    })?;
    check_name(py, &lowered)?;
    Ok(lowered)
}

/// Whether `message["type"]` is the string `kind`.
pub(crate) fn is_message(message: &Bound<'_, PyAny>, kind: &str) -> PyResult<bool> {
    let value = message.get_item(intern!(message.py(), "type"))?;
    Ok(value.cast::<PyString>().is_ok_and(|k| k.to_str().is_ok_and(|k| k == kind)))
}

/// A response start's header list, as Starlette's `MutableHeaders(scope=message)`
/// gives it: always a new list, put back into the message, because the app's
/// own list may be shared (a `Response`'s `raw_headers`, a module constant).
pub(crate) fn start_headers<'py>(message: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
    message_headers(message, true)
}

/// A message's `headers` as a list, put back into the message: a new list
/// when `copy` is set or when they aren't a list already, else the same one.
pub(crate) fn message_headers<'py>(message: &Bound<'py, PyAny>, copy: bool) -> PyResult<Bound<'py, PyList>> {
    let py = message.py();
    let key = intern!(py, "headers");
    let current = match message.cast::<PyDict>() {
        Ok(d) => d.get_item(key)?,
        Err(_) => Some(message.call_method1(intern!(py, "setdefault"), (key, PyList::empty(py)))?),
    };
    if let Some(list) = current.as_ref().and_then(|h| h.cast::<PyList>().ok()).filter(|_| !copy) {
        return Ok(list.clone());
    }
    let list = match current {
        Some(headers) => as_list(&headers)?,
        None => PyList::empty(py),
    };
    message.set_item(key, &list)?;
    Ok(list)
}

/// Adds `fields`, `(name, value)` byte-string tuples (names lowercase, at most
/// 64), to a header list in one pass, names compared ignoring ASCII case, as an
/// app may send `X-Frame-Options`: a field already in the list is left alone
/// or, with `overwrite`, gets the new value at its first place, its later
/// copies removed. The tuples are stored as they are (they are immutable, so
/// one made at construction can go into every response).
pub(crate) fn put_fields(list: &Bound<'_, PyList>, fields: &[&Bound<'_, PyTuple>], overwrite: bool) -> PyResult<()> {
    debug_assert!(fields.len() <= 64);
    let names: Vec<Bound<'_, PyBytes>> =
        fields.iter().map(|f| f.get_item(0)?.cast_into::<PyBytes>().map_err(PyErr::from)).collect::<PyResult<_>>()?;
    // Bit i: field i is already in the list.
    let mut present: u64 = 0;
    let mut duplicates: Vec<usize> = Vec::new();
    for idx in 0..list.len() {
        let item = list.get_item(idx)?;
        let name = match item.cast_exact::<PyTuple>() {
            Ok(t) if t.len() == 2 => t.get_item(0)?,
            _ => pair(&item)?.0,
        };
        let name = value_bytes(&name)?;
        let Some(i) = names.iter().position(|n| n.as_bytes().eq_ignore_ascii_case(&name)) else { continue };
        if present & (1 << i) == 0 {
            present |= 1 << i;
            if overwrite {
                list.set_item(idx, fields[i])?;
            }
        } else if overwrite {
            duplicates.push(idx);
        }
    }
    for idx in duplicates.into_iter().rev() {
        list.del_item(idx)?;
    }
    for (i, field) in fields.iter().enumerate() {
        if present & (1 << i) == 0 {
            list.append(*field)?;
        }
    }
    Ok(())
}

/// `list(obj)`.
pub(crate) fn as_list<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
    // SAFETY: PySequence_List returns a new reference to a list or NULL with an exception set.
    let list = unsafe { Bound::from_owned_ptr_or_err(obj.py(), ffi::PySequence_List(obj.as_ptr()))? };
    list.cast_into::<PyList>().map_err(PyErr::from)
}

/// The bytes of a header value object (normally `bytes`; anything else goes
/// through `bytes(value)`).
pub(crate) fn value_bytes<'a>(value: &'a Bound<'_, PyAny>) -> PyResult<Cow<'a, [u8]>> {
    if let Ok(b) = value.cast::<PyBytes>() {
        return Ok(Cow::Borrowed(b.as_bytes()));
    }
    let py = value.py();
    let bytes = py.get_type::<PyBytes>().call1((value,))?;
    Ok(Cow::Owned(bytes.cast_into::<PyBytes>()?.as_bytes().to_vec()))
}

/// The first value of the field `name` (lowercase ASCII), as a value object.
pub(crate) fn first_value<'py>(list: &Bound<'py, PyList>, name: &[u8]) -> PyResult<Option<Bound<'py, PyAny>>> {
    match find_raw(list, name, 0)? {
        Some(idx) => value_at(list, idx).map(Some),
        None => Ok(None),
    }
}

/// Bytes read as latin-1 text (what `bytes.decode("latin-1")` gives).
pub(crate) fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| b as char).collect()
}

/// Text as latin-1 bytes, or None if a character is outside latin-1.
pub(crate) fn to_latin1(text: &str) -> Option<Vec<u8>> {
    text.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect()
}

/// Python's `str.isspace()` for a character.
pub(crate) fn py_space(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\x0b' | '\x0c' | '\r' | '\x1c'..='\x1f' | ' ' | '\u{85}' | '\u{a0}')
        || (c > '\u{ff}' && c.is_whitespace())
}

/// Python's `str.strip()`.
pub(crate) fn py_strip(text: &str) -> &str {
    text.trim_matches(py_space)
}

/// Python's `str.lower()` (the same mapping as Rust's for every character a
/// latin-1 header can hold).
pub(crate) fn py_lower(text: &str) -> String {
    text.chars().flat_map(char::to_lowercase).collect()
}
