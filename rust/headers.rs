//! `Headers` and `MutableHeaders`: Starlette's case-insensitive header multidicts,
//! compiled.
//!
//! The fields live in one Python list of `(name, value)` byte-string tuples, the
//! very list the caller handed in (`raw=`) or the one put back into the scope
//! (`scope=`), so edits reach the message that is sent. There is no second copy
//! on the Rust side: every operation scans that list.
//!
//! Behaviour follows Starlette 1.10.0's classes, with one deliberate difference:
//! whatever turns text into a header field (`MutableHeaders.__setitem__`,
//! `append`, `setdefault`, `update`, `|`, `|=`, `add_vary_header`, and the
//! `headers=` mapping of the constructors) refuses a name that is not an
//! RFC 9110 token and a value containing CR, LF or NUL, with `ValueError`, so no
//! response splitting can be produced through them. Reading is unchanged.

use pyo3::exceptions::{PyAssertionError, PyKeyError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple, PyType};
use pyo3::{intern, IntoPyObjectExt};

use crate::builtins::as_list;
use crate::field_cache;
use crate::objects::{instance_dict, own_attr};

// --------------------------------------------------------------------------- names and values

/// RFC 9110 `tchar`: `!#$%&'*+-.^_`|~`, digits and letters.
const fn token_table() -> [bool; 256] {
    let mut table = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        table[c] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~'
            );
        c += 1;
    }
    table
}

pub(crate) static TCHAR: [bool; 256] = token_table();

/// Python's `repr` of the bytes read as latin-1 text, for error messages.
fn latin1_repr(py: Python<'_>, bytes: &[u8]) -> String {
    let text: String = bytes.iter().map(|&b| b as char).collect();
    match PyString::new(py, &text).repr() {
        Ok(r) => r.to_string(),
        Err(_) => format!("{text:?}"),
    }
}

/// `ValueError` unless `name` (already lowercased and encoded) is an RFC 9110 token.
pub(crate) fn check_name(py: Python<'_>, name: &[u8]) -> PyResult<()> {
    if name.is_empty() {
        return Err(PyValueError::new_err("invalid header name '': empty (a field name must be an RFC 9110 token)"));
    }
    if let Some(pos) = name.iter().position(|&b| !TCHAR[b as usize]) {
        return Err(PyValueError::new_err(format!(
            "invalid header name {}: character {} at position {} is not allowed in an RFC 9110 token \
             (letters, digits and !#$%&'*+-.^_`|~ only)",
            latin1_repr(py, name),
            latin1_repr(py, &name[pos..=pos]),
            pos,
        )));
    }
    Ok(())
}

/// A byte a field value must not contain: CR, LF or NUL could split the response.
#[inline]
pub(crate) fn splits_response(b: &u8) -> bool {
    matches!(b, b'\r' | b'\n' | 0)
}

/// `ValueError` if `value` contains CR, LF or NUL (it could split the response).
pub(crate) fn check_value(py: Python<'_>, name: &[u8], value: &[u8]) -> PyResult<()> {
    if let Some(pos) = value.iter().position(splits_response) {
        let what = match value[pos] {
            b'\r' => "CR (\\r)",
            b'\n' => "LF (\\n)",
            _ => "NUL (\\0)",
        };
        return Err(PyValueError::new_err(format!(
            "invalid value for header {}: it contains {} at position {}, which is not allowed in a field value \
             (it could split the response)",
            latin1_repr(py, name),
            what,
            pos,
        )));
    }
    Ok(())
}

/// Both checks, for a field about to be stored.
fn check_field(py: Python<'_>, name: &Name<'_, '_>, value: &[u8]) -> PyResult<()> {
    // Case doesn't change whether a byte is a tchar: check the name as given
    // (no lowercased copy) and only build one for an error message.
    let ok_name = match name {
        Name::Ascii(n) => !n.is_empty() && n.iter().all(|&b| TCHAR[b as usize]),
        Name::Encoded(b) => {
            let n = b.as_bytes();
            !n.is_empty() && n.iter().all(|&b| TCHAR[b as usize])
        }
    };
    let ok_value = !value.iter().any(splits_response);
    if ok_name && ok_value {
        return Ok(());
    }
    name.with_bytes(|n| {
        check_name(py, n)?;
        check_value(py, n, value)
    })
}

/// A 2-tuple `(a, b)`, built directly.
pub(crate) fn pair_tuple<'py>(
    py: Python<'py>,
    a: Bound<'py, PyAny>,
    b: Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyTuple>> {
    // SAFETY: PyTuple_New returns a new tuple of 2 NULL slots or NULL with an
    // exception set; PyTuple_SET_ITEM steals the references we pass it.
    unsafe {
        let t = ffi::PyTuple_New(2);
        if t.is_null() {
            return Err(PyErr::fetch(py));
        }
        ffi::PyTuple_SET_ITEM(t, 0, a.into_ptr());
        ffi::PyTuple_SET_ITEM(t, 1, b.into_ptr());
        Ok(Bound::from_owned_ptr(py, t).cast_into_unchecked())
    }
}

/// A header name to look for: what Starlette computes as `key.lower().encode("latin-1")`.
pub(crate) enum Name<'a, 'py> {
    /// An ASCII `str`, borrowed; it matches its ASCII lowercase form.
    Ascii(&'a [u8]),
    /// Anything else, lowered and encoded by Python itself (same result, same errors).
    Encoded(Bound<'py, PyBytes>),
}

impl<'a, 'py> Name<'a, 'py> {
    fn new(key: &'a Bound<'py, PyAny>) -> PyResult<Self> {
        if let Ok(s) = key.cast_exact::<PyString>() {
            // For an ASCII string this is the string's own buffer, no copy.
            if let Ok(text) = s.to_str() {
                if text.is_ascii() {
                    return Ok(Name::Ascii(text.as_bytes()));
                }
            }
        }
        let py = key.py();
        let lowered = key.call_method0(intern!(py, "lower"))?;
        let encoded = lowered.call_method1(intern!(py, "encode"), (intern!(py, "latin-1"),))?;
        match encoded.cast_into::<PyBytes>() {
            Ok(bytes) => Ok(Name::Encoded(bytes)),
            Err(e) => Err(PyTypeError::new_err(format!(
                "header name encoded to {}, expected bytes",
                e.into_inner().get_type().name()?
            ))),
        }
    }

    /// Whether stored name bytes equal this name.
    #[inline]
    fn matches_bytes(&self, stored: &[u8]) -> bool {
        match self {
            Name::Ascii(n) => {
                stored.len() == n.len() && stored.iter().zip(n.iter()).all(|(s, n)| *s == n.to_ascii_lowercase())
            }
            Name::Encoded(n) => stored == n.as_bytes(),
        }
    }

    /// Whether a stored name equals this one (Starlette: `item_key == get_header_key`).
    #[inline]
    fn matches(&self, key: &Bound<'py, PyAny>) -> PyResult<bool> {
        if let Ok(stored) = key.cast::<PyBytes>() {
            return Ok(self.matches_bytes(stored.as_bytes()));
        }
        // Not bytes (a bytearray, say): let Python compare, as Starlette does.
        key.eq(self.to_bytes(key.py()))
    }

    /// The name as a new bytes object (lowercased, latin-1).
    fn to_bytes(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        match self {
            Name::Ascii(n) => lower_bytes(py, n),
            Name::Encoded(b) => b.clone(),
        }
    }

    /// The encoded, lowercased name, for validation.
    fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        match self {
            Name::Ascii(n) => {
                if n.iter().any(u8::is_ascii_uppercase) {
                    f(&n.to_ascii_lowercase())
                } else {
                    f(n)
                }
            }
            Name::Encoded(b) => f(b.as_bytes()),
        }
    }
}

fn lower_bytes<'py>(py: Python<'py>, ascii: &[u8]) -> Bound<'py, PyBytes> {
    // PyBytes::new_with zero-fills and hands us the buffer; writing to it can't fail.
    match PyBytes::new_with(py, ascii.len(), |buf| {
        for (d, s) in buf.iter_mut().zip(ascii) {
            *d = s.to_ascii_lowercase();
        }
        Ok(())
    }) {
        Ok(b) => b,
        Err(_) => PyBytes::new(py, &ascii.to_ascii_lowercase()),
    }
}

/// `value.encode("latin-1")`, exactly as Python does it (same errors).
fn encode_value<'py>(value: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    let py = value.py();
    if value.is_exact_instance_of::<PyString>() {
        // SAFETY: `value` is a live str; the call returns a new reference to a
        // bytes object or NULL with an exception set.
        let encoded = unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyUnicode_AsLatin1String(value.as_ptr()))? };
        return encoded.cast_into::<PyBytes>().map_err(PyErr::from);
    }
    let encoded = value.call_method1(intern!(py, "encode"), (intern!(py, "latin-1"),))?;
    match encoded.cast_into::<PyBytes>() {
        Ok(bytes) => Ok(bytes),
        Err(e) => Err(PyTypeError::new_err(format!(
            "header value encoded to {}, expected bytes",
            e.into_inner().get_type().name()?
        ))),
    }
}

/// `raw.decode("latin-1")`.
pub(crate) fn decode<'py>(raw: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let py = raw.py();
    if let Ok(bytes) = raw.cast::<PyBytes>() {
        let data = bytes.as_bytes();
        // SAFETY: the pointer and length describe `data`, alive for the call; the
        // call returns a new reference or NULL with an exception set.
        return unsafe {
            Bound::from_owned_ptr_or_err(
                py,
                ffi::PyUnicode_DecodeLatin1(data.as_ptr().cast(), data.len() as ffi::Py_ssize_t, std::ptr::null()),
            )
        };
    }
    raw.call_method1(intern!(py, "decode"), (intern!(py, "latin-1"),))
}

/// `name, value = item`, with Python's unpacking errors.
#[inline]
pub(crate) fn pair<'py>(item: &Bound<'py, PyAny>) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    if let Ok(t) = item.cast::<PyTuple>() {
        if t.len() == 2 {
            return Ok((t.get_item(0)?, t.get_item(1)?));
        }
        return Err(unpack_error(t.len()));
    }
    if let Ok(l) = item.cast::<PyList>() {
        if l.len() == 2 {
            return Ok((l.get_item(0)?, l.get_item(1)?));
        }
        return Err(unpack_error(l.len()));
    }
    let mut iter = match item.try_iter() {
        Ok(iter) => iter,
        Err(_) => {
            return Err(PyTypeError::new_err(format!("cannot unpack non-iterable {} object", item.get_type().name()?)))
        }
    };
    let first = iter.next().transpose()?;
    let second = iter.next().transpose()?;
    match (first, second) {
        (Some(a), Some(b)) => match iter.next().transpose()? {
            None => Ok((a, b)),
            Some(_) => Err(PyValueError::new_err("too many values to unpack (expected 2)")),
        },
        (Some(_), None) => Err(unpack_error(1)),
        _ => Err(unpack_error(0)),
    }
}

fn unpack_error(got: usize) -> PyErr {
    if got > 2 {
        PyValueError::new_err("too many values to unpack (expected 2)")
    } else {
        PyValueError::new_err(format!("not enough values to unpack (expected 2, got {got})"))
    }
}

/// Index of the first field at or after `start` named `name` (Starlette's
/// `for key, value in list: if key == name`), or `None`.
///
/// The common shape, a 2-tuple whose name is exact `bytes`, is read through
/// borrowed pointers with no reference counting; anything else goes through
/// `pair` and `Name::matches`, which may run Python code, so the list length is
/// re-read at every step.
pub(crate) fn find_index(list: &Bound<'_, PyList>, name: &Name<'_, '_>, start: usize) -> PyResult<Option<usize>> {
    let mut i = start;
    loop {
        if i >= list.len() {
            return Ok(None);
        }
        // SAFETY: `i` is within the list's current length and we hold the GIL;
        // the borrowed pointers are only used until the next Python call.
        let fast = unsafe {
            let item = ffi::PyList_GET_ITEM(list.as_ptr(), i as ffi::Py_ssize_t);
            if ffi::PyTuple_CheckExact(item) != 0 && ffi::PyTuple_GET_SIZE(item) == 2 {
                let key = ffi::PyTuple_GET_ITEM(item, 0);
                if ffi::PyBytes_CheckExact(key) != 0 {
                    let len = ffi::Py_SIZE(key) as usize;
                    let data = std::slice::from_raw_parts(ffi::PyBytes_AS_STRING(key).cast::<u8>(), len);
                    Some(name.matches_bytes(data))
                } else {
                    None
                }
            } else {
                None
            }
        };
        let hit = match fast {
            Some(hit) => hit,
            None => {
                let item = list.get_item(i)?;
                let (k, _) = pair(&item)?;
                name.matches(&k)?
            }
        };
        if hit {
            return Ok(Some(i));
        }
        i += 1;
    }
}

/// The value of the field at `idx` (found by `find_index` just before).
pub(crate) fn value_at<'py>(list: &Bound<'py, PyList>, idx: usize) -> PyResult<Bound<'py, PyAny>> {
    let item = list.get_item(idx)?;
    if let Ok(t) = item.cast_exact::<PyTuple>() {
        if t.len() == 2 {
            return t.get_item(1);
        }
    }
    Ok(pair(&item)?.1)
}

/// Indexes of every field named `name`.
fn find_all(list: &Bound<'_, PyList>, name: &Name<'_, '_>) -> PyResult<Vec<usize>> {
    let mut found = Vec::new();
    let mut start = 0;
    while let Some(idx) = find_index(list, name, start)? {
        found.push(idx);
        start = idx + 1;
    }
    Ok(found)
}

fn is_mapping(obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    static MAPPING: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    if obj.is_instance_of::<PyDict>() || obj.is_instance_of::<Headers>() {
        return Ok(true);
    }
    obj.is_instance(MAPPING.import(obj.py(), "collections.abc", "Mapping")?)
}

/// Calls `f(name, value)` for each pair of `other.items()` (a dict's directly).
fn for_each_item<'py>(
    other: &Bound<'py, PyAny>,
    mut f: impl FnMut(&Bound<'py, PyAny>, &Bound<'py, PyAny>) -> PyResult<()>,
) -> PyResult<()> {
    if let Ok(dict) = other.cast_exact::<PyDict>() {
        for (k, v) in dict.iter() {
            f(&k, &v)?;
        }
        return Ok(());
    }
    let items = other.call_method0(intern!(other.py(), "items"))?;
    for item in items.try_iter()? {
        let (k, v) = pair(&item?)?;
        f(&k, &v)?;
    }
    Ok(())
}

// --------------------------------------------------------------------------- operations on the list

/// The `(name, value)` tuple to store, validated.
fn field<'py>(key: &Bound<'py, PyAny>, value: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyTuple>> {
    let py = key.py();
    let name = Name::new(key)?;
    let encoded = encode_value(value)?;
    check_field(py, &name, encoded.as_bytes())?;
    pair_tuple(py, name.to_bytes(py).into_any(), encoded.into_any())
}

/// `field`, reusing the tuple built last time for the same two `str` objects
/// (see `field_cache`): an app appends the same literals over and over.
fn cached_field<'py>(key: &Bound<'py, PyAny>, value: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyTuple>> {
    let (Ok(key_str), Ok(value_str)) = (key.cast_exact::<PyString>(), value.cast_exact::<PyString>()) else {
        return field(key, value);
    };
    if let Some(hit) = field_cache::lookup(key_str, value_str) {
        return Ok(hit);
    }
    let built = match field_cache::lookup_name(key_str) {
        // A name seen before (so valid): only the value is new.
        Some(name) => {
            let encoded = encode_value(value)?;
            check_value(key.py(), name.as_bytes(), encoded.as_bytes())?;
            pair_tuple(key.py(), name.into_any(), encoded.into_any())?
        }
        None => {
            let built = field(key, value)?;
            if let Ok(name) = built.get_item(0)?.cast_into::<PyBytes>() {
                field_cache::store_name(key_str, &name);
            }
            built
        }
    };
    field_cache::store(key_str, value_str, &built);
    Ok(built)
}

fn set_field(list: &Bound<'_, PyList>, key: &Bound<'_, PyAny>, value: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = list.py();
    let name = Name::new(key)?;
    let value = encode_value(value)?;
    check_field(key.py(), &name, value.as_bytes())?;
    match find_index(list, &name, 0)? {
        Some(first) => {
            let mut later = Vec::new();
            let mut start = first + 1;
            while let Some(idx) = find_index(list, &name, start)? {
                later.push(idx);
                start = idx + 1;
            }
            for idx in later.into_iter().rev() {
                list.del_item(idx)?;
            }
            // Reuse the stored name object when it is exactly the bytes we'd store.
            let (stored, _) = pair(&list.get_item(first)?)?;
            let key = match stored.cast_exact::<PyBytes>() {
                Ok(b) if name.with_bytes(|n| b.as_bytes() == n) => stored,
                _ => name.to_bytes(py).into_any(),
            };
            list.set_item(first, pair_tuple(py, key, value.into_any())?)
        }
        None => list.append(pair_tuple(py, name.to_bytes(py).into_any(), value.into_any())?),
    }
}

fn find<'py>(list: &Bound<'py, PyList>, key: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyAny>>> {
    let name = Name::new(key)?;
    match find_index(list, &name, 0)? {
        Some(idx) => value_at(list, idx).map(Some),
        None => Ok(None),
    }
}

fn contains(list: &Bound<'_, PyList>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
    let name = Name::new(key)?;
    Ok(find_index(list, &name, 0)?.is_some())
}

fn getlist<'py>(list: &Bound<'py, PyList>, key: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
    let name = Name::new(key)?;
    let out = PyList::empty(list.py());
    let mut start = 0;
    while let Some(idx) = find_index(list, &name, start)? {
        out.append(decode(&value_at(list, idx)?)?)?;
        start = idx + 1;
    }
    Ok(out)
}

/// A list of `f(name, value)` over the fields.
fn collect<'py>(
    list: &Bound<'py, PyList>,
    f: impl Fn(Bound<'py, PyAny>, Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyList>> {
    let out = PyList::empty(list.py());
    for item in list.iter() {
        let (k, v) = pair(&item)?;
        out.append(f(k, v)?)?;
    }
    Ok(out)
}

fn items<'py>(list: &Bound<'py, PyList>) -> PyResult<Bound<'py, PyList>> {
    collect(list, |k, v| PyTuple::new(k.py(), [decode(&k)?, decode(&v)?]).map(Bound::into_any))
}

fn keys<'py>(list: &Bound<'py, PyList>) -> PyResult<Bound<'py, PyList>> {
    collect(list, |k, _| decode(&k))
}

/// Whether two lists hold the same fields in any order (Starlette: `sorted(a) == sorted(b)`).
fn same_fields(a: &Bound<'_, PyList>, b: &Bound<'_, PyList>) -> PyResult<bool> {
    fn byte_pairs<'py>(list: &Bound<'py, PyList>) -> Option<Vec<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)>> {
        let mut out = Vec::with_capacity(list.len());
        for item in list.iter() {
            let t = item.cast_exact::<PyTuple>().ok()?;
            if t.len() != 2 {
                return None;
            }
            let k = t.get_item(0).ok()?.cast_into_exact::<PyBytes>().ok()?;
            let v = t.get_item(1).ok()?.cast_into_exact::<PyBytes>().ok()?;
            out.push((k, v));
        }
        Some(out)
    }
    if let (Some(mut x), Some(mut y)) = (byte_pairs(a), byte_pairs(b)) {
        x.sort_by(|p, q| (p.0.as_bytes(), p.1.as_bytes()).cmp(&(q.0.as_bytes(), q.1.as_bytes())));
        y.sort_by(|p, q| (p.0.as_bytes(), p.1.as_bytes()).cmp(&(q.0.as_bytes(), q.1.as_bytes())));
        return Ok(x.len() == y.len()
            && x.iter()
                .zip(y.iter())
                .all(|(p, q)| p.0.as_bytes() == q.0.as_bytes() && p.1.as_bytes() == q.1.as_bytes()));
    }
    // Anything unusual in the lists: let Python sort and compare them.
    let py = a.py();
    let sorted = py.import(intern!(py, "builtins"))?.getattr(intern!(py, "sorted"))?;
    sorted.call1((a,))?.eq(sorted.call1((b,))?)
}

// --------------------------------------------------------------------------- for the compiled middleware
//
// `ferroware.middleware` edits response header lists with names it already
// holds as lowercase ASCII bytes: the same scans as above, without the
// str-to-bytes step. No validation: these set exactly what Starlette's
// middleware sets (config values and request bytes echoed back).

/// Index of the first field named `name` (lowercase ASCII) at or after `start`.
pub(crate) fn find_raw(list: &Bound<'_, PyList>, name: &[u8], start: usize) -> PyResult<Option<usize>> {
    find_index(list, &Name::Ascii(name), start)
}

/// The value objects of every field named `name`, in order.
pub(crate) fn values_raw<'py>(list: &Bound<'py, PyList>, name: &[u8]) -> PyResult<Vec<Bound<'py, PyAny>>> {
    let mut out = Vec::new();
    let mut start = 0;
    while let Some(idx) = find_raw(list, name, start)? {
        out.push(value_at(list, idx)?);
        start = idx + 1;
    }
    Ok(out)
}

/// Starlette's `headers[name] = value`: the first field keeps its place and
/// gets the value, later ones go; appended if there is none.
pub(crate) fn set_raw(list: &Bound<'_, PyList>, name: &[u8], value: Bound<'_, PyAny>) -> PyResult<()> {
    let py = list.py();
    match find_raw(list, name, 0)? {
        Some(first) => {
            let mut later = Vec::new();
            let mut start = first + 1;
            while let Some(idx) = find_raw(list, name, start)? {
                later.push(idx);
                start = idx + 1;
            }
            for idx in later.into_iter().rev() {
                list.del_item(idx)?;
            }
            list.set_item(first, pair_tuple(py, PyBytes::new(py, name).into_any(), value)?)
        }
        None => list.append(pair_tuple(py, PyBytes::new(py, name).into_any(), value)?),
    }
}

/// Starlette's `del headers[name]`: every field of that name goes.
pub(crate) fn delete_raw(list: &Bound<'_, PyList>, name: &[u8]) -> PyResult<()> {
    let mut found = Vec::new();
    let mut start = 0;
    while let Some(idx) = find_raw(list, name, start)? {
        found.push(idx);
        start = idx + 1;
    }
    for idx in found.into_iter().rev() {
        list.del_item(idx)?;
    }
    Ok(())
}

// --------------------------------------------------------------------------- the classes

/// An immutable, case-insensitive multidict of HTTP header fields.
///
/// `Headers(headers=None, raw=None, scope=None)`, at most one of them.
#[pyclass(module = "ferroware._core", subclass, frozen, mapping, weakref)]
pub struct Headers {
    list: Py<PyList>,
}

impl Headers {
    fn build(
        py: Python<'_>,
        headers: Option<&Bound<'_, PyAny>>,
        raw: Option<&Bound<'_, PyAny>>,
        scope: Option<&Bound<'_, PyAny>>,
        mutable: bool,
    ) -> PyResult<Self> {
        let list = if let Some(headers) = headers {
            if raw.is_some() {
                return Err(PyAssertionError::new_err("Cannot set both \"headers\" and \"raw\"."));
            }
            if scope.is_some() {
                return Err(PyAssertionError::new_err("Cannot set both \"headers\" and \"scope\"."));
            }
            let list = PyList::empty(py);
            for_each_item(headers, |k, v| list.append(field(k, v)?))?;
            list
        } else if let Some(raw) = raw {
            if scope.is_some() {
                return Err(PyAssertionError::new_err("Cannot set both \"raw\" and \"scope\"."));
            }
            match raw.cast::<PyList>() {
                Ok(list) => list.clone(),
                Err(_) if mutable => {
                    return Err(PyTypeError::new_err(format!(
                        "MutableHeaders(raw=...) needs a list (it is edited in place), got {}",
                        raw.get_type().name()?
                    )))
                }
                // Read-only: a snapshot of any iterable of pairs will do.
                Err(_) => raw.try_iter()?.collect::<PyResult<Vec<_>>>().and_then(|v| PyList::new(py, v))?,
            }
        } else if let Some(scope) = scope {
            // Like Starlette: always a fresh list, put back into the scope, so a
            // header list shared with other messages is never edited.
            let list = as_list(&scope.get_item(intern!(py, "headers"))?)?;
            scope.set_item(intern!(py, "headers"), &list)?;
            list
        } else {
            PyList::empty(py)
        };
        Ok(Headers { list: list.unbind() })
    }

    #[inline]
    fn bound<'a, 'py>(&'a self, py: Python<'py>) -> &'a Bound<'py, PyList> {
        self.list.bind(py)
    }
}

#[pymethods]
impl Headers {
    #[new]
    #[pyo3(signature = (headers=None, raw=None, scope=None))]
    fn new(
        py: Python<'_>,
        headers: Option<&Bound<'_, PyAny>>,
        raw: Option<&Bound<'_, PyAny>>,
        scope: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        Headers::build(py, headers, raw, scope, false)
    }

    /// A new list of the `(name, value)` byte pairs.
    #[getter]
    fn raw<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        // SAFETY: PyList_GetSlice returns a new reference to a list or NULL with an exception set.
        let copy = unsafe {
            Bound::from_owned_ptr_or_err(py, ffi::PyList_GetSlice(self.list.as_ptr(), 0, ffi::PY_SSIZE_T_MAX))?
        };
        copy.cast_into::<PyList>().map_err(PyErr::from)
    }

    fn keys<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        keys(self.bound(py))
    }

    fn values<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        collect(self.bound(py), |_, v| decode(&v))
    }

    fn items<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        items(self.bound(py))
    }

    fn getlist<'py>(&self, py: Python<'py>, key: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
        getlist(self.bound(py), key)
    }

    #[pyo3(signature = (key, default=None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        default: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        match find(self.bound(py), key)? {
            Some(v) => decode(&v),
            None => Ok(default.unwrap_or_else(|| py.None().into_bound(py))),
        }
    }

    fn mutablecopy(&self, py: Python<'_>) -> PyResult<Py<MutableHeaders>> {
        let copy = self.raw(py)?;
        MutableHeaders::wrap(py, copy)
    }

    fn __getitem__<'py>(&self, py: Python<'py>, key: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        match find(self.bound(py), key)? {
            Some(v) => decode(&v),
            None => Err(PyKeyError::new_err(key.clone().unbind())),
        }
    }

    fn __contains__(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        contains(self.bound(py), key)
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(keys(self.bound(py))?.try_iter()?.into_any())
    }

    fn __len__(&self, py: Python<'_>) -> usize {
        self.bound(py).len()
    }

    fn __richcmp__(&self, py: Python<'_>, other: &Bound<'_, PyAny>, op: pyo3::basic::CompareOp) -> PyResult<Py<PyAny>> {
        use pyo3::basic::CompareOp;
        let equal = match other.cast::<Headers>() {
            Ok(other) => same_fields(self.bound(py), other.get().bound(py))?,
            Err(_) => false,
        };
        match op {
            CompareOp::Eq => equal.into_py_any(py),
            CompareOp::Ne => (!equal).into_py_any(py),
            _ => Ok(py.NotImplemented()),
        }
    }

    // Mutable and compared by value: not hashable (as a Mapping isn't).
    #[classattr]
    const __hash__: Option<Py<PyAny>> = None;

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let py = slf.py();
        let class_name = slf.get_type().name()?;
        let list = slf.get().bound(py);
        let as_dict = PyDict::new(py);
        for item in list.iter() {
            let (k, v) = pair(&item)?;
            as_dict.set_item(decode(&k)?, decode(&v)?)?;
        }
        if as_dict.len() == list.len() {
            Ok(format!("{}({})", class_name, as_dict.repr()?))
        } else {
            Ok(format!("{}(raw={})", class_name, slf.getattr(intern!(py, "raw"))?.repr()?))
        }
    }

    /// Pickle and `copy` support: rebuilt from the same list (`copy.copy` shares
    /// it, as it shares the `_list` of Starlette's; `deepcopy` copies it).
    #[allow(clippy::type_complexity)]
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<(Bound<'py, PyType>, (Option<Py<PyAny>>, Py<PyList>))> {
        Ok((slf.get_type(), (None, slf.get().list.clone_ref(slf.py()))))
    }
}

/// `Headers` that can be edited; edits go straight into the shared list.
#[pyclass(module = "ferroware._core", extends = Headers, subclass, frozen, mapping)]
pub struct MutableHeaders;

impl MutableHeaders {
    fn wrap(py: Python<'_>, list: Bound<'_, PyList>) -> PyResult<Py<MutableHeaders>> {
        Py::new(py, PyClassInitializer::from(Headers { list: list.unbind() }).add_subclass(MutableHeaders))
    }

    #[inline]
    fn list<'a, 'py>(slf: &'a Bound<'py, Self>) -> &'a Bound<'py, PyList> {
        slf.as_super().get().list.bind(slf.py())
    }

    fn update_from(list: &Bound<'_, PyList>, other: &Bound<'_, PyAny>) -> PyResult<()> {
        for_each_item(other, |k, v| set_field(list, k, v))
    }

    fn expect_mapping(other: &Bound<'_, PyAny>) -> PyResult<()> {
        if is_mapping(other)? {
            Ok(())
        } else {
            Err(PyTypeError::new_err(format!("Expected a mapping but got {}", other.get_type().name()?)))
        }
    }
}

#[pymethods]
impl MutableHeaders {
    #[new]
    #[pyo3(signature = (headers=None, raw=None, scope=None))]
    fn new(
        py: Python<'_>,
        headers: Option<&Bound<'_, PyAny>>,
        raw: Option<&Bound<'_, PyAny>>,
        scope: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyClassInitializer<Self>> {
        Ok(PyClassInitializer::from(Headers::build(py, headers, raw, scope, true)?).add_subclass(MutableHeaders))
    }

    /// The list itself: edits to it are edits to these headers.
    #[getter]
    fn raw<'py>(slf: &Bound<'py, Self>) -> Bound<'py, PyList> {
        Self::list(slf).clone()
    }

    /// Set `key` to `value`: the first field of that name is replaced in place,
    /// the others are removed; appended if there is none.
    fn __setitem__(slf: &Bound<'_, Self>, key: &Bound<'_, PyAny>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        set_field(Self::list(slf), key, value)
    }

    /// Remove every field named `key` (nothing happens if there is none, as in Starlette).
    fn __delitem__(slf: &Bound<'_, Self>, key: &Bound<'_, PyAny>) -> PyResult<()> {
        let list = Self::list(slf);
        let name = Name::new(key)?;
        for idx in find_all(list, &name)?.into_iter().rev() {
            list.del_item(idx)?;
        }
        Ok(())
    }

    fn __ior__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>) -> PyResult<()> {
        Self::expect_mapping(other)?;
        Self::update_from(Self::list(slf), other)
    }

    fn __or__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>) -> PyResult<Py<MutableHeaders>> {
        let py = slf.py();
        Self::expect_mapping(other)?;
        let copy = slf.as_super().get().raw(py)?;
        Self::update_from(&copy, other)?;
        MutableHeaders::wrap(py, copy)
    }

    /// The value of `key`, first setting it to `value` if absent.
    fn setdefault<'py>(
        slf: &Bound<'py, Self>,
        key: &Bound<'py, PyAny>,
        value: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let list = Self::list(slf);
        let name = Name::new(key)?;
        let encoded = encode_value(value)?;
        check_field(py, &name, encoded.as_bytes())?;
        if let Some(idx) = find_index(list, &name, 0)? {
            return decode(&value_at(list, idx)?);
        }
        list.append(pair_tuple(py, name.to_bytes(py).into_any(), encoded.into_any())?)?;
        Ok(value.clone())
    }

    fn update(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>) -> PyResult<()> {
        Self::update_from(Self::list(slf), other)
    }

    /// Add a field, keeping any others of the same name.
    fn append(slf: &Bound<'_, Self>, key: &Bound<'_, PyAny>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        Self::list(slf).append(cached_field(key, value)?)
    }

    fn add_vary_header(slf: &Bound<'_, Self>, vary: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let list = Self::list(slf);
        let name = intern!(py, "vary");
        let parts = getlist(list, name.as_any())?;
        parts.append(vary)?;
        let joined = intern!(py, ", ").call_method1(intern!(py, "join"), (parts,))?;
        set_field(list, name.as_any(), &joined)
    }
}

/// The headers object cached in `obj.__dict__["_headers"]` (where Starlette's
/// `Request` and `Response` cache their own), made by `build` from that dict on
/// first use.
fn cached_headers<'py>(
    obj: &Bound<'py, PyAny>,
    build: impl FnOnce(&Bound<'py, PyDict>) -> PyResult<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = obj.py();
    let attrs = instance_dict(obj)?;
    let cached = own_attr(obj, Some(&attrs), intern!(py, "_headers"))?;
    if !cached.is_none() {
        return Ok(cached);
    }
    let headers = build(&attrs)?;
    attrs.set_item(intern!(py, "_headers"), &headers)?;
    Ok(headers)
}

/// `CallNextResponse.headers`: the compiled `MutableHeaders` over the
/// response's `raw_headers` (a list from then on: edits go into the list that
/// is sent). A getter in Rust, as every header edit in a `dispatch` starts here.
#[pyfunction]
fn response_headers<'py>(response: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let py = response.py();
    cached_headers(response, |attrs| {
        let raw = own_attr(response, Some(attrs), intern!(py, "raw_headers"))?;
        let list = match raw.cast_into::<PyList>() {
            Ok(list) => list,
            Err(raw) => {
                // An app may send its headers as a tuple: edit (and send) a list instead.
                let list = as_list(&raw.into_inner())?;
                attrs.set_item(intern!(py, "raw_headers"), &list)?;
                list
            }
        };
        Ok(MutableHeaders::wrap(py, list)?.into_bound(py).into_any())
    })
}

/// `DispatchRequest.headers`: the compiled, read-only `Headers` of the
/// request's scope.
#[pyfunction]
fn request_headers<'py>(request: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let py = request.py();
    cached_headers(request, |attrs| {
        let scope = own_attr(request, Some(attrs), intern!(py, "scope"))?;
        Ok(Bound::new(py, Headers::build(py, None, None, Some(&scope), false)?)?.into_any())
    })
}

pub fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(request_headers, m)?)?;
    m.add_function(wrap_pyfunction!(response_headers, m)?)?;
    m.add_class::<Headers>()?;
    m.add_class::<MutableHeaders>()?;
    Ok(())
}
