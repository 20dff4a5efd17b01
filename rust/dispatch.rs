//! The `call_next` dispatcher.
//!
//! A `Channel` is one request through one `BaseHTTPMiddleware` layer. It runs
//! the downstream app in the caller's own task: the awaitables it hands out
//! (`call_next`, the body iterator, `finish`) step the downstream coroutine
//! directly and pass its suspensions up unchanged. When the downstream app calls
//! `send` from inside that stepping, `send` returns a `Pause` that yields the
//! channel itself; the driver recognises it, takes the message and decides:
//! finish `call_next` with a response at `http.response.start`, hand a chunk to
//! the body iterator, or resume the app at once. The app stays suspended inside
//! its `send` until the driver resumes it, which is how backpressure and "run
//! background tasks only after the response went out" fall out for free.
//!
//! A `send` made from another task (the app's own task group) can't pause our
//! stepping, so it goes to the Python fallback, which hands the message over
//! through the app's pending `receive` (see `ferroware._handoff`).

use pyo3::exceptions::{PyRuntimeError, PyStopAsyncIteration, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};
use pyo3::{intern, IntoPyObjectExt};

use crate::coro::{exception_from_throw_args, resume, stop_iteration, Input, Ready, Step};

/// Where the request stands, from the middleware's side.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    /// `call_next` has not been awaited.
    Idle,
    /// `call_next` is running the downstream app up to `http.response.start`.
    Running,
    /// The start message was taken; body chunks are taken one at a time.
    Started,
    /// The final body (or pathsend) was taken; the app waits inside that send.
    BodyDone,
    /// The middleware's response went out (or was dropped): sends are swallowed.
    Draining,
    /// The downstream coroutine is gone.
    Done,
}

/// What an awaitable wants from the downstream app.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Goal {
    /// `call_next`: the response, as soon as its start message is sent.
    Start,
    /// The body iterator: the next non-empty chunk, or the end.
    Body,
    /// After the response went out: run the app to its end.
    Finish,
    /// After `dispatch` failed: unwind the app, awaiting its cleanups.
    Abort,
}

/// One per middleware instance: the downstream app and the two Python hooks.
#[pyclass(module = "ferroware._core", frozen)]
pub struct Dispatcher {
    app: Py<PyAny>,
    /// `make_response(channel, start_message, debug_info) -> Response`
    make_response: Py<PyAny>,
    /// `foreign_send(channel, message) -> Awaitable[None]`, for sends from other tasks.
    foreign_send: Py<PyAny>,
}

#[pymethods]
impl Dispatcher {
    #[new]
    fn new(app: Py<PyAny>, make_response: Py<PyAny>, foreign_send: Py<PyAny>) -> Self {
        Dispatcher { app, make_response, foreign_send }
    }

    #[getter]
    fn app(&self, py: Python<'_>) -> Py<PyAny> {
        self.app.clone_ref(py)
    }

    /// A channel for one request. `receive` is what the downstream app will
    /// receive from, `send` the middleware's own (outer) send, `owner` any object
    /// the Python side wants to find again from the channel (the request).
    fn channel(
        slf: &Bound<'_, Self>,
        scope: Py<PyAny>,
        receive: Py<PyAny>,
        send: Py<PyAny>,
        owner: Py<PyAny>,
    ) -> Channel {
        Channel {
            dispatcher: slf.clone().unbind(),
            scope,
            receive,
            send,
            owner,
            coro: None,
            stepping: false,
            outbox: None,
            state: State::Idle,
            info: None,
            error: None,
        }
    }
}

#[pyclass(module = "ferroware._core")]
pub struct Channel {
    dispatcher: Py<Dispatcher>,
    scope: Py<PyAny>,
    receive: Py<PyAny>,
    send: Py<PyAny>,
    owner: Py<PyAny>,
    coro: Option<Py<PyAny>>,
    /// True while one of our awaitables is inside `coro.send/throw`: a `send`
    /// made now comes from the coroutine we are stepping, in our task.
    stepping: bool,
    outbox: Option<Py<PyAny>>,
    state: State,
    info: Option<Py<PyAny>>,
    /// An app error raised after the response started, re-raised by `finish`.
    error: Option<PyErr>,
}

#[pymethods]
impl Channel {
    /// `call_next(request)`: the downstream app's response, returned as soon as
    /// it sends `http.response.start`. The request argument is accepted for API
    /// compatibility; like Starlette, the app runs on the middleware's scope.
    #[pyo3(signature = (request=None))]
    fn call_next(slf: &Bound<'_, Self>, request: Option<&Bound<'_, PyAny>>) -> PyResult<Drive> {
        let _ = request;
        let mut this = slf.borrow_mut();
        if this.state != State::Idle {
            return Err(PyRuntimeError::new_err(
                "call_next() was already called for this request; a middleware can call it once",
            ));
        }
        this.state = State::Running;
        Ok(Drive::new(slf, Goal::Start))
    }

    /// The `send` the downstream app is given.
    fn send(slf: &Bound<'_, Self>, message: Py<PyAny>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let mut this = slf.borrow_mut();
        if this.stepping && !this.response_sent() {
            this.outbox = Some(message);
            drop(this);
            return Pause { channel: slf.clone().unbind(), yielded: false }.into_py_any(py);
        }
        // From another task, or after the response went out (then the Python
        // side discards it, with a checkpoint so a sending loop stays cancellable).
        let hook = this.dispatcher.get().foreign_send.clone_ref(py);
        drop(this);
        hook.call1(py, (slf, message))
    }

    /// Async iteration over the response body, for `response.body_iterator`.
    fn __aiter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __anext__(slf: &Bound<'_, Self>) -> Drive {
        Drive::new(slf, Goal::Body)
    }

    /// Stops the body iteration early, as `aclose()` on Starlette's body
    /// generator does. The app is not touched: it stays in its `send` until the
    /// middleware's response went out, then runs on with its sends discarded.
    fn aclose(&mut self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        if self.state == State::Started {
            self.state = State::BodyDone;
        }
        Ready::none(py)
    }

    /// Runs the app to its end once the response went out, then re-raises an
    /// error the app raised after starting the response.
    fn finish(slf: &Bound<'_, Self>) -> Drive {
        Drive::new(slf, Goal::Finish)
    }

    /// Unwinds a suspended app after `dispatch` failed (GeneratorExit is thrown
    /// in and its cleanups may still await).
    fn abort(slf: &Bound<'_, Self>) -> Drive {
        Drive::new(slf, Goal::Abort)
    }

    /// True once the middleware's response went out or the app can no longer send.
    #[getter]
    fn response_sent(&self) -> bool {
        matches!(self.state, State::Draining | State::Done)
    }

    /// Marks the middleware's response as sent: the app's later sends are
    /// discarded and its `receive` reports a disconnect.
    fn mark_response_sent(&mut self) {
        if self.state != State::Done {
            self.state = State::Draining;
        }
    }

    /// True while the channel is stepping the app in the current task.
    #[getter]
    fn stepping(&self) -> bool {
        self.stepping
    }

    #[getter]
    fn owner(&self, py: Python<'_>) -> Py<PyAny> {
        self.owner.clone_ref(py)
    }

    fn __repr__(&self) -> String {
        format!("<ferroware Channel state={:?}>", self.state)
    }
}

/// Returned by `send` inside our stepping: yields the channel once, so the
/// driver above sees the message; resumes as `None` when the driver says so.
#[pyclass(module = "ferroware._core", freelist = 64)]
pub struct Pause {
    channel: Py<Channel>,
    yielded: bool,
}

#[pymethods]
impl Pause {
    fn __await__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&mut self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        if self.yielded {
            return Err(stop_iteration(py, py.None()));
        }
        self.yielded = true;
        Ok(self.channel.clone_ref(py).into_any())
    }

    fn send(&mut self, py: Python<'_>, _value: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        self.__next__(py)
    }

    /// The driver throws protocol errors in here, so they surface at the app's
    /// own `await send(...)`.
    #[pyo3(signature = (typ, val=None, tb=None))]
    fn throw(
        &mut self,
        py: Python<'_>,
        typ: &Bound<'_, PyAny>,
        val: Option<&Bound<'_, PyAny>>,
        tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        self.yielded = true;
        Err(exception_from_throw_args(py, typ, val, tb)?)
    }

    fn close(&mut self) {
        self.yielded = true;
    }
}

/// The awaitable behind `call_next`, the body iterator, `finish` and `abort`.
#[pyclass(module = "ferroware._core", freelist = 64)]
pub struct Drive {
    channel: Py<Channel>,
    goal: Goal,
    /// An outer awaitable being awaited on the app's behalf (an early hint).
    sub: Option<Py<PyAny>>,
    begun: bool,
    done: bool,
}

/// What to do after the driver looked at a message the app sent.
enum Next {
    /// Resume the app with this.
    Resume(Input),
    /// Await this outer awaitable, then resume the app.
    Await(Py<PyAny>),
    /// The awaitable is done: return this value, or raise this error.
    Complete(PyResult<Py<PyAny>>),
}

impl Drive {
    fn new(channel: &Bound<'_, Channel>, goal: Goal) -> Self {
        Drive { channel: channel.clone().unbind(), goal, sub: None, begun: false, done: false }
    }

    /// One step of the awaitable: Ok(value) to yield, Err to finish
    /// (StopIteration carrying the result, or the error).
    fn step(&mut self, py: Python<'_>, mut input: Input) -> PyResult<Py<PyAny>> {
        if self.done {
            return Err(PyRuntimeError::new_err("cannot reuse already awaited ferroware awaitable"));
        }
        let result = self.run(py, &mut input);
        if result.is_err() {
            self.done = true;
        }
        result
    }

    fn run(&mut self, py: Python<'_>, input: &mut Input) -> PyResult<Py<PyAny>> {
        let channel = self.channel.bind(py).clone();
        if !self.begun {
            self.begun = true;
            if let Some(next) = self.begin(&channel)? {
                match next {
                    Next::Complete(result) => return Err(complete(py, result)),
                    Next::Resume(first) => *input = first,
                    Next::Await(_) => unreachable!("begin never awaits"),
                }
            }
        }
        loop {
            if let Some(sub) = self.sub.as_ref().map(|s| s.clone_ref(py)) {
                match resume(py, sub.bind(py), std::mem::replace(input, Input::none(py))) {
                    Ok(Step::Yield(value)) => return Ok(value),
                    Ok(Step::Return(_)) => {
                        self.sub = None;
                        *input = Input::none(py);
                    }
                    Err(err) => {
                        self.sub = None;
                        *input = Input::Throw(err);
                    }
                }
            }
            let coro = match channel.borrow().coro.as_ref() {
                Some(coro) => coro.clone_ref(py),
                None => return Err(complete(py, self.app_finished(&channel))),
            };
            let stepped = {
                channel.borrow_mut().stepping = true;
                let stepped = resume(py, coro.bind(py), std::mem::replace(input, Input::none(py)));
                channel.borrow_mut().stepping = false;
                stepped
            };
            match stepped {
                Ok(Step::Yield(value)) if value.is(&channel) => {
                    let message = channel.borrow_mut().outbox.take();
                    let message = match message {
                        Some(message) => message,
                        None => return Err(PyRuntimeError::new_err("ferroware: pause without a message")),
                    };
                    match self.on_message(&channel, message.bind(py)) {
                        Ok(Next::Resume(next)) => *input = next,
                        Ok(Next::Await(awaitable)) => {
                            self.sub = Some(awaitable.bind(py).call_method0(intern!(py, "__await__"))?.unbind());
                        }
                        Ok(Next::Complete(result)) => return Err(complete(py, result)),
                        Err(err) => *input = Input::Throw(err),
                    }
                }
                Ok(Step::Yield(value)) => return Ok(value),
                Ok(Step::Return(_)) => {
                    channel.borrow_mut().coro = None;
                    return Err(complete(py, self.app_finished(&channel)));
                }
                Err(err) => {
                    channel.borrow_mut().coro = None;
                    return Err(complete(py, self.app_failed(&channel, err)));
                }
            }
        }
    }

    /// Work at the first step: create the coroutine, or settle at once.
    fn begin(&mut self, channel: &Bound<'_, Channel>) -> PyResult<Option<Next>> {
        let py = channel.py();
        let mut this = channel.borrow_mut();
        match self.goal {
            Goal::Start => {
                let d = this.dispatcher.get();
                let receive = this.receive.clone_ref(py);
                let send = channel.getattr(intern!(py, "send"))?;
                let coro = d.app.bind(py).call1((this.scope.clone_ref(py), receive, send))?;
                this.coro = Some(coro.unbind());
                Ok(None)
            }
            Goal::Body => match this.state {
                State::Started => Ok(None),
                _ => Ok(Some(Next::Complete(Err(PyStopAsyncIteration::new_err(()))))),
            },
            Goal::Finish => {
                if this.coro.is_none() {
                    this.state = State::Done;
                    return Ok(Some(Next::Complete(match this.error.take() {
                        Some(err) => Err(err),
                        None => Ok(py.None()),
                    })));
                }
                this.state = State::Draining;
                Ok(None)
            }
            Goal::Abort => {
                if this.coro.is_none() {
                    this.state = State::Done;
                    return Ok(Some(Next::Complete(Ok(py.None()))));
                }
                this.state = State::Draining;
                let exit = PyErr::new::<pyo3::exceptions::PyGeneratorExit, _>(());
                Ok(Some(Next::Resume(Input::Throw(exit))))
            }
        }
    }

    /// The app sent `message` from inside our stepping.
    fn on_message(&mut self, channel: &Bound<'_, Channel>, message: &Bound<'_, PyAny>) -> PyResult<Next> {
        let py = channel.py();
        let kind = message_type(message)?;
        match self.goal {
            Goal::Start => match kind.to_str()? {
                "http.response.start" => {
                    let mut this = channel.borrow_mut();
                    this.state = State::Started;
                    let info = this.info.take().unwrap_or_else(|| py.None());
                    let hook = this.dispatcher.get().make_response.clone_ref(py);
                    drop(this);
                    Ok(Next::Complete(hook.call1(py, (channel, message, info))))
                }
                "http.response.debug" => {
                    channel.borrow_mut().info = Some(message.get_item(intern!(py, "info"))?.unbind());
                    Ok(Next::Resume(Input::none(py)))
                }
                "http.response.early_hint" => {
                    let send = channel.borrow().send.clone_ref(py);
                    Ok(Next::Await(send.call1(py, (message,))?))
                }
                other => Err(PyRuntimeError::new_err(format!(
                    "ASGI message {other:?} sent before 'http.response.start'"
                ))),
            },
            Goal::Body => match kind.to_str()? {
                "http.response.body" => {
                    let (body, more) = body_fields(message)?;
                    if !more {
                        channel.borrow_mut().state = State::BodyDone;
                    }
                    if body.as_ref().is_some_and(|b| b.len().unwrap_or(1) > 0) {
                        Ok(Next::Complete(Ok(body.unwrap().unbind())))
                    } else if more {
                        Ok(Next::Resume(Input::none(py)))
                    } else {
                        Ok(Next::Complete(Err(PyStopAsyncIteration::new_err(()))))
                    }
                }
                "http.response.pathsend" => {
                    channel.borrow_mut().state = State::BodyDone;
                    Ok(Next::Complete(Ok(message.clone().unbind())))
                }
                "http.response.start" => Err(PyRuntimeError::new_err(
                    "'http.response.start' sent twice: the response had already started",
                )),
                other => Err(PyRuntimeError::new_err(format!(
                    "unexpected ASGI message {other:?} while sending the response body"
                ))),
            },
            // Sends are discarded (`Ready`) once draining; nothing pauses here.
            Goal::Finish | Goal::Abort => Ok(Next::Resume(Input::none(py))),
        }
    }

    /// The app returned.
    fn app_finished(&self, channel: &Bound<'_, Channel>) -> PyResult<Py<PyAny>> {
        let py = channel.py();
        let mut this = channel.borrow_mut();
        let before = this.state;
        this.state = State::Done;
        match self.goal {
            Goal::Start => Err(PyRuntimeError::new_err("No response returned.")),
            Goal::Body => {
                if before == State::Started {
                    // Ended without a final body: the stream just ends, as in Starlette.
                    this.state = State::Done;
                }
                Err(PyStopAsyncIteration::new_err(()))
            }
            Goal::Finish => match this.error.take() {
                Some(err) => Err(err),
                None => Ok(py.None()),
            },
            Goal::Abort => Ok(py.None()),
        }
    }

    /// The app raised `err`.
    fn app_failed(&self, channel: &Bound<'_, Channel>, err: PyErr) -> PyResult<Py<PyAny>> {
        let py = channel.py();
        let mut this = channel.borrow_mut();
        this.state = State::Done;
        match self.goal {
            Goal::Start => Err(chain_like_starlette(py, err)?),
            Goal::Finish => Err(err),
            Goal::Body => {
                // After the start the body is cut short; the error is raised
                // once the middleware's response is done (by `finish`).
                this.error = Some(err);
                Err(PyStopAsyncIteration::new_err(()))
            }
            Goal::Abort => {
                if err.is_instance_of::<pyo3::exceptions::PyGeneratorExit>(py) {
                    Ok(py.None())
                } else {
                    Err(err)
                }
            }
        }
    }
}

/// Starlette re-raises an app error in `call_next` as `raise exc from
/// exc.__cause__ or exc.__context__` inside its end-of-stream handler. Code
/// written against it (and its test suite) sees that chaining, so we give the
/// same: the cause kept or promoted from the context, and the context an
/// `anyio.EndOfStream`, suppressed so tracebacks stay clean.
fn chain_like_starlette(py: Python<'_>, err: PyErr) -> PyResult<PyErr> {
    let exc = err.value(py);
    let cause = match exc.getattr(intern!(py, "__cause__"))? {
        c if c.is_none() => exc.getattr(intern!(py, "__context__"))?,
        c => c,
    };
    let end_of_stream = py.import(intern!(py, "anyio"))?.getattr(intern!(py, "EndOfStream"))?.call0()?;
    exc.setattr(intern!(py, "__context__"), end_of_stream)?;
    exc.setattr(intern!(py, "__cause__"), cause)?;
    exc.setattr(intern!(py, "__suppress_context__"), true)?;
    Ok(err)
}

fn complete(py: Python<'_>, result: PyResult<Py<PyAny>>) -> PyErr {
    match result {
        Ok(value) => stop_iteration(py, value),
        Err(err) => err,
    }
}

fn message_type<'py>(message: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyString>> {
    let py = message.py();
    let kind = match message.cast::<PyDict>() {
        Ok(dict) => dict.get_item(intern!(py, "type"))?,
        Err(_) => Some(message.get_item(intern!(py, "type"))?),
    };
    match kind {
        Some(kind) => kind.cast_into::<PyString>().map_err(|_| {
            PyTypeError::new_err("ASGI message 'type' must be a str")
        }),
        None => Err(PyRuntimeError::new_err("ASGI message without a 'type' key")),
    }
}

/// `(message.get("body", b""), bool(message.get("more_body", False)))`
fn body_fields<'py>(message: &Bound<'py, PyAny>) -> PyResult<(Option<Bound<'py, PyAny>>, bool)> {
    let py = message.py();
    let get = |key: &Bound<'py, PyString>| -> PyResult<Option<Bound<'py, PyAny>>> {
        match message.cast::<PyDict>() {
            Ok(dict) => dict.get_item(key),
            Err(_) => {
                let value = message.call_method1(intern!(py, "get"), (key,))?;
                Ok(if value.is_none() { None } else { Some(value) })
            }
        }
    };
    let body = get(intern!(py, "body"))?;
    let more = match get(intern!(py, "more_body"))? {
        Some(flag) => flag.is_truthy()?,
        None => false,
    };
    let body = match body {
        Some(b) if b.is_none() => None,
        Some(b) => Some(b),
        None => None,
    };
    if let Some(b) = &body {
        if !b.is_instance_of::<PyBytes>() && b.len().is_err() {
            return Err(PyTypeError::new_err("ASGI 'http.response.body' body must be bytes"));
        }
    }
    Ok((body, more))
}

#[pymethods]
impl Drive {
    fn __await__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&mut self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.step(py, Input::none(py))
    }

    fn send(&mut self, py: Python<'_>, value: Py<PyAny>) -> PyResult<Py<PyAny>> {
        self.step(py, Input::Send(value))
    }

    #[pyo3(signature = (typ, val=None, tb=None))]
    fn throw(
        &mut self,
        py: Python<'_>,
        typ: &Bound<'_, PyAny>,
        val: Option<&Bound<'_, PyAny>>,
        tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let err = exception_from_throw_args(py, typ, val, tb)?;
        if !self.begun {
            // Thrown in before the first step: nothing ran, nothing to unwind.
            self.begun = true;
            self.done = true;
            return Err(err);
        }
        self.step(py, Input::Throw(err))
    }

    /// The awaiting coroutine is being closed while we run the app: close it too.
    fn close(&mut self, py: Python<'_>) -> PyResult<()> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        if let Some(sub) = self.sub.take() {
            sub.bind(py).call_method0(intern!(py, "close"))?;
        }
        let channel = self.channel.bind(py);
        let coro = {
            let mut this = channel.borrow_mut();
            this.state = State::Done;
            this.coro.take()
        };
        if let Some(coro) = coro {
            coro.bind(py).call_method0(intern!(py, "close"))?;
        }
        Ok(())
    }
}

pub fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Dispatcher>()?;
    m.add_class::<Channel>()?;
    m.add_class::<Drive>()?;
    m.add_class::<Pause>()?;
    m.add_class::<Ready>()?;
    Ok(())
}
