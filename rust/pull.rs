//! `call_next`'s body pulled by another task, stepped in the middleware's own.
//!
//! A `dispatch` that answers `StreamingResponse(response.body_iterator)` (or a
//! generator over it) has that response pull the body; on servers older than
//! ASGI spec 2.4 the response does so from a task of its own, while the
//! middleware's task waits in the `receive` it gave the response for the
//! client's disconnect (or, for other responses, for the end of a task group).
//! The downstream app must not be stepped in that other task: an app that
//! keeps a task group open across two steps (Starlette's `StreamingResponse`
//! does) would enter it in one task and leave it in another.
//!
//! So such a pull is handed to the middleware's task (`ferroware._handoff`):
//! the puller parks and wakes that task where it waits (the *home wait*). On
//! asyncio the layer waits on a proxy of whatever future its response waits
//! on (`wait_home`, `RunLayer`'s `Sub::ResponseWaits`), which the puller
//! completes; on trio the puller interrupts the response's `receive`, which
//! awaits a `PullTurn` that the layer sees come out. Either way the layer
//! steps the app to its next chunk there (`Sub::Serve`), gives the outcome to
//! the puller (`deliver`), and goes back to its response. A puller that gives
//! up (cancelled) ends the body, as Starlette's body generator ends; the
//! serving stops at once if the app waits on an asyncio future (it is woken
//! for that), else when the app's next step is done, and its chunk is dropped.

use pyo3::exceptions::PyStopAsyncIteration;
use pyo3::intern;
use pyo3::prelude::*;
use std::sync::atomic::AtomicBool;

use crate::coro::{yield_once, Input};
use crate::dispatch::{Channel, State};
use crate::drive::Outcome;

/// Awaited by the response's `receive` when a pull is waiting: yields the
/// `PullTurn` type itself once (no event loop takes a type, so it can't be
/// mistaken for a suspension), then returns once the layer resumes it.
#[pyclass(module = "ferroware._core", frozen)]
pub struct PullTurn {
    yielded: AtomicBool,
}

impl PullTurn {
    fn step(&self, py: Python<'_>, input: Input) -> PyResult<Option<Py<PyAny>>> {
        yield_once(&self.yielded, input, || py.get_type::<PullTurn>().into_any().unbind())
    }
}

crate::awaitable_pymethods!(PullTurn {
    #[new]
    fn new() -> Self {
        PullTurn { yielded: AtomicBool::new(false) }
    }
});

/// Whether `value`, yielded by the layer's response, is a `PullTurn`'s.
pub fn is_turn(value: &Bound<'_, PyAny>) -> bool {
    value.is(value.py().get_type::<PullTurn>())
}

/// Whether a pull of the body may still come from another task while the
/// layer's response waits on `future`: the body is not over, and the response
/// isn't waiting in a pull of its own, in our task (`future` is then the
/// proxy the app's drive handed out).
pub fn may_come(channel: &Bound<'_, Channel>, future: &Bound<'_, PyAny>) -> bool {
    let this = channel.get().inner(channel.py());
    this.state == State::Started
        && this.app_task.is_none()
        && !this.waiting.as_ref().and_then(|w| w.proxy.as_ref()).is_some_and(|proxy| future.is(proxy))
}

/// The layer is about to step a response of its own. If the body isn't over,
/// from now on it is pulled through the hand-off: the puller may be another
/// task, even before our task first waits (the response starts a task that
/// pulls, then yields to the event loop).
pub fn expect(channel: &Bound<'_, Channel>) -> PyResult<()> {
    let py = channel.py();
    {
        let this = channel.get().inner(py);
        // On the task path the app runs in a task of its own, and its relay
        // may be stepped in any task: the puller's own does.
        if this.foreign_pulls || this.state != State::Started || this.app_task.is_some() {
            return Ok(());
        }
    }
    channel.get().dispatcher.get().hooks.get().handoff_of.call1(py, (channel,))?;
    channel.get().inner_mut(py).foreign_pulls = true;
    Ok(())
}

/// Our task waits on `proxy` while the response waits (asyncio): a pull
/// completes it.
pub fn wait_home(channel: &Bound<'_, Channel>, proxy: &Bound<'_, PyAny>) -> PyResult<()> {
    Channel::call_handoff(channel, intern!(channel.py(), "wait_home"), (proxy,)).map(drop)
}

/// Our task was resumed: a pull can no longer wake it through its proxy.
pub fn left_home(channel: &Bound<'_, Channel>) -> PyResult<()> {
    Channel::call_handoff(channel, intern!(channel.py(), "left_home"), ()).map(drop)
}

/// The response's task took its turn: the waiting pull is being served.
/// False if no pull waits (it was withdrawn): then there is nothing to do.
pub fn take(channel: &Bound<'_, Channel>) -> PyResult<bool> {
    Channel::call_handoff(channel, intern!(channel.py(), "take_pull"), ())?.map_or(Ok(false), |taken| taken.is_truthy())
}

/// Whether the pull being served still has its puller waiting.
pub fn wanted(channel: &Bound<'_, Channel>) -> PyResult<bool> {
    Channel::call_handoff(channel, intern!(channel.py(), "pull_wanted"), ())?
        .map_or(Ok(false), |wanted| wanted.is_truthy())
}

/// Gives the served pull its outcome: the chunk, the end of the body, or an error.
pub fn deliver(channel: &Bound<'_, Channel>, outcome: Outcome) -> PyResult<()> {
    let py = channel.py();
    let (chunk, error) = match outcome {
        Outcome::Return(chunk) => (chunk, py.None()),
        Outcome::End => (py.None(), PyStopAsyncIteration::new_err(()).into_value(py).into_any()),
        Outcome::Raise(err) => (py.None(), err.into_value(py).into_any()),
        Outcome::Yield(_) => unreachable!("a suspension is not an outcome of the pull"),
    };
    Channel::call_handoff(channel, intern!(channel.py(), "deliver"), (chunk, error)).map(drop)
}

pub fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PullTurn>()?;
    Ok(())
}
