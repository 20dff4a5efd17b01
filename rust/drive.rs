//! Stepping the downstream app until it gives the middleware what it waits for.
//!
//! `DriveCore` is the engine: resumed with what the event loop sent (a value or
//! an exception), it steps the app's coroutine and passes each suspension up
//! unchanged, until a message the app sent through its channel settles the goal:
//! the response at `http.response.start` (`call_next`), the next body chunk (the
//! body iterator), or the app's end (`finish` and `abort`). The compiled layer
//! embeds cores directly; `Drive` wraps one as a Python awaitable for
//! `await call_next(...)` and `async for chunk in response.body_iterator`.

use pyo3::exceptions::{PyBaseException, PyException, PyGeneratorExit, PyRuntimeError, PyStopAsyncIteration};
use pyo3::prelude::*;
use pyo3::{ffi, intern};

use crate::coro::{resume, stop_iteration, Input, Step};
use crate::dispatch::{Channel, ChannelInner, Hooks, ScopeTracker, State, Waiting};
use crate::gil_cell::GilCell;
use crate::message::{Kind, Message};

pyo3::create_exception!(
    ferroware._core,
    Unwinding,
    PyBaseException,
    "Thrown into the downstream app to unwind it after `dispatch` or the \
     middleware's response failed (Starlette cancels the app's task there). A \
     `BaseException`, like a cancellation: `except Exception` doesn't catch it, \
     `finally` blocks and `async with` exits run, at every level of the app's \
     await chain, and may still await. The layer then raises the original error."
);

/// What is left of `err`, raised by an app being unwound, once the unwinding
/// itself is taken out: None when it is only our `Unwinding` coming back (or a
/// `GeneratorExit`); for the exception group of a task group it passed
/// through, the group of the other errors (the app's own), as a cancel scope
/// takes its own cancellation out of a group.
fn beyond_unwinding(py: Python<'_>, err: PyErr) -> Option<PyErr> {
    if err.is_instance_of::<Unwinding>(py) || err.is_instance_of::<PyGeneratorExit>(py) {
        return None;
    }
    let value = err.value(py);
    if !value.is_instance_of::<pyo3::exceptions::PyBaseExceptionGroup>() {
        return Some(err);
    }
    // split() returns (matching, rest), rest None when every leaf matched.
    match value.call_method1(intern!(py, "split"), (py.get_type::<Unwinding>(),)).and_then(|parts| parts.get_item(1)) {
        Ok(rest) if rest.is_none() => None,
        Ok(rest) if rest.is(value) => Some(err),
        Ok(rest) => Some(PyErr::from_value(rest)),
        Err(split_failed) => Some(split_failed),
    }
}

/// What the middleware waits for from the downstream app.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Goal {
    /// `call_next`: the response, as soon as its start message is sent.
    Start,
    /// The body iterator: the next non-empty chunk, or the end.
    Body,
    /// After the response went out: run the app to its end.
    Finish,
    /// After `dispatch` failed: unwind the app, awaiting its cleanups.
    Abort,
}

/// How a step ended.
pub enum Outcome {
    /// The app suspended: pass this to the event loop.
    Yield(Py<PyAny>),
    /// The goal is reached with this value.
    Return(Py<PyAny>),
    /// The body has no more chunks.
    End,
    /// The goal failed with this error.
    Raise(PyErr),
}

/// What to do after looking at a message the app sent.
enum Next {
    /// Resume the app with this.
    Resume(Input),
    /// Await this outer awaitable (an early hint's send), then resume the app.
    Await(Py<PyAny>),
    /// The goal is settled.
    Settle(Outcome),
}

pub struct DriveCore {
    goal: Goal,
    /// An outer awaitable being awaited on the app's behalf.
    sub: Option<Py<PyAny>>,
    begun: bool,
    /// The task's cancel scope when this core began (where dispatch is), if tracked.
    outer: Option<Py<PyAny>>,
    /// `call_next` starts the app on the task path.
    task_path: bool,
}

impl DriveCore {
    pub fn new(goal: Goal) -> Self {
        DriveCore { goal, sub: None, begun: false, outer: None, task_path: false }
    }

    /// Steps toward the goal. Around it, the task is moved into the app's own
    /// cancel scope (if the app was left suspended in one) and, when the goal
    /// is reached with the app still suspended inside a scope of its own, back
    /// to the scope the caller was in (see `ferroware._scopes`).
    pub fn step(&mut self, channel: &Bound<'_, Channel>, input: Input) -> Outcome {
        if !self.begun && self.goal == Goal::Start {
            // The app gets a task of its own (`ferroware._app_task`), and no
            // cancel scope is moved, when `call_next` is first awaited outside
            // the layer's stepping of `dispatch` (so in another task), or in
            // another task started eagerly inside it, or the task's cancel
            // scopes can't be read (anyio's or trio's internals not as
            // expected, `_scopes.py`).
            let py = channel.py();
            let forced = channel.get().dispatcher.get().hooks.get().force_task_path;
            let eager_tracker = {
                let this = channel.get().inner(py);
                self.task_path = forced || !this.dispatching || this.tracker.is_none();
                this.tracker.as_ref().filter(|_| this.eager_tasks).map(|t| t.clone_ref(py))
            };
            if let Some(tracker) = eager_tracker.filter(|_| !self.task_path) {
                match tracker.borrow(py).in_other_task(py) {
                    Ok(other) => self.task_path = other,
                    Err(err) => return Outcome::Raise(err),
                }
            }
        }
        if !self.begun {
            if let Err(err) = self.enter_app_scope(channel) {
                return Outcome::Raise(err);
            }
        }
        let outcome = self.run(channel, input);
        if matches!(outcome, Outcome::Yield(_)) {
            return outcome;
        }
        if self.goal == Goal::Start {
            let py = channel.py();
            let app_context = channel.get().inner(py).app_context.as_ref().map(|c| c.bind(py));
            if let Some(Err(err)) = app_context.map(|c| c.adopt_changes()) {
                return Outcome::Raise(err);
            }
        }
        match self.leave_app_scope(channel) {
            Ok(()) => outcome,
            Err(err) => Outcome::Raise(err),
        }
    }

    /// Stops stepping toward the goal while the app waits on an asyncio future
    /// (true; false when it waits on anything else): the app stays suspended
    /// there, as between two goals, and the task goes back to the caller's
    /// scope. A later core takes the wait over.
    pub fn suspend(&mut self, channel: &Bound<'_, Channel>) -> PyResult<bool> {
        let py = channel.py();
        {
            let mut this = channel.get().inner_mut(py);
            let Some(waiting) = this.waiting.as_ref() else { return Ok(false) };
            // Its proxy was ours: the next core makes its own.
            this.waiting = Some(waiting.again(py));
        }
        self.leave_app_scope(channel)?;
        Ok(true)
    }

    fn enter_app_scope(&mut self, channel: &Bound<'_, Channel>) -> PyResult<()> {
        let py = channel.py();
        if self.goal == Goal::Start {
            if self.task_path {
                return Ok(());
            }
            let known = channel.get().inner(py).tracker.as_ref().map(|t| t.clone_ref(py));
            let tracker = match known {
                Some(tracker) => Some(tracker),
                None => ScopeTracker::lookup(py, channel.get().dispatcher.get().hooks.get())?,
            };
            let Some(tracker) = tracker else { return Ok(()) };
            let outer = tracker.borrow_mut(py).current(py)?;
            let mut this = channel.get().inner_mut(py);
            if this.dispatch_scope.as_ref().is_some_and(|scope| !outer.is(scope)) {
                // Trio, and dispatch awaits call_next inside a cancel scope of
                // its own: trio's scope tree would make a scope the app opens a
                // child of it, and dispatch leaving it first would abandon the
                // app's. The app gets a task of its own instead.
                self.task_path = true;
                return Ok(());
            }
            this.tracker = Some(tracker);
            // Tracked even when dispatch runs in no scope at all: a scope the app
            // is left suspended in must not catch the layer's own awaits either
            // (a streaming response cancels its task group when it is done).
            this.tracking = true;
            self.outer = Some(outer.unbind());
            return Ok(());
        }
        let this = channel.get().inner(py);
        if !this.tracking {
            return Ok(());
        }
        let Some(tracker) = this.tracker.as_ref().map(|t| t.clone_ref(py)) else { return Ok(()) };
        drop(this);
        let outer = tracker.borrow_mut(py).current(py)?;
        let app_scope = channel.get().inner_mut(py).app_scope.take();
        if let Some(app_scope) = app_scope {
            tracker.borrow(py).moves(py, &outer, app_scope.bind(py))?;
        }
        self.outer = Some(outer.unbind());
        Ok(())
    }

    fn leave_app_scope(&mut self, channel: &Bound<'_, Channel>) -> PyResult<()> {
        let py = channel.py();
        let Some(outer) = self.outer.take() else { return Ok(()) };
        let Some(tracker) = channel.get().inner(py).tracker.as_ref().map(|t| t.clone_ref(py)) else { return Ok(()) };
        let now = tracker.borrow_mut(py).current(py)?;
        if !now.is(&outer) {
            // Back to where the caller was. If the app is still suspended, it
            // is inside a scope of its own: keep that for its next step. (If
            // it ended, leaving its last scope may have pointed the task at a
            // scope that was current when the app entered it, not now.)
            tracker.borrow(py).moves(py, &now, outer.bind(py))?;
            let mut this = channel.get().inner_mut(py);
            if this.coro.is_some() {
                this.app_scope = Some(now.unbind());
            }
        }
        Ok(())
    }

    fn run(&mut self, channel: &Bound<'_, Channel>, mut input: Input) -> Outcome {
        let py = channel.py();
        if !self.begun {
            self.begun = true;
            match self.begin(channel) {
                Ok(None) => {}
                Ok(Some(Next::Resume(first))) => input = first,
                Ok(Some(Next::Settle(outcome))) => return outcome,
                Ok(Some(Next::Await(_))) => unreachable!("begin never awaits"),
                Err(err) => return Outcome::Raise(err),
            }
        }
        loop {
            if let Some(sub) = self.sub.as_ref().map(|s| s.clone_ref(py)) {
                match resume(py, sub.bind(py), input) {
                    Ok(Step::Yield(value)) => return Outcome::Yield(value),
                    Ok(Step::Return(_)) => {
                        self.sub = None;
                        input = Input::none(py);
                    }
                    Err(err) => {
                        self.sub = None;
                        input = Input::Throw(err);
                    }
                }
            }
            let (coro, waiting, app_context) = {
                let mut this = channel.get().inner_mut(py);
                if this.app_task.is_some() && self.goal_outlived(&this) {
                    drop(this);
                    return self.response_gone();
                }
                match this.coro.as_ref() {
                    Some(coro) => {
                        (coro.bind(py).clone(), this.waiting.take(), this.app_context.as_ref().map(|c| c.bind(py)))
                    }
                    None => {
                        drop(this);
                        return self.app_finished(channel);
                    }
                }
            };
            // The app waits on an asyncio future (we wait on its proxy): resume it
            // only once that future is done; meanwhile take sends from other tasks.
            if let Some(waiting) = waiting {
                match self.while_waiting(channel, waiting, input) {
                    Ok(Wait::ResumeApp(next)) => input = next,
                    Ok(Wait::Again(outcome)) => return outcome,
                    Ok(Wait::Await(iter)) => {
                        self.sub = Some(iter);
                        input = Input::none(py);
                        continue;
                    }
                    Err(err) => return Outcome::Raise(err),
                }
            }
            channel.get().inner_mut(py).stepping = true;
            let started = channel.get().timed.then(crate::timing::clock::now);
            let stepped = match &app_context {
                Some(context) => context.run(|| crate::layer::resume_app(py, &coro, input)).and_then(|r| r),
                None => crate::layer::resume_app(py, &coro, input),
            };
            // Done stepping; a direct send (our pause yielded) left its message.
            let message = {
                let mut this = channel.get().inner_mut(py);
                this.stepping = false;
                if let Some(started) = started {
                    this.app_nanos += started.elapsed_nanos();
                }
                match &stepped {
                    Ok(Step::Yield(value)) if this.pause.as_ref().is_some_and(|pause| value.is(pause)) => {
                        Some(this.outbox.take())
                    }
                    _ => None,
                }
            };
            match stepped {
                Ok(Step::Yield(_)) if message.is_some() => {
                    let next = match message.flatten() {
                        Some(message) => self.on_message(channel, message),
                        None => Err(PyRuntimeError::new_err("ferroware: a pause without a message")),
                    };
                    input = match next {
                        Ok(Next::Resume(next)) => next,
                        Ok(Next::Await(awaitable)) => match crate::layer::awaitable_iter(awaitable.bind(py)) {
                            Ok(iter) => {
                                self.sub = Some(iter);
                                Input::none(py)
                            }
                            Err(err) => Input::Throw(err),
                        },
                        Ok(Next::Settle(outcome)) => return outcome,
                        // A protocol error surfaces at the app's own `await send(...)`.
                        Err(err) => Input::Throw(err),
                    };
                }
                Ok(Step::Yield(value)) => {
                    if matches!(self.goal, Goal::Start | Goal::Body)
                        && is_asyncio_future(value.bind(py))
                        && !relaying_layer(py, &coro)
                    {
                        // Wait on a proxy instead, so a send from another task can
                        // wake us while the app keeps waiting on its own future.
                        // (Not above a ferroware layer that relays its response:
                        // no other task can send to us then, and the future it
                        // yields is already its own proxy, which a send from
                        // another task into its channel wakes.)
                        if let Err(err) = value.bind(py).setattr(intern!(py, "_asyncio_future_blocking"), false) {
                            return Outcome::Raise(err);
                        }
                        channel.get().inner_mut(py).waiting = Some(Waiting::new(value));
                        input = Input::none(py);
                        continue;
                    }
                    return Outcome::Yield(value);
                }
                Ok(Step::Return(_)) => {
                    channel.get().inner_mut(py).coro = None;
                    return self.app_finished(channel);
                }
                Err(err) => {
                    channel.get().inner_mut(py).coro = None;
                    return self.app_failed(channel, err);
                }
            }
        }
    }

    /// Our task was resumed while the app waits on `waiting.future`.
    fn while_waiting(&mut self, channel: &Bound<'_, Channel>, waiting: Waiting, input: Input) -> PyResult<Wait> {
        let py = channel.py();
        let future = waiting.future.bind(py);
        if let Input::Throw(err) = input {
            // We were cancelled (or something was thrown in): as the event loop
            // would have, cancel what the app waits on, then throw it in there.
            future.call_method0(intern!(py, "cancel"))?;
            release_held(channel, None)?;
            return Ok(Wait::ResumeApp(Input::Throw(err)));
        }
        if future.call_method0(intern!(py, "done"))?.is_truthy()? {
            release_held(channel, None)?;
            return Ok(Wait::ResumeApp(Input::none(py)));
        }
        if matches!(self.goal, Goal::Start | Goal::Body) {
            // Woken by a send from another task: take it as if the app sent it.
            if let Some(message) = take_parked(channel)? {
                let keep = waiting.again(py);
                match self.on_message(channel, Message::Asgi(message.unbind())) {
                    Ok(Next::Settle(outcome)) => {
                        channel.get().inner_mut(py).waiting = Some(keep);
                        return Ok(Wait::Again(outcome));
                    }
                    Ok(Next::Await(awaitable)) => {
                        channel.get().inner_mut(py).waiting = Some(keep);
                        return Ok(Wait::Await(crate::layer::awaitable_iter(awaitable.bind(py))?));
                    }
                    Ok(Next::Resume(_)) => release_held(channel, None)?,
                    Err(err) => release_held(channel, Some(err))?,
                }
                return self.while_waiting(channel, keep, Input::none(py));
            }
            let (waiting, proxy) = waiting.proxied(py, channel.get().dispatcher.get().hooks.get())?;
            channel.get().inner_mut(py).waiting = Some(waiting);
            return Ok(Wait::Again(Outcome::Yield(proxy)));
        }
        // After the response: no more hand-offs, wait on the app's own future.
        future.setattr(intern!(py, "_asyncio_future_blocking"), true)?;
        Ok(Wait::Again(Outcome::Yield(waiting.future)))
    }

    /// Work at the first step: start the app, or settle at once.
    fn begin(&mut self, channel: &Bound<'_, Channel>) -> PyResult<Option<Next>> {
        let py = channel.py();
        match self.goal {
            Goal::Start => {
                if channel.get().inner(py).state != State::Running {
                    // Awaited from another task after dispatch returned: the
                    // layer is done, and nothing may start the app any more.
                    return Err(PyRuntimeError::new_err(
                        "call_next() was awaited after the middleware's response went out: \
                         await it before dispatch returns",
                    ));
                }
                if let Err(err) = Channel::start_app(channel, self.task_path) {
                    channel.get().inner_mut(py).state = State::Done;
                    return Err(err);
                }
                Ok(None)
            }
            Goal::Body => Ok(match channel.get().inner(py).state {
                State::Started => None,
                _ => Some(Next::Settle(Outcome::End)),
            }),
            Goal::Finish | Goal::Abort => {
                let app_task = channel.get().inner(py).app_task.as_ref().map(|t| t.bind(py).clone());
                if let Some(app_task) = app_task {
                    let method = if self.goal == Goal::Finish { intern!(py, "finish") } else { intern!(py, "abort") };
                    Channel::end_app_task(channel, &app_task, method)?;
                    return Ok(None);
                }
                let mut this = channel.get().inner_mut(py);
                if this.coro.is_none() {
                    this.state = State::Done;
                    let error = if self.goal == Goal::Finish { this.error.take() } else { None };
                    return Ok(Some(Next::Settle(match error {
                        Some(err) => Outcome::Raise(err),
                        None => Outcome::Return(py.None()),
                    })));
                }
                this.state = State::Draining;
                // Not GeneratorExit: thrown into a coroutine, it closes what that
                // coroutine awaits instead of raising there, so an `async with`
                // deeper in the app couldn't await its exit.
                Ok(if self.goal == Goal::Abort {
                    Some(Next::Resume(Input::Throw(Unwinding::new_err(
                        "the middleware's response failed: unwinding the downstream app",
                    ))))
                } else {
                    None
                })
            }
        }
    }

    /// The app sent `message` from inside our stepping.
    fn on_message(&mut self, channel: &Bound<'_, Channel>, message: Message) -> PyResult<Next> {
        let py = channel.py();
        let kind = message.kind(py)?;
        match self.goal {
            Goal::Start => match kind {
                Kind::Start { status, headers } => {
                    let info = {
                        let mut this = channel.get().inner_mut(py);
                        this.state = State::Started;
                        this.info.take().unwrap_or_else(|| py.None())
                    };
                    let hooks = channel.get().dispatcher.get().hooks.get();
                    Ok(Next::Settle(match make_response(hooks, channel, &status, &headers, info) {
                        Ok(response) => Outcome::Return(response),
                        Err(err) => Outcome::Raise(err),
                    }))
                }
                Kind::Debug { info } => {
                    channel.get().inner_mut(py).info = Some(info.unbind());
                    Ok(Next::Resume(Input::none(py)))
                }
                Kind::EarlyHint(message) => {
                    let send = channel.get().send.clone_ref(py);
                    Ok(Next::Await(send.call1(py, (message,))?))
                }
                Kind::Body { .. } => Err(PyRuntimeError::new_err(
                    "ASGI message \"http.response.body\" sent before 'http.response.start'",
                )),
                Kind::PathSend(_) => Err(PyRuntimeError::new_err(
                    "ASGI message \"http.response.pathsend\" sent before 'http.response.start'",
                )),
                Kind::Other(other) => {
                    Err(PyRuntimeError::new_err(format!("ASGI message {other:?} sent before 'http.response.start'")))
                }
            },
            Goal::Body => match kind {
                Kind::Body { chunk, more } => {
                    if !more {
                        channel.get().inner_mut(py).state = State::BodyDone;
                    }
                    Ok(match chunk {
                        Some(chunk) => Next::Settle(Outcome::Return(chunk.unbind())),
                        None if more => Next::Resume(Input::none(py)),
                        None => Next::Settle(Outcome::End),
                    })
                }
                Kind::PathSend(message) => {
                    channel.get().inner_mut(py).state = State::BodyDone;
                    Ok(Next::Settle(Outcome::Return(message.unbind())))
                }
                Kind::Start { .. } => {
                    Err(PyRuntimeError::new_err("'http.response.start' sent twice: the response had already started"))
                }
                Kind::Debug { .. } => Err(PyRuntimeError::new_err(
                    "unexpected ASGI message \"http.response.debug\" while sending the response body",
                )),
                Kind::EarlyHint(_) => Err(PyRuntimeError::new_err(
                    "unexpected ASGI message \"http.response.early_hint\" while sending the response body",
                )),
                Kind::Other(other) => Err(PyRuntimeError::new_err(format!(
                    "unexpected ASGI message {other:?} while sending the response body"
                ))),
            },
            // Sends are discarded once draining; nothing pauses here.
            Goal::Finish | Goal::Abort => Ok(Next::Resume(Input::none(py))),
        }
    }

    /// On the task path, a drive for the response or its body in another
    /// task may outlive the layer's response; the relay is gone then.
    fn goal_outlived(&self, this: &ChannelInner) -> bool {
        matches!(self.goal, Goal::Start | Goal::Body) && this.is_response_sent()
    }

    #[inline(never)] // rare: kept out of `DriveCore::run`, the hot loop
    fn response_gone(&self) -> Outcome {
        match self.goal {
            Goal::Body => Outcome::End,
            _ => Outcome::Raise(PyRuntimeError::new_err(
                "call_next() is still awaited after the middleware's response went out (or failed)",
            )),
        }
    }

    /// The app returned.
    fn app_finished(&self, channel: &Bound<'_, Channel>) -> Outcome {
        let py = channel.py();
        let mut this = channel.get().inner_mut(py);
        this.state = State::Done;
        match self.goal {
            Goal::Start => Outcome::Raise(PyRuntimeError::new_err("No response returned.")),
            // Ended without a final body: the stream just ends, as in Starlette.
            Goal::Body => Outcome::End,
            Goal::Finish => match this.error.take() {
                Some(err) => Outcome::Raise(err),
                None => Outcome::Return(py.None()),
            },
            Goal::Abort => Outcome::Return(py.None()),
        }
    }

    /// The app raised `err`.
    fn app_failed(&self, channel: &Bound<'_, Channel>, err: PyErr) -> Outcome {
        let py = channel.py();
        let mut this = channel.get().inner_mut(py);
        this.state = State::Done;
        if self.goal == Goal::Body && err.is_instance_of::<PyException>(py) {
            // After the start the body is cut short; the error is raised
            // once the middleware's response is done (by `finish`). Not a
            // cancellation (or another `BaseException`): that goes on now,
            // through the body iterator, so the response is not ended as if
            // complete; Starlette's task group unwinds it the same way.
            this.error = Some(err);
            return Outcome::End;
        }
        // Not borrowed while Python code runs (chaining imports anyio).
        drop(this);
        match self.goal {
            Goal::Start => match chain_like_starlette(py, err) {
                Ok(err) | Err(err) => Outcome::Raise(err),
            },
            Goal::Finish | Goal::Body => Outcome::Raise(err),
            Goal::Abort => match beyond_unwinding(py, err) {
                None => Outcome::Return(py.None()),
                Some(err) => Outcome::Raise(err),
            },
        }
    }

    /// Closes what this core is stepping: the outer awaitable, then the app.
    pub fn close(&mut self, channel: &Bound<'_, Channel>) -> PyResult<()> {
        let py = channel.py();
        if let Some(sub) = self.sub.take() {
            sub.bind(py).call_method0(intern!(py, "close"))?;
        }
        let coro = {
            let mut this = channel.get().inner_mut(py);
            this.state = State::Done;
            this.coro.take()
        };
        if let Some(coro) = coro {
            coro.bind(py).call_method0(intern!(py, "close"))?;
        }
        Ok(())
    }
}

/// What to do after our task was resumed while the app waits on a future.
enum Wait {
    /// Resume the app with this.
    ResumeApp(Input),
    /// Return this from the step (a settled goal, or a suspension to pass up).
    Again(Outcome),
    /// Await this outer awaitable first (an early hint from another task).
    Await(Py<PyAny>),
}

/// An asyncio (or uvloop) future, as the app yields it to its task.
pub(crate) fn is_asyncio_future(value: &Bound<'_, PyAny>) -> bool {
    value
        .getattr(intern!(value.py(), "_asyncio_future_blocking"))
        .is_ok_and(|blocking| blocking.is_truthy().unwrap_or(false))
}

/// The oldest message another task parked on this channel, if any; its sender
/// stays held (waiting) until `release_held`, as a direct sender stays in `send`.
fn take_parked<'py>(channel: &Bound<'py, Channel>) -> PyResult<Option<Bound<'py, PyAny>>> {
    let message = Channel::call_handoff(channel, intern!(channel.py(), "take"), ())?;
    Ok(message.filter(|message| !message.is_none()))
}

/// Lets the held sender (if any) go on, with `error` raised in it if given.
fn release_held(channel: &Bound<'_, Channel>, error: Option<PyErr>) -> PyResult<()> {
    let py = channel.py();
    let error = error.map(|e| e.into_value(py).into_any()).unwrap_or_else(|| py.None());
    Channel::call_handoff(channel, intern!(py, "release"), (error,)).map(drop)
}

/// Starlette re-raises an app error in `call_next` as `raise exc from
/// exc.__cause__ or exc.__context__` inside its end-of-stream handler. Code
/// written against it (and its test suite) sees that chaining, so we give the
/// same: the cause kept or promoted from the context, and the context an
/// `anyio.EndOfStream`, suppressed so tracebacks stay clean.
fn chain_like_starlette(py: Python<'_>, err: PyErr) -> PyResult<PyErr> {
    let exc = err.value(py);
    let end_of_stream = py.import(intern!(py, "anyio"))?.getattr(intern!(py, "EndOfStream"))?;
    let context = exc.getattr(intern!(py, "__context__"))?;
    if exc.getattr(intern!(py, "__suppress_context__"))?.is_truthy()? && context.is_instance(&end_of_stream)? {
        // Chained already, by the layer below: a second layer must not promote
        // that marker to a cause.
        return Ok(err);
    }
    let cause = match exc.getattr(intern!(py, "__cause__"))? {
        c if c.is_none() => context,
        c => c,
    };
    exc.setattr(intern!(py, "__context__"), end_of_stream.call0()?)?;
    exc.setattr(intern!(py, "__cause__"), cause)?;
    exc.setattr(intern!(py, "__suppress_context__"), true)?;
    Ok(err)
}

/// Whether `app` is a ferroware layer relaying its response (`RunLayer::relaying`).
fn relaying_layer(py: Python<'_>, app: &Bound<'_, PyAny>) -> bool {
    app.cast::<crate::layer::RunLayer>().is_ok_and(|layer| layer.get().relaying(py))
}

/// The response `call_next` returns: `response_cls` with its per-response
/// attributes set directly (this runs once per request per layer).
fn make_response(
    hooks: &Hooks,
    channel: &Bound<'_, Channel>,
    status: &Bound<'_, PyAny>,
    headers: &Bound<'_, PyAny>,
    info: Py<PyAny>,
) -> PyResult<Py<PyAny>> {
    let py = channel.py();
    let fields = [
        (intern!(py, "status_code"), status),
        (intern!(py, "raw_headers"), headers),
        (intern!(py, "body_iterator"), channel.as_any()),
        // `info` and `background` are None in the shape.
        (intern!(py, "info"), info.bind(py)),
    ];
    let set = if info.is_none(py) { &fields[..3] } else { &fields[..] };
    Ok(hooks.response_shape.instantiate(py, set)?.unbind())
}

/// The awaitable behind `call_next` and the body iterator's `__anext__`.
/// Frozen, its state in a `GilCell` (see `RunLayer`). The state stays borrowed
/// while the app is stepped: stepping it again from inside is a `RuntimeError`.
#[pyclass(module = "ferroware._core", frozen)]
pub struct Drive {
    channel: Py<Channel>,
    state: GilCell<DriveState>,
}

struct DriveState {
    core: DriveCore,
    done: bool,
}

impl Drive {
    pub fn new(channel: &Bound<'_, Channel>, goal: Goal) -> Self {
        let state = DriveState { core: DriveCore::new(goal), done: false };
        Drive { channel: channel.clone().unbind(), state: GilCell::new(state) }
    }

    fn advance(&self, py: Python<'_>, input: Input) -> Outcome {
        match self.state.try_borrow_mut(py) {
            Ok(mut state) => self.advance_with(&mut state, py, input),
            Err(err) => Outcome::Raise(err),
        }
    }

    fn advance_with(&self, state: &mut DriveState, py: Python<'_>, input: Input) -> Outcome {
        if state.done {
            return Outcome::Raise(PyRuntimeError::new_err("cannot reuse already awaited ferroware awaitable"));
        }
        let outcome = state.core.step(self.channel.bind(py), input);
        if !matches!(outcome, Outcome::Yield(_)) {
            state.done = true;
        }
        outcome
    }

    fn step(&self, py: Python<'_>, input: Input) -> PyResult<Option<Py<PyAny>>> {
        let mut state = self.state.try_borrow_mut(py)?;
        if let (Input::Throw(_), false) = (&input, state.core.begun) {
            // Thrown in before the first step: nothing ran, nothing to unwind.
            state.core.begun = true;
            state.done = true;
            let Input::Throw(err) = input else { unreachable!() };
            return Err(err);
        }
        let outcome = self.advance_with(&mut state, py, input);
        drop(state);
        match outcome {
            Outcome::Yield(value) => Ok(Some(value)),
            Outcome::Return(value) if value.is_none(py) => Ok(None),
            Outcome::Return(value) => Err(stop_iteration(py, value)),
            Outcome::End => Err(PyStopAsyncIteration::new_err(())),
            Outcome::Raise(err) => Err(err),
        }
    }
}

crate::awaitable_pymethods!(Drive {
    /// The awaiting coroutine is being closed while we run the app: close it too.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let mut state = self.state.try_borrow_mut(py)?;
        if state.done {
            return Ok(());
        }
        state.done = true;
        state.core.close(self.channel.bind(py))
    }
});

/// `am_send` for `Drive`. CPython's `await` resumes an awaitable through
/// `PyIter_Send`, which uses this slot when a type has it: the result of
/// `call_next` then comes back as a return value, with no StopIteration object
/// made per request. PyO3 has no way to declare the slot, so `init` sets it on
/// the type it created.
unsafe extern "C" fn drive_am_send(
    iter: *mut ffi::PyObject,
    value: *mut ffi::PyObject,
    result: *mut *mut ffi::PyObject,
) -> ffi::PySendResult {
    // SAFETY: CPython calls slots with the GIL held and live arguments.
    let py = unsafe { Python::assume_attached() };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let any = unsafe { Bound::from_borrowed_ptr(py, iter) };
        let drive = any.cast::<Drive>().map_err(PyErr::from)?;
        let input = if value.is_null() {
            Input::none(py)
        } else {
            Input::Send(unsafe { Bound::from_borrowed_ptr(py, value) }.unbind())
        };
        Ok::<Outcome, PyErr>(drive.get().advance(py, input))
    }));
    let outcome = match outcome {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(err)) => Outcome::Raise(err),
        Err(panic) => Outcome::Raise(panic_error(panic)),
    };
    match outcome {
        Outcome::Yield(value) => {
            unsafe { *result = value.into_ptr() };
            ffi::PySendResult::PYGEN_NEXT
        }
        Outcome::Return(value) => {
            unsafe { *result = value.into_ptr() };
            ffi::PySendResult::PYGEN_RETURN
        }
        Outcome::End => {
            PyStopAsyncIteration::new_err(()).restore(py);
            unsafe { *result = std::ptr::null_mut() };
            ffi::PySendResult::PYGEN_ERROR
        }
        Outcome::Raise(err) => {
            err.restore(py);
            unsafe { *result = std::ptr::null_mut() };
            ffi::PySendResult::PYGEN_ERROR
        }
    }
}

/// A panic caught at the `am_send` boundary, which PyO3 doesn't guard: the
/// exception PyO3 raises for a panic elsewhere (`pyo3_runtime.PanicException`),
/// with the panic's message, so it unwinds the awaiting coroutine like any error.
fn panic_error(payload: Box<dyn std::any::Any + Send>) -> PyErr {
    let message = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic in ferroware's dispatcher".to_string());
    pyo3::panic::PanicException::new_err(message)
}

pub fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Drive>()?;
    m.add("Unwinding", m.py().get_type::<Unwinding>())?;
    let tp = m.py().get_type::<Drive>().as_type_ptr();
    // SAFETY: a heap type PyO3 just created with an `__await__`, so its
    // `tp_as_async` points at its own (writable) async-methods struct.
    unsafe {
        let methods = (*tp).tp_as_async;
        if !methods.is_null() {
            (*methods).am_send = Some(drive_am_send);
            ffi::PyType_Modified(tp);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pyo3::panic::PanicException;
    use std::panic::{catch_unwind, panic_any};

    #[test]
    fn a_panic_becomes_a_panic_exception_with_its_message() {
        Python::initialize();
        Python::attach(|py| {
            let formatted = catch_unwind(|| panic!("bad state {}", 7)).unwrap_err();
            let literal = catch_unwind(|| panic!("bad state")).unwrap_err();
            let other = catch_unwind(|| panic_any(7_u8)).unwrap_err();
            for (payload, message) in
                [(formatted, "bad state 7"), (literal, "bad state"), (other, "panic in ferroware's dispatcher")]
            {
                let err = panic_error(payload);
                assert!(err.is_instance_of::<PanicException>(py));
                assert_eq!(err.value(py).to_string(), message);
            }
        });
    }
}
