//! `GZipMiddleware`'s compiled parts: the response-header decisions, which
//! `CompressionMiddleware` shares, and Starlette's test for gzip support. Its
//! gzip stream is `encode.rs`'s `CompressStream("gzip", level)`.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use super::encode::{Coding, Stream};
use super::{first_value, latin1, message_headers, py_lower, py_strip, value_bytes};
use crate::headers::{delete_raw, find_raw, set_raw, values_raw};

/// One-shot gzip of `data` at `level` (for benchmarks and tests).
#[pyfunction]
#[pyo3(signature = (data, level=9))]
fn gzip_compress<'py>(py: Python<'py>, data: &Bound<'py, PyAny>, level: i32) -> PyResult<Bound<'py, PyBytes>> {
    Stream::new(Coding::Gzip, level)?.compress(py, data, false)
}

/// The media types a content-type header stands for, as Starlette's
/// `IdentityResponder` derives them: the type, `type/*`, and
/// `application/grpc` for `application/grpc+...`.
fn media_types(content_type: &[u8]) -> Vec<String> {
    let text = latin1(content_type);
    let media = py_lower(py_strip(text.split(';').next().unwrap_or("")));
    let family = format!("{}/*", media.split('/').next().unwrap_or(""));
    let grpc = media.starts_with("application/grpc+");
    let mut out = vec![media, family];
    if grpc {
        out.push("application/grpc".to_string());
    }
    out
}

/// For a response start: makes its `headers` a list (put back into the
/// message) and returns `(headers, passthrough)`, where `passthrough` is true
/// if the response is left alone (it has a Content-Encoding, is a 206, or its
/// content type is excluded).
#[pyfunction]
fn gzip_inspect_start<'py>(message: &Bound<'py, PyAny>, excluded: Vec<String>) -> PyResult<(Bound<'py, PyList>, bool)> {
    let py = message.py();
    // The app's own list is edited (as Starlette's `MutableHeaders(raw=...)` does).
    let list = message_headers(message, false)?;
    if find_raw(&list, b"content-encoding", 0)?.is_some() {
        return Ok((list, true));
    }
    let status = message.get_item(intern!(py, "status"))?;
    if status.eq(206)? {
        return Ok((list, true));
    }
    let content_type = match first_value(&list, b"content-type")? {
        Some(v) => value_bytes(&v)?.into_owned(),
        None => Vec::new(),
    };
    let excluded_hit = media_types(&content_type).iter().any(|m| excluded.iter().any(|e| e == m));
    Ok((list, excluded_hit))
}

/// The header edit before the first body goes out: `Vary: Accept-Encoding`
/// added; if the body was compressed, `Content-Encoding` set and
/// `Content-Length` set to `length` (or removed when `length` is None).
#[pyfunction]
#[pyo3(signature = (headers, encoding, length))]
fn gzip_edit_headers(
    headers: &Bound<'_, PyList>,
    encoding: Option<&Bound<'_, PyBytes>>,
    length: Option<usize>,
) -> PyResult<()> {
    let py = headers.py();
    let mut vary = Vec::new();
    for value in values_raw(headers, b"vary")? {
        vary.extend_from_slice(&value_bytes(&value)?);
        vary.extend_from_slice(b", ");
    }
    vary.extend_from_slice(b"Accept-Encoding");
    set_raw(headers, b"vary", PyBytes::new(py, &vary).into_any())?;
    if let Some(encoding) = encoding {
        set_raw(headers, b"content-encoding", encoding.clone().into_any())?;
        match length {
            Some(n) => set_raw(headers, b"content-length", PyBytes::new(py, n.to_string().as_bytes()).into_any())?,
            None => delete_raw(headers, b"content-length")?,
        }
    }
    Ok(())
}

/// Starlette's test for gzip support: the substring `gzip` in the first
/// Accept-Encoding field.
#[pyfunction]
fn accepts_gzip(scope: &Bound<'_, PyAny>) -> PyResult<bool> {
    let list = super::scope_headers(scope)?;
    Ok(match first_value(&list, b"accept-encoding")? {
        Some(v) => value_bytes(&v)?.windows(4).any(|w| w == b"gzip"),
        None => false,
    })
}

pub fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(gzip_compress, m)?)?;
    m.add_function(wrap_pyfunction!(gzip_inspect_start, m)?)?;
    m.add_function(wrap_pyfunction!(gzip_edit_headers, m)?)?;
    m.add_function(wrap_pyfunction!(accepts_gzip, m)?)?;
    Ok(())
}
