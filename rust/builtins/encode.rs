//! Streaming response encoders shared by `GZipMiddleware` and
//! `CompressionMiddleware`: gzip (flate2 on the zlib-rs backend, the same
//! format and levels as Python's `zlib.compressobj(level, DEFLATED,
//! 16 + MAX_WBITS)`), brotli (the pure-Rust port of Google's encoder) and zstd
//! (the C library, built by `zstd-sys`).
//!
//! A response is compressed chunk by chunk: every chunk but the last is
//! flushed, so what the client has received so far always decodes, and the
//! last chunk ends the stream. Nothing is held back between chunks, so a
//! streaming response is never buffered whole.
//!
//! Chunks over `DETACH_OVER` bytes are compressed with the GIL released, so
//! other Python threads (and the worker-thread path for large bodies) run
//! meanwhile.

use std::io::Write;

use flate2::{Compress, Compression, FlushCompress, Status};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::value_bytes;

/// Bodies larger than this are compressed without holding the GIL.
const DETACH_OVER: usize = 64 * 1024;

/// brotli's window: 4 MiB, the format's default (and what `brotli.compress` uses).
const BROTLI_WINDOW_BITS: i32 = 22;

/// A content coding ferroware can produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Coding {
    Zstd,
    Br,
    Gzip,
}

impl Coding {
    pub(crate) const ALL: [Coding; 3] = [Coding::Zstd, Coding::Br, Coding::Gzip];

    /// The token in `Accept-Encoding` and `Content-Encoding`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Coding::Zstd => "zstd",
            Coding::Br => "br",
            Coding::Gzip => "gzip",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Coding> {
        Coding::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The levels the encoder takes: zlib's -1 (its default, 6) to 9, brotli's
    /// qualities 0 to 11, zstd's regular levels 1 to 22.
    fn levels(self) -> (i32, i32) {
        match self {
            Coding::Gzip => (-1, 9),
            Coding::Br => (0, 11),
            Coding::Zstd => (1, 22),
        }
    }

    fn check_level(self, level: i32) -> PyResult<i32> {
        let (low, high) = self.levels();
        if (low..=high).contains(&level) {
            Ok(level)
        } else {
            Err(PyValueError::new_err(format!(
                "Bad compression level for {}: {level} (expected {low} to {high})",
                self.name()
            )))
        }
    }
}

enum Encoder {
    Gzip(Compress),
    Br(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

fn io_error(e: std::io::Error) -> String {
    e.to_string()
}

/// Runs flate2 over `input` until it is all in and, with `flush`, out.
fn deflate(c: &mut Compress, input: &[u8], flush: FlushCompress) -> Result<Vec<u8>, String> {
    let mut out: Vec<u8> = Vec::with_capacity(input.len() / 3 + 64);
    let mut consumed = 0usize;
    loop {
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(1024));
        }
        let before = c.total_in();
        let status = c.compress_vec(&input[consumed..], &mut out, flush).map_err(|e| e.to_string())?;
        consumed += (c.total_in() - before) as usize;
        match (flush, status) {
            (_, Status::StreamEnd) => return Ok(out),
            (FlushCompress::Finish, _) => {}
            // A flush is complete when all input is in and output space was left over.
            _ if consumed == input.len() && out.len() < out.capacity() => return Ok(out),
            _ => {}
        }
    }
}

impl Encoder {
    /// `whole`: the body's size when the first chunk is also the last, which
    /// lets brotli and zstd size their windows (and zstd record the size).
    fn new(coding: Coding, level: i32, whole: Option<usize>) -> Result<Encoder, String> {
        Ok(match coding {
            Coding::Gzip => {
                let level = if level < 0 { 6 } else { level as u32 };
                Encoder::Gzip(Compress::new_gzip(Compression::new(level), 15))
            }
            Coding::Br => {
                let params = brotli::enc::BrotliEncoderParams {
                    quality: level,
                    lgwin: BROTLI_WINDOW_BITS,
                    size_hint: whole.unwrap_or(0),
                    ..Default::default()
                };
                Encoder::Br(Box::new(brotli::CompressorWriter::with_params(Vec::new(), 16 * 1024, &params)))
            }
            Coding::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(Vec::new(), level).map_err(io_error)?;
                if let Some(n) = whole {
                    e.set_pledged_src_size(Some(n as u64)).map_err(io_error)?;
                }
                Encoder::Zstd(e)
            }
        })
    }

    /// Compresses `data` and flushes: what has come out so far decodes to all
    /// the input so far.
    fn flush(&mut self, data: &[u8]) -> Result<Vec<u8>, String> {
        match self {
            Encoder::Gzip(c) => deflate(c, data, FlushCompress::Sync),
            Encoder::Br(w) => {
                w.write_all(data).and_then(|()| w.flush()).map_err(io_error)?;
                Ok(std::mem::take(w.get_mut()))
            }
            Encoder::Zstd(w) => {
                w.write_all(data).and_then(|()| w.flush()).map_err(io_error)?;
                Ok(std::mem::take(w.get_mut()))
            }
        }
    }

    /// Compresses `data` and ends the stream.
    fn finish(self, data: &[u8]) -> Result<Vec<u8>, String> {
        match self {
            Encoder::Gzip(mut c) => deflate(&mut c, data, FlushCompress::Finish),
            Encoder::Br(mut w) => {
                w.write_all(data).map_err(io_error)?;
                Ok(w.into_inner())
            }
            Encoder::Zstd(mut w) => {
                w.write_all(data).map_err(io_error)?;
                w.finish().map_err(io_error)
            }
        }
    }
}

/// One response's compressed stream, in whichever coding.
pub(crate) struct Stream {
    coding: Coding,
    level: i32,
    /// Made on the first chunk; None again once finished.
    encoder: Option<Encoder>,
    finished: bool,
}

impl Stream {
    pub(crate) fn new(coding: Coding, level: i32) -> PyResult<Stream> {
        Ok(Stream { coding, level: coding.check_level(level)?, encoder: None, finished: false })
    }

    /// Compress a chunk: flushed if more follow, else the stream's end.
    pub(crate) fn compress<'py>(
        &mut self,
        py: Python<'py>,
        body: &Bound<'py, PyAny>,
        more_body: bool,
    ) -> PyResult<Bound<'py, PyBytes>> {
        if self.finished {
            return Err(PyRuntimeError::new_err(format!(
                "the {} stream is already finished (or failed)",
                self.coding.name()
            )));
        }
        let data = value_bytes(body)?;
        // Finished until this chunk is through: a stream whose encoder failed
        // (or panicked) midway can't be resumed, its state is unknown.
        self.finished = true;
        let encoder = match self.encoder.take() {
            Some(e) => e,
            None => Encoder::new(self.coding, self.level, (!more_body).then_some(data.len()))
                .map_err(PyRuntimeError::new_err)?,
        };
        let input: &[u8] = &data;
        let step = move || -> (Option<Encoder>, Result<Vec<u8>, String>) {
            if more_body {
                let mut encoder = encoder;
                let out = encoder.flush(input);
                (Some(encoder), out)
            } else {
                (None, encoder.finish(input))
            }
        };
        let (encoder, out) = if data.len() > DETACH_OVER { py.detach(step) } else { step() };
        self.finished = !more_body || out.is_err();
        self.encoder = if self.finished { None } else { encoder };
        Ok(PyBytes::new(py, &out.map_err(PyRuntimeError::new_err)?))
    }
}

/// One response's compressed stream: `CompressStream(coding, level)` with
/// `coding` one of "zstd", "br", "gzip".
#[pyclass(module = "ferroware._core")]
pub struct CompressStream {
    stream: Stream,
}

#[pymethods]
impl CompressStream {
    #[new]
    fn new(coding: &str, level: i32) -> PyResult<Self> {
        let coding = Coding::from_name(coding).ok_or_else(|| {
            PyValueError::new_err(format!("Unknown coding: {coding:?} (expected \"zstd\", \"br\" or \"gzip\")"))
        })?;
        Ok(CompressStream { stream: Stream::new(coding, level)? })
    }

    /// Compress a chunk: flushed if more follow, else the stream's end.
    fn compress<'py>(
        &mut self,
        py: Python<'py>,
        body: &Bound<'py, PyAny>,
        more_body: bool,
    ) -> PyResult<Bound<'py, PyBytes>> {
        self.stream.compress(py, body, more_body)
    }
}

pub fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<CompressStream>()
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn decode(coding: Coding, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match coding {
            Coding::Gzip => flate2::read::GzDecoder::new(data).read_to_end(&mut out).map(drop),
            Coding::Br => brotli::Decompressor::new(data, 4096).read_to_end(&mut out).map(drop),
            Coding::Zstd => zstd::stream::read::Decoder::new(data).and_then(|mut d| d.read_to_end(&mut out)).map(drop),
        }
        .unwrap();
        out
    }

    #[test]
    fn every_flush_decodes_and_the_end_is_the_input() {
        let chunks: Vec<Vec<u8>> = (0..5u8).map(|i| [i].repeat(1000 * usize::from(i))).collect();
        for coding in Coding::ALL {
            let (low, high) = coding.levels();
            for level in [low, high] {
                let mut encoder = Encoder::new(coding, level, None).unwrap();
                let mut sent = Vec::new();
                for chunk in &chunks {
                    sent.extend(encoder.flush(chunk).unwrap());
                }
                sent.extend(encoder.finish(b"end").unwrap());
                let mut expected = chunks.concat();
                expected.extend_from_slice(b"end");
                assert_eq!(decode(coding, &sent), expected, "{coding:?} {level}");
                let whole = Encoder::new(coding, level, Some(expected.len())).unwrap().finish(&expected).unwrap();
                assert_eq!(decode(coding, &whole), expected, "{coding:?} {level} one-shot");
            }
        }
    }
}
