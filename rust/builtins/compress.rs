//! `CompressionMiddleware`'s request side: choosing a response coding from the
//! request's `Accept-Encoding` fields (RFC 9110 §12.5.3). The response side
//! (streams, header edits) is shared with `GZipMiddleware`: `encode.rs` and
//! `gzip.rs`.
//!
//! The rules, for every coding the server offers:
//!
//! - a coding's weight is its own entry's `q` (1 when absent), else that of
//!   `*`, else 0; `q=0` means "not acceptable"; `x-gzip` is `gzip`
//!   (§8.4.1.3); names are case-insensitive, whitespace around entries and
//!   parameters is ignored, several fields are read as one list;
//! - an entry whose `q` is not an RFC qvalue (`0`, `0.5`, `1.000`; at most
//!   three decimals, at most 1) is ignored, as are parameters other than `q`
//!   and codings nobody here produces; a coding listed twice gets its lower
//!   weight (a client that once said "not this" is taken at its word);
//! - the highest weight wins, ties going to the server's preference order;
//!   `identity` only competes when listed explicitly, and wins over codings
//!   of lower weight;
//! - no field, an empty field, or nothing acceptable: no coding.
//!
//! The parser works on bytes, so non-UTF-8 and huge values cost one linear
//! pass and never fail.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::encode::Coding;
use super::{scope_headers, value_bytes};
use crate::headers::values_raw;

/// A weight in thousandths: q=0.5 is 500.
type Weight = u16;

/// What a client's Accept-Encoding says about the codings that matter here.
#[derive(Debug, Default, PartialEq)]
struct Weights {
    /// Indexed like `Coding::ALL`.
    codings: [Option<Weight>; 3],
    identity: Option<Weight>,
    any: Option<Weight>,
}

fn trim(bytes: &[u8]) -> &[u8] {
    bytes.trim_ascii()
}

/// An RFC 9110 qvalue: `"0" ["." 0*3DIGIT] / "1" ["." 0*3("0")]`.
fn parse_qvalue(text: &[u8]) -> Option<Weight> {
    let (whole, fraction) = match text.iter().position(|&b| b == b'.') {
        Some(dot) => (&text[..dot], &text[dot + 1..]),
        None => (text, &[][..]),
    };
    if fraction.len() > 3 || !fraction.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let thousandths =
        fraction.iter().chain(std::iter::repeat(&b'0')).take(3).fold(0, |n, &d| n * 10 + Weight::from(d - b'0'));
    match whole {
        b"0" => Some(thousandths),
        b"1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// One list entry, `coding *( OWS ";" OWS param )`: its name and weight, or
/// None if its weight is malformed.
fn parse_entry(entry: &[u8]) -> Option<(&[u8], Weight)> {
    let mut parts = entry.split(|&b| b == b';');
    let name = trim(parts.next()?);
    let mut weight = 1000;
    for param in parts {
        let Some(eq) = param.iter().position(|&b| b == b'=') else { continue };
        if trim(&param[..eq]).eq_ignore_ascii_case(b"q") {
            weight = parse_qvalue(trim(&param[eq + 1..]))?;
        }
    }
    Some((name, weight))
}

fn parse_accept_encoding<'a>(fields: impl IntoIterator<Item = &'a [u8]>) -> Weights {
    let mut weights = Weights::default();
    for field in fields {
        for entry in field.split(|&b| b == b',') {
            let Some((name, weight)) = parse_entry(entry) else { continue };
            let slot = if name == b"*" {
                &mut weights.any
            } else if name.eq_ignore_ascii_case(b"identity") {
                &mut weights.identity
            } else if name.eq_ignore_ascii_case(b"x-gzip") {
                &mut weights.codings[index_of(Coding::Gzip)]
            } else {
                match Coding::ALL.iter().position(|c| name.eq_ignore_ascii_case(c.name().as_bytes())) {
                    Some(i) => &mut weights.codings[i],
                    None => continue,
                }
            };
            *slot = Some(slot.map_or(weight, |w| w.min(weight)));
        }
    }
    weights
}

fn index_of(coding: Coding) -> usize {
    Coding::ALL.iter().position(|&c| c == coding).unwrap_or(0)
}

/// The coding to send, from the server's codings in preference order.
fn choose(weights: &Weights, preference: &[Coding]) -> Option<Coding> {
    let mut best: Option<(Coding, Weight)> = None;
    for &coding in preference {
        let weight = weights.codings[index_of(coding)].or(weights.any).unwrap_or(0);
        // Strictly greater: on a tie the earlier (preferred) coding stays.
        if weight > 0 && best.is_none_or(|(_, w)| weight > w) {
            best = Some((coding, weight));
        }
    }
    let (coding, weight) = best?;
    match weights.identity {
        Some(identity) if identity > weight => None,
        _ => Some(coding),
    }
}

/// One `CompressionMiddleware`'s codings, in the server's preference order.
#[pyclass(module = "ferroware._core", frozen)]
pub struct EncodingPolicy {
    preference: Vec<Coding>,
}

#[pymethods]
impl EncodingPolicy {
    #[new]
    fn new(preference: Vec<String>) -> PyResult<Self> {
        if preference.is_empty() {
            return Err(PyValueError::new_err("preference must name at least one coding"));
        }
        let mut codings = Vec::new();
        for name in &preference {
            let coding = Coding::from_name(name).ok_or_else(|| {
                PyValueError::new_err(format!(
                    "Unknown coding in preference: {name:?} (expected \"zstd\", \"br\" or \"gzip\")"
                ))
            })?;
            if codings.contains(&coding) {
                return Err(PyValueError::new_err(format!("Coding named twice in preference: {name:?}")));
            }
            codings.push(coding);
        }
        Ok(EncodingPolicy { preference: codings })
    }

    /// The coding for a request's response ("zstd", "br", "gzip"), or None to send it as is.
    fn choose(&self, scope: &Bound<'_, PyAny>) -> PyResult<Option<&'static str>> {
        let list = scope_headers(scope)?;
        let values = values_raw(&list, b"accept-encoding")?;
        if values.is_empty() {
            return Ok(None);
        }
        let bytes = values.iter().map(|v| value_bytes(v)).collect::<PyResult<Vec<_>>>()?;
        let weights = parse_accept_encoding(bytes.iter().map(|b| &b[..]));
        Ok(choose(&weights, &self.preference).map(Coding::name))
    }
}

pub fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<EncodingPolicy>()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: [Coding; 3] = [Coding::Zstd, Coding::Br, Coding::Gzip];

    fn pick(header: &str) -> Option<&'static str> {
        choose(&parse_accept_encoding([header.as_bytes()]), &SERVER).map(Coding::name)
    }

    #[test]
    fn qvalues() {
        assert_eq!(parse_qvalue(b"0"), Some(0));
        assert_eq!(parse_qvalue(b"0.5"), Some(500));
        assert_eq!(parse_qvalue(b"0.125"), Some(125));
        assert_eq!(parse_qvalue(b"1"), Some(1000));
        assert_eq!(parse_qvalue(b"1.000"), Some(1000));
        assert_eq!(parse_qvalue(b"1."), Some(1000));
        for bad in [&b""[..], b"1.5", b"2", b"0.1234", b".5", b"abc", b"-0", b"0.5x", b"01"] {
            assert_eq!(parse_qvalue(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn negotiation() {
        assert_eq!(pick("gzip, deflate, br, zstd"), Some("zstd"));
        assert_eq!(pick("gzip;q=0.5, br;q=0.8"), Some("br"));
        assert_eq!(pick("GZIP ; Q=1 , br;q=0.9"), Some("gzip"));
        assert_eq!(pick("*"), Some("zstd"));
        assert_eq!(pick("*, zstd;q=0"), Some("br"));
        assert_eq!(pick("*;q=0"), None);
        assert_eq!(pick("x-gzip"), Some("gzip"));
        assert_eq!(pick("gzip;q=0.5, identity"), None);
        assert_eq!(pick("gzip, identity"), Some("gzip"));
        assert_eq!(pick("gzip;q=2, br;q=0.1"), Some("br"));
        assert_eq!(pick("gzip, gzip;q=0"), None);
        assert_eq!(pick(""), None);
        assert_eq!(pick(",,;;=,"), None);
        assert_eq!(pick("deflate, compress"), None);
    }

    #[test]
    fn fields_are_one_list() {
        let weights = parse_accept_encoding([&b"gzip;q=0.2"[..], b"br;q=0.3"]);
        assert_eq!(choose(&weights, &SERVER), Some(Coding::Br));
    }
}
