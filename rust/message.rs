//! Response messages on their way from the downstream app to the middleware.
//!
//! An app sends ASGI dicts. Between two ferroware layers, though, the inner
//! layer relays its response to a channel of the outer one, and both sides are
//! compiled: there the message travels as plain fields, and a dict is made only
//! if Python code is on the receiving end.

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};

pub enum Message {
    /// As the app sent it.
    Asgi(Py<PyAny>),
    /// `http.response.start`, from a ferroware layer.
    Start { status: Py<PyAny>, headers: Py<PyAny> },
    /// `http.response.body`, from a ferroware layer; `chunk` is None for an empty body.
    Body { chunk: Option<Py<PyAny>>, more: bool },
}

/// What a message says, as the driver needs it.
pub enum Kind<'py> {
    /// Status, and the header list (the sender's own, or a new one if it sent none).
    Start {
        status: Bound<'py, PyAny>,
        headers: Bound<'py, PyAny>,
    },
    /// The body if non-empty, and `more_body`.
    Body {
        chunk: Option<Bound<'py, PyAny>>,
        more: bool,
    },
    PathSend(Bound<'py, PyAny>),
    Debug {
        info: Bound<'py, PyAny>,
    },
    EarlyHint(Bound<'py, PyAny>),
    Other(String),
}

impl Message {
    pub fn kind<'py>(&self, py: Python<'py>) -> PyResult<Kind<'py>> {
        match self {
            Message::Start { status, headers } => {
                Ok(Kind::Start { status: status.bind(py).clone(), headers: headers.bind(py).clone() })
            }
            Message::Body { chunk, more } => {
                Ok(Kind::Body { chunk: chunk.as_ref().map(|c| c.bind(py).clone()), more: *more })
            }
            Message::Asgi(message) => parse(message.bind(py)),
        }
    }

    /// The ASGI dict, for Python code on the receiving end.
    pub fn into_asgi(self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let dict = PyDict::new(py);
        match self {
            Message::Asgi(message) => return Ok(message),
            Message::Start { status, headers } => {
                dict.set_item(intern!(py, "type"), intern!(py, "http.response.start"))?;
                dict.set_item(intern!(py, "status"), status)?;
                dict.set_item(intern!(py, "headers"), headers)?;
            }
            Message::Body { chunk, more } => {
                dict.set_item(intern!(py, "type"), intern!(py, "http.response.body"))?;
                match chunk {
                    Some(chunk) => dict.set_item(intern!(py, "body"), chunk)?,
                    None => dict.set_item(intern!(py, "body"), PyBytes::new(py, b""))?,
                }
                dict.set_item(intern!(py, "more_body"), more)?;
            }
        }
        Ok(dict.into_any().unbind())
    }
}

fn parse<'py>(message: &Bound<'py, PyAny>) -> PyResult<Kind<'py>> {
    let py = message.py();
    let kind = match get_field(message, intern!(py, "type"))? {
        Some(kind) => {
            kind.cast_into::<PyString>().map_err(|_| PyTypeError::new_err("ASGI message 'type' must be a str"))?
        }
        None => return Err(PyRuntimeError::new_err("ASGI message without a 'type' key")),
    };
    Ok(match kind.to_str()? {
        "http.response.start" => Kind::Start {
            status: message.get_item(intern!(py, "status"))?,
            headers: match get_field(message, intern!(py, "headers"))? {
                Some(headers) => headers,
                None => PyList::empty(py).into_any(),
            },
        },
        "http.response.body" => {
            let more = match get_field(message, intern!(py, "more_body"))? {
                Some(flag) => flag.is_truthy()?,
                None => false,
            };
            let chunk = match get_field(message, intern!(py, "body"))? {
                Some(body) => match body.cast::<PyBytes>() {
                    Ok(bytes) => (!bytes.as_bytes().is_empty()).then_some(body),
                    Err(_) => match body.len() {
                        Ok(0) => None,
                        Ok(_) => Some(body),
                        Err(_) => return Err(PyTypeError::new_err("ASGI 'http.response.body' body must be bytes")),
                    },
                },
                None => None,
            };
            Kind::Body { chunk, more }
        }
        "http.response.pathsend" => Kind::PathSend(message.clone()),
        "http.response.debug" => Kind::Debug { info: message.get_item(intern!(py, "info"))? },
        "http.response.early_hint" => Kind::EarlyHint(message.clone()),
        other => Kind::Other(other.to_owned()),
    })
}

/// `message.get(key)`, None when absent or None; fast for dicts.
pub fn get_field<'py>(message: &Bound<'py, PyAny>, key: &Bound<'py, PyString>) -> PyResult<Option<Bound<'py, PyAny>>> {
    let value = match message.cast::<PyDict>() {
        Ok(dict) => dict.get_item(key)?,
        Err(_) => Some(message.call_method1(intern!(message.py(), "get"), (key,))?),
    };
    Ok(value.filter(|v| !v.is_none()))
}
