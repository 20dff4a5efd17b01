//! Body chunks sent from another task that go out from that task.
//!
//! Starlette's `StreamingResponse` sends its chunks from a task of its own on
//! ASGI spec 2.3 (uvicorn). Such a send can't pause our stepping, so it is
//! parked for the middleware's task (`ferroware._handoff`): two task switches
//! per chunk. Most of the time they buy nothing. When every layer of the run
//! of ferroware layers the send enters is relaying `call_next`'s response and
//! waiting for the next chunk, what those layers would do with a chunk that
//! isn't the last is pass it on unchanged (`more_body=True`) to the `send`
//! beyond the run, each staying as it was. Then the chunk goes there from the
//! sending task, as through pure-ASGI middleware (docs/design.md, "Sends from
//! another task").
//!
//! While it is on its way (it may wait in the server, under backpressure) the
//! channels of the run are marked `forwarding`: a send of the layers' own
//! waits for it (`Sub::AfterForward`), so two sends never overlap. If it
//! fails, each layer of the run fails with the error when its wait for the
//! next chunk ends, as when its own send fails (`forward_error`), instead of
//! ending the body as if the chunk had gone out.

use pyo3::exceptions::{PyException, PyRuntimeError};
use pyo3::intern;
use pyo3::prelude::*;

use crate::coro::{resume, Input, Step};
use crate::dispatch::{Channel, State};
use crate::gil_cell::GilCell;
use crate::layer::awaitable_iter;
use crate::message::{Kind, Message};

/// The error the layers fail with when the sending task is cancelled (or its
/// coroutine closed) while its chunk is in the `send` beyond the run.
pub const INTERRUPTED: &str = "a response body chunk sent from another task was interrupted on its way to \
                               the server (that task was cancelled): the response can't be completed";

/// A send from another task: the awaitable that forwards it, when it is a
/// chunk that may go out from the sending task; else None (it is parked).
pub fn try_forward(channel: &Bound<'_, Channel>, message: &Message) -> PyResult<Option<Py<PyAny>>> {
    let py = channel.py();
    let Ok(Kind::Body { chunk: Some(chunk), more: true }) = message.kind(py) else { return Ok(None) };
    let Some(target) = target(channel)? else { return Ok(None) };
    let relayed = Message::Body { chunk: Some(chunk.unbind()), more: true }.into_asgi(py)?;
    Channel::run_outwards(channel, |c| c.inner_mut(py).forwarding = true);
    match target.call1((relayed,)).and_then(|sending| awaitable_iter(&sending)) {
        Ok(sending) => {
            let forward = Forward { channel: channel.clone().unbind(), sending: GilCell::new(Some(sending)) };
            Ok(Some(Py::new(py, forward)?.into_any()))
        }
        Err(err) => {
            over(channel, Some(&err))?;
            Err(err)
        }
    }
}

/// The `send` beyond the run of layers that `channel` begins, if the chunk may
/// go there now: our task is parked on a proxy of the app's future that
/// nothing has woken (a parked send would have: it goes first), and every
/// layer of the run has started its response, relays it, and waits for the
/// next chunk, with no other chunk on its way.
fn target<'py>(channel: &Bound<'py, Channel>) -> PyResult<Option<Bound<'py, PyAny>>> {
    let py = channel.py();
    let proxy = channel
        .get()
        .try_inner(py)
        .and_then(|this| this.waiting.as_ref().and_then(|w| w.proxy.as_ref().map(|p| p.clone_ref(py))));
    let Some(proxy) = proxy else { return Ok(None) };
    if proxy.bind(py).call_method0(intern!(py, "done"))?.is_truthy()? {
        return Ok(None);
    }
    let mut ready = true;
    let beyond = Channel::run_outwards(channel, |c| {
        ready &= c.try_inner(py).is_some_and(|this| {
            this.state == State::Started && this.awaiting_chunk && !this.stepping && !this.forwarding
        });
    });
    Ok(ready.then_some(beyond))
}

/// The forwarded send is over (`error`: it failed): the layers' own sends may
/// go on, and if it failed, the layers fail with it.
fn over(channel: &Bound<'_, Channel>, error: Option<&PyErr>) -> PyResult<()> {
    let py = channel.py();
    let failure = error.map(|err| {
        if err.is_instance_of::<PyException>(py) {
            err.clone_ref(py)
        } else {
            // Cancelled (a BaseException): the chunk may or may not have gone out.
            let interrupted = PyRuntimeError::new_err(INTERRUPTED);
            interrupted.set_cause(py, Some(err.clone_ref(py)));
            interrupted
        }
    });
    let mut waiters = Vec::new();
    Channel::run_outwards(channel, |c| {
        let mut this = c.inner_mut(py);
        this.forwarding = false;
        if let Some(failure) = &failure {
            this.forward_error = Some(failure.clone_ref(py));
        }
        waiters.extend(this.forward_waiter.take());
    });
    for waiter in waiters {
        let waiter = waiter.bind(py);
        if !waiter.call_method0(intern!(py, "done"))?.is_truthy()? {
            waiter.call_method1(intern!(py, "set_result"), (py.None(),))?;
        }
    }
    Ok(())
}

/// `await send(chunk)` in the sending task, for a forwarded chunk: steps the
/// `send` beyond the run, then ends the forward. Frozen, its state in a `GilCell`.
#[pyclass(module = "ferroware._core", frozen)]
pub struct Forward {
    channel: Py<Channel>,
    /// The awaitable of the `send` beyond the run; None once it is over.
    sending: GilCell<Option<Py<PyAny>>>,
}

impl Forward {
    fn step(&self, py: Python<'_>, input: Input) -> PyResult<Option<Py<PyAny>>> {
        let sending = self.sending.try_borrow(py).and_then(|s| s.as_ref().map(|s| s.clone_ref(py)));
        let Some(sending) = sending else {
            return Err(PyRuntimeError::new_err("cannot reuse already awaited ferroware awaitable"));
        };
        match resume(py, sending.bind(py), input) {
            Ok(Step::Yield(value)) => Ok(Some(value)),
            Ok(Step::Return(_)) => {
                self.end(py, None)?;
                Ok(None)
            }
            Err(err) => {
                self.end(py, Some(&err))?;
                Err(err)
            }
        }
    }

    fn end(&self, py: Python<'_>, error: Option<&PyErr>) -> PyResult<()> {
        if let Ok(mut sending) = self.sending.try_borrow_mut(py) {
            *sending = None;
        }
        over(self.channel.bind(py), error)
    }
}

crate::awaitable_pymethods!(Forward {
    /// The sending coroutine is closed while its chunk is on its way: close
    /// that send too; the chunk may not have gone out.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let sending = self.sending.try_borrow(py).and_then(|s| s.as_ref().map(|s| s.clone_ref(py)));
        let Some(sending) = sending else { return Ok(()) };
        let closed = sending.bind(py).call_method0(intern!(py, "close"));
        let interrupted = pyo3::exceptions::PyGeneratorExit::new_err(());
        self.end(py, Some(&interrupted))?;
        closed.map(drop)
    }
});

pub fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Forward>()?;
    Ok(())
}
