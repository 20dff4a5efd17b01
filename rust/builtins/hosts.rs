//! Host headers: Starlette's `parse_host_header` (the same grammar, checked by
//! hand instead of a regex) and `TrustedHostMiddleware`'s allowed-host matching.
//!
//! The grammar (case-insensitive but for the `v` of an IPvFuture):
//! `reg-name / "[" ( ipv6 / "v" HEX+ "." future+ ) "]"`, then `[":" DIGIT+]`,
//! where a reg-name is `[a-z0-9._~%!$&'()*+,;=-]+`. A bracketed IPv6 address is
//! then checked by Python's own `ipaddress.IPv6Address`, as Starlette does, so
//! the two agree on every literal.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

use super::{first_value, scope_headers, value_bytes};
use crate::headers::find_raw;

fn reg_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"._~%!$&'()*+,;=-".contains(&b)
}

fn future_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"._~!$&'()*+,;=:-".contains(&b)
}

/// A parsed Host header: the host (brackets kept) and the port digits, if any.
pub(crate) struct ParsedHost<'a> {
    pub host: &'a [u8],
    pub port: Option<&'a [u8]>,
}

impl ParsedHost<'_> {
    /// Starlette's `ParsedHost.is_valid_port`.
    pub fn is_valid_port(&self) -> bool {
        match self.port {
            None => true,
            Some(port) => {
                let digits = &port[port.iter().position(|&b| b != b'0').unwrap_or(port.len())..];
                digits.len() <= 5 && digits.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0')) <= 65535
            }
        }
    }

    /// `host` or `host:port`.
    pub fn authority(&self) -> String {
        let mut out = super::latin1(self.host);
        if let Some(port) = self.port {
            out.push(':');
            out.push_str(&super::latin1(port));
        }
        out
    }
}

fn is_ipv6_shape(content: &[u8]) -> bool {
    // [a-f0-9]*:[a-f0-9.:]+
    let Some(colon) = content.iter().position(|&b| b == b':') else {
        return false;
    };
    content[..colon].iter().all(u8::is_ascii_hexdigit)
        && content.len() > colon + 1
        && content[colon + 1..].iter().all(|&b| b.is_ascii_hexdigit() || b == b'.' || b == b':')
}

fn is_future_shape(content: &[u8]) -> bool {
    // (?-i:v)[a-f0-9]+\.[a-z0-9._~!$&'()*+,;=:-]+
    let Some(rest) = content.strip_prefix(b"v") else {
        return false;
    };
    let hex = rest.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    hex > 0 && rest.get(hex) == Some(&b'.') && rest.len() > hex + 1 && rest[hex + 1..].iter().all(|&b| future_char(b))
}

fn ipv6_ok(py: Python<'_>, literal: &[u8]) -> PyResult<bool> {
    static IPV6: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let cls = IPV6.get_or_try_init(py, || -> PyResult<Py<PyAny>> {
        Ok(py.import("ipaddress")?.getattr("IPv6Address")?.unbind())
    })?;
    match cls.bind(py).call1((super::latin1(literal),)) {
        Ok(_) => Ok(true),
        Err(e) if e.is_instance_of::<pyo3::exceptions::PyValueError>(py) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Starlette's `parse_host_header` on the header's bytes; None if invalid.
pub(crate) fn parse_host<'a>(py: Python<'_>, header: &'a [u8]) -> PyResult<Option<ParsedHost<'a>>> {
    let host_end = if header.first() == Some(&b'[') {
        let Some(close) = header.iter().position(|&b| b == b']') else {
            return Ok(None);
        };
        let content = &header[1..close];
        if is_ipv6_shape(content) {
            if !ipv6_ok(py, content)? {
                return Ok(None);
            }
        } else if !is_future_shape(content) {
            return Ok(None);
        }
        close + 1
    } else {
        let n = header.iter().take_while(|&&b| reg_name_char(b)).count();
        if n == 0 {
            return Ok(None);
        }
        n
    };
    let (host, rest) = header.split_at(host_end);
    let port = match rest {
        [] => None,
        [b':', digits @ ..] if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) => Some(digits),
        _ => return Ok(None),
    };
    Ok(Some(ParsedHost { host, port }))
}

/// What `TrustedHostMiddleware` does with a request.
const PASS: u8 = 0;
const INVALID: u8 = 1;
const WWW_REDIRECT: u8 = 2;

/// One `TrustedHostMiddleware`'s allowed hosts (lowercased patterns).
#[pyclass(module = "ferroware._core", frozen)]
pub struct HostPolicy {
    patterns: Vec<String>,
}

#[pymethods]
impl HostPolicy {
    #[new]
    fn new(patterns: Vec<String>) -> Self {
        HostPolicy { patterns }
    }

    /// 0: let the request through; 1: answer 400 "Invalid host header";
    /// 2: the host is allowed with a `www.` prefix (redirect, if enabled).
    fn check(&self, py: Python<'_>, scope: &Bound<'_, PyAny>) -> PyResult<u8> {
        let list = scope_headers(scope)?;
        let Some(value) = first_value(&list, b"host")? else {
            return Ok(INVALID);
        };
        let bytes = value_bytes(&value)?;
        let Some(parsed) = parse_host(py, &bytes)? else {
            return Ok(INVALID);
        };
        // The grammar admits ASCII only: lowercasing bytes is Python's str.lower().
        let host = String::from_utf8(parsed.host.to_ascii_lowercase()).unwrap_or_default();
        let mut www = false;
        for pattern in &self.patterns {
            if host == *pattern || (pattern.starts_with('*') && host.ends_with(&pattern[1..])) {
                return Ok(PASS);
            }
            if pattern.len() == host.len() + 4 && pattern.starts_with("www.") && pattern[4..] == host {
                www = true;
            }
        }
        Ok(if www { WWW_REDIRECT } else { INVALID })
    }
}

/// The authority Starlette's `URL(scope=scope)` takes from the first `host`
/// field, if that field parses and its port is valid; else None.
#[pyfunction]
fn host_authority(py: Python<'_>, headers: &Bound<'_, PyAny>) -> PyResult<Option<String>> {
    let list = match headers.cast::<pyo3::types::PyList>() {
        Ok(l) => l.clone(),
        Err(_) => super::as_list(headers)?,
    };
    let Some(idx) = find_raw(&list, b"host", 0)? else {
        return Ok(None);
    };
    let value = crate::headers::value_at(&list, idx)?;
    let bytes = value_bytes(&value)?;
    Ok(match parse_host(py, &bytes)? {
        Some(parsed) if parsed.is_valid_port() => Some(parsed.authority()),
        _ => None,
    })
}

/// `parse_host_header`, for tests: `(host, port)` or None.
#[pyfunction]
fn parse_host_header(py: Python<'_>, header: &Bound<'_, PyAny>) -> PyResult<Option<(String, Option<String>)>> {
    let bytes: Vec<u8> = match header.extract::<String>() {
        Ok(text) => match super::to_latin1(&text) {
            Some(b) => b,
            None => return Ok(None),
        },
        Err(_) => value_bytes(header)?.into_owned(),
    };
    let _ = intern!(py, "host");
    Ok(parse_host(py, &bytes)?.map(|p| (super::latin1(p.host), p.port.map(super::latin1))))
}

pub fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<HostPolicy>()?;
    m.add_function(wrap_pyfunction!(host_authority, m)?)?;
    m.add_function(wrap_pyfunction!(parse_host_header, m)?)?;
    Ok(())
}
