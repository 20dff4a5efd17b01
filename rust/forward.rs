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
use crate::dispatch::{wake_future, Channel, State};
use crate::gil_cell::GilCell;
use crate::layer::awaitable_iter;
use crate::message::{Kind, Message};

/// The error the layers fail with when the sending task is cancelled (or its
/// coroutine closed) while its chunk is in the `send` beyond the run.
pub const INTERRUPTED: &str = "a response body chunk sent from another task was interrupted on its way to \
                               the server (that task was cancelled): the response can't be completed";

/// A send the channel can't take directly (from another task, or after the
/// response): for a chunk that isn't the last and may go out from the sending
/// task, a `Forward`; else the Python hook's awaitable (it parks the message
/// for the middleware's task, or discards it after the response).
pub fn foreign_send(channel: &Bound<'_, Channel>, message: Message) -> PyResult<Py<PyAny>> {
    let py = channel.py();
    if let Ok(Kind::Body { chunk: Some(chunk), more: true }) = message.kind(py) {
        if target(channel)?.is_some() {
            let chunk = chunk.unbind();
            let forward =
                Forward { channel: channel.clone().unbind(), stage: GilCell::new(Stage::Ready { message, chunk }) };
            return Ok(Py::new(py, forward)?.into_any());
        }
    }
    park(channel, message)
}

fn park(channel: &Bound<'_, Channel>, message: Message) -> PyResult<Py<PyAny>> {
    let py = channel.py();
    let hook = channel.get().dispatcher.get().hooks.get().foreign_send.clone_ref(py);
    hook.call1(py, (channel, message.into_asgi(py)?))
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
    let failure = match error {
        None => None,
        Some(err) if err.is_instance_of::<PyException>(py) => Some(err.clone_ref(py)),
        // Cancelled (a BaseException) after the app was told the client left:
        // the app is stopping its stream (Starlette's `StreamingResponse`
        // cancels its sender then). Nobody reads the body: it ends as through
        // Starlette, with no error.
        Some(_) if channel.get().inner(py).client_gone => None,
        // Cancelled otherwise: the chunk may or may not have gone out.
        Some(err) => {
            let interrupted = PyRuntimeError::new_err(INTERRUPTED);
            interrupted.set_cause(py, Some(err.clone_ref(py)));
            Some(interrupted)
        }
    };
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
        wake_future(waiter.bind(py))?;
    }
    Ok(())
}

/// `await send(chunk)` in the sending task, for a chunk that may be forwarded.
/// Nothing happens until it is first stepped (an awaitable never awaited
/// leaves no forward open); then, if the chunk may still go out from here, it
/// steps the `send` beyond the run and ends the forward when that returns or
/// fails, else it parks the chunk like any other foreign send.
/// Frozen, its state in a `GilCell`.
#[pyclass(module = "ferroware._core", frozen)]
pub struct Forward {
    channel: Py<Channel>,
    stage: GilCell<Stage>,
}

enum Stage {
    /// Not stepped yet: the app's message, and its chunk.
    Ready {
        message: Message,
        chunk: Py<PyAny>,
    },
    /// Stepping this awaitable: the `send` beyond the run (`forwarded`), or the
    /// parking hook's.
    Sending {
        sending: Py<PyAny>,
        forwarded: bool,
    },
    Over,
}

impl Forward {
    fn step(&self, py: Python<'_>, input: Input) -> PyResult<Option<Py<PyAny>>> {
        let stage = std::mem::replace(&mut *self.stage.try_borrow_mut(py)?, Stage::Over);
        let (sending, forwarded) = match stage {
            // Thrown in before anything was sent: nothing to undo.
            Stage::Ready { .. } if matches!(input, Input::Throw(_)) => {
                let Input::Throw(err) = input else { unreachable!() };
                return Err(err);
            }
            Stage::Ready { message, chunk } => self.begin(py, message, chunk)?,
            Stage::Sending { sending, forwarded } => (sending, forwarded),
            Stage::Over => return Err(PyRuntimeError::new_err("cannot reuse already awaited ferroware awaitable")),
        };
        let channel = self.channel.bind(py);
        match resume(py, sending.bind(py), input) {
            Ok(Step::Yield(value)) => {
                *self.stage.try_borrow_mut(py)? = Stage::Sending { sending, forwarded };
                Ok(Some(value))
            }
            Ok(Step::Return(_)) => {
                if forwarded {
                    over(channel, None)?;
                }
                Ok(None)
            }
            Err(err) => {
                if forwarded {
                    over(channel, Some(&err))?;
                }
                Err(err)
            }
        }
    }

    /// The first step: forward the chunk if it may still go out from here (it
    /// may not if this awaitable was held a while before being awaited), else park it.
    fn begin(&self, py: Python<'_>, message: Message, chunk: Py<PyAny>) -> PyResult<(Py<PyAny>, bool)> {
        let channel = self.channel.bind(py);
        let Some(target) = target(channel)? else {
            return Ok((awaitable_iter(park(channel, message)?.bind(py))?, false));
        };
        let relayed = Message::Body { chunk: Some(chunk), more: true }.into_asgi(py)?;
        Channel::run_outwards(channel, |c| c.inner_mut(py).forwarding = true);
        match target.call1((relayed,)).and_then(|sending| awaitable_iter(&sending)) {
            Ok(sending) => Ok((sending, true)),
            Err(err) => {
                over(channel, Some(&err))?;
                Err(err)
            }
        }
    }
}

crate::awaitable_pymethods!(Forward {
    /// The sending coroutine is closed while its chunk is on its way: close
    /// that send too; a forwarded chunk may not have gone out.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let stage = std::mem::replace(&mut *self.stage.try_borrow_mut(py)?, Stage::Over);
        let Stage::Sending { sending, forwarded } = stage else { return Ok(()) };
        let closed = sending.bind(py).call_method0(intern!(py, "close"));
        if forwarded {
            over(self.channel.bind(py), Some(&pyo3::exceptions::PyGeneratorExit::new_err(())))?;
        }
        closed.map(drop)
    }
});

pub fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Forward>()?;
    Ok(())
}
