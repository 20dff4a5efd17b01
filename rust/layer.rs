//! One request through one `BaseHTTPMiddleware` layer, as a single awaitable.
//!
//! It does what Starlette's `BaseHTTPMiddleware.__call__` does, in order:
//! build the request, run `dispatch(request, call_next)`, send the response it
//! returned, then let the downstream app finish (its background work runs after
//! the response went out). Each step that must wait is a sub-awaitable stepped in
//! place, so the whole layer costs one Python frame: the user's `dispatch`.
//!
//! When `dispatch` returns the response `call_next` gave it, untouched but for
//! status and headers, sending it is done here too: start message, each body
//! chunk as it comes from the suspended app (`more_body=True`), then an empty
//! final chunk, the exact messages Starlette's `call_next` response sends.
//! Any other response is sent by calling it, as Starlette does.

use pyo3::exceptions::{PyException, PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyMapping, PyTuple};
use pyo3::{ffi, intern};

use crate::coro::{self, resume, Input};
use crate::dispatch::{Channel, Dispatcher, Pause, ScopeTracker, Sent, State, Waiting};
use crate::drive::{is_asyncio_future, DriveCore, Goal, Outcome};
use crate::gil_cell::GilCell;
use crate::message::Message;
use crate::objects::{instance_dict, own_attr};
use crate::pull;
use crate::timing::clock;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// Nothing ran yet.
    Begin,
    /// Awaiting `dispatch(request, call_next)`.
    Dispatch,
    /// Awaiting `response(scope, receive, send)` for a response we don't relay.
    Respond,
    /// Relaying the `call_next` response: awaiting the outer send of the
    /// debug or start message, of a body chunk or pathsend, the next chunk
    /// from the app, or the final empty chunk.
    SendHead,
    NextChunk,
    SendChunk,
    SendFinal,
    /// Awaiting the response's own background task.
    Background,
    /// Awaiting a yield to the event loop before the app's background work.
    Checkpoint,
    /// Awaiting the app's end (it runs on from its last send).
    Finish,
    /// Awaiting the app's unwinding after `dispatch` or the response failed.
    Abort,
    Done,
}

/// How a sub-step ended, as the layer sees it.
enum Step {
    Yield(Py<PyAny>),
    Return(Py<PyAny>),
    /// The app's body is over.
    BodyEnd,
    /// A send held back behind a chunk forwarded from another task can go now.
    Resend(Message),
    /// The sub-step changed on the way (a pull is to be served, or the
    /// response resumed): step it now.
    Again,
}

/// What the layer awaits right now.
enum Sub {
    /// A Python awaitable's iterator (dispatch, an outer send, a background task).
    Py(Py<PyAny>),
    /// A send into an outer channel that is stepping us: yield its pause once,
    /// then done. Handled here, so no Python call is made for it.
    Pause { pause: Py<Pause>, yielded: bool },
    /// The downstream app, stepped in place by a drive core.
    App(DriveCore),
    /// A send of ours held back until a chunk that another task is sending
    /// through our `send` has got through (`rust/forward.rs`): wait
    /// on `waiter`, then send `message`.
    AfterForward { waiter: Py<PyAny>, message: Option<Message>, yielded: bool },
    /// The response (`Respond`) waits on an asyncio future while a pull of
    /// `call_next`'s body may come from another task: we wait on a proxy of
    /// that future, which such a pull completes early (`rust/pull.rs`).
    ResponseWaits { response: Py<PyAny>, waiting: Waiting },
    /// A pull of `call_next`'s body by another task is served (`rust/pull.rs`):
    /// the core steps the app to its next chunk for that task; then the
    /// response is resumed (it took a turn for this), or, if it waits on a
    /// future (`waiting`), waited for again.
    Serve { response: Py<PyAny>, core: DriveCore, waiting: Option<Waiting> },
}

/// `await dispatcher(scope, receive, send)`: the awaitable for one request
/// through one layer. Frozen, its state in a `GilCell`: a mutable pyclass
/// would pay PyO3's atomic borrow flag (locked instructions) on every step.
#[pyclass(module = "ferroware._core", frozen)]
pub struct RunLayer {
    layer: GilCell<Layer>,
}

impl RunLayer {
    pub fn new(dispatcher: &Bound<'_, Dispatcher>, scope: Py<PyAny>, receive: Py<PyAny>, send: Py<PyAny>) -> Self {
        RunLayer { layer: GilCell::new(Layer::new(dispatcher, scope, receive, send)) }
    }

    /// Ok(Some(value)): yield it; Ok(None): done; Err: raised. The layer stays
    /// borrowed while it runs (Python code included): stepping it again from
    /// inside is a `RuntimeError`, as it was for a `&mut self` method.
    fn step(&self, py: Python<'_>, input: Input) -> PyResult<Option<Py<PyAny>>> {
        self.layer.try_borrow_mut(py)?.step(py, input)
    }

    /// Whether it is relaying `call_next`'s response: then nothing but this
    /// layer, stepped in our task, sends into the channel above it (its
    /// `dispatch` is over, and no response of its own runs in a task).
    pub fn relaying(&self, py: Python<'_>) -> bool {
        self.layer.try_borrow(py).is_some_and(|layer| {
            matches!(layer.phase, Phase::SendHead | Phase::NextChunk | Phase::SendChunk | Phase::SendFinal)
        })
    }
}

/// The state of a `RunLayer`.
struct Layer {
    dispatcher: Py<Dispatcher>,
    scope: Py<PyAny>,
    receive: Py<PyAny>,
    send: Py<PyAny>,
    request: Option<Py<PyAny>>,
    downstream_receive: Option<Py<PyAny>>,
    channel: Option<Py<Channel>>,
    response: Option<Py<PyAny>>,
    phase: Phase,
    /// Whatever this phase awaits.
    sub: Option<Sub>,
    /// Messages still to send before the body (debug info, then start).
    head: Vec<Message>,
    /// The body ended with a pathsend: no final empty chunk.
    pathsend: bool,
    /// The error that `dispatch` or the response raised, re-raised after abort.
    failure: Option<PyErr>,
    /// Timings on: this layer's own time so far, and where the running step began.
    own_nanos: u64,
    step_began: Option<(clock::Tick, u64)>,
}

impl Layer {
    fn new(dispatcher: &Bound<'_, Dispatcher>, scope: Py<PyAny>, receive: Py<PyAny>, send: Py<PyAny>) -> Self {
        Layer {
            dispatcher: dispatcher.clone().unbind(),
            scope,
            receive,
            send,
            request: None,
            downstream_receive: None,
            channel: None,
            response: None,
            phase: Phase::Begin,
            sub: None,
            head: Vec::new(),
            pathsend: false,
            failure: None,
            own_nanos: 0,
            step_began: None,
        }
    }

    /// Ok(Some(value)): yield it; Ok(None): done; Err: raised.
    fn step(&mut self, py: Python<'_>, input: Input) -> PyResult<Option<Py<PyAny>>> {
        if self.dispatcher.get().timing.is_none() {
            return self.run(py, input);
        }
        self.step_began = Some((clock::now(), self.app_nanos(py)));
        let result = self.run(py, input);
        self.own_nanos = self.own_so_far(py);
        self.step_began = None;
        if self.phase == Phase::Done {
            if let Some(timing) = &self.dispatcher.get().timing {
                timing.timings.borrow_mut(py).record(timing.layer, self.own_nanos);
            }
        }
        result
    }

    /// Time stepped in the downstream app so far (timings on).
    fn app_nanos(&self, py: Python<'_>) -> u64 {
        self.channel.as_ref().map_or(0, |c| c.get().inner(py).app_nanos)
    }

    /// This layer's own time, up to now.
    fn own_so_far(&self, py: Python<'_>) -> u64 {
        match self.step_began {
            Some((began, app_before)) => {
                let inside_app = self.app_nanos(py).saturating_sub(app_before);
                self.own_nanos + began.elapsed_nanos().saturating_sub(inside_app)
            }
            None => self.own_nanos,
        }
    }

    /// Timings on: a `Server-Timing` field with this layer's own time until its
    /// response starts, added to the response's header list.
    fn add_server_timing(&self, py: Python<'_>, response: &Bound<'_, PyAny>) -> PyResult<()> {
        let Some(timing) = &self.dispatcher.get().timing else { return Ok(()) };
        let Ok(headers) = response.getattr(intern!(py, "raw_headers"))?.cast_into::<PyList>() else {
            return Ok(());
        };
        let value = timing.timings.borrow(py).server_timing(timing.layer, self.own_so_far(py));
        let field = (PyBytes::new(py, b"server-timing"), PyBytes::new(py, value.as_bytes()));
        headers.append(field)
    }

    fn run(&mut self, py: Python<'_>, mut input: Input) -> PyResult<Option<Py<PyAny>>> {
        match self.phase {
            Phase::Done => {
                return Err(PyRuntimeError::new_err("cannot reuse already awaited ferroware layer call"));
            }
            Phase::Begin => {
                if let Input::Throw(err) = input {
                    self.phase = Phase::Done;
                    return Err(err);
                }
                if let Err(err) = self.begin(py) {
                    self.phase = Phase::Done;
                    return Err(err);
                }
                input = Input::none(py);
            }
            _ => {}
        }
        loop {
            let stepped: PyResult<Step> = match self.sub.as_mut() {
                Some(Sub::Py(iter)) if self.phase == Phase::Respond => {
                    let iter = iter.clone_ref(py);
                    self.step_response(py, iter, input)
                }
                // Bound, not `Py`, clones on these two paths, the ones every
                // request takes: dropping a `Py` costs a thread-local lookup.
                Some(Sub::Py(iter)) if self.phase == Phase::Dispatch => {
                    let iter = iter.bind(py).clone();
                    self.step_dispatch(&iter, input)
                }
                Some(Sub::Py(iter)) => {
                    let iter = iter.bind(py).clone();
                    resume(py, &iter, input).map(Step::from)
                }
                Some(Sub::ResponseWaits { response, waiting }) => {
                    let (response, waiting) = (response.clone_ref(py), waiting.again(py));
                    self.response_woken(py, response, waiting, input)
                }
                Some(Sub::Serve { core, .. }) => {
                    let channel = self.channel.as_ref().expect("channel exists after begin").clone_ref(py);
                    match serve(core, channel.bind(py), input) {
                        Ok(Some(value)) => Ok(Step::Yield(value)),
                        Ok(None) => self.served(py),
                        Err(err) => Err(err),
                    }
                }
                Some(Sub::Pause { pause, yielded }) => {
                    if *yielded {
                        match input {
                            Input::Send(_) => Ok(Step::Return(py.None())),
                            Input::Throw(err) => Err(err),
                        }
                    } else {
                        *yielded = true;
                        Ok(Step::Yield(pause.clone_ref(py).into_any()))
                    }
                }
                Some(Sub::App(core)) => {
                    let channel = self.channel.as_ref().expect("channel exists after begin").bind(py);
                    match core.step(channel, input) {
                        Outcome::Yield(value) => Ok(Step::Yield(value)),
                        Outcome::Return(value) => Ok(Step::Return(value)),
                        // The body is over: no exception object is made for it.
                        Outcome::End => Ok(Step::BodyEnd),
                        Outcome::Raise(err) => Err(err),
                    }
                }
                Some(Sub::AfterForward { waiter, message, yielded }) => {
                    if *yielded {
                        match (input, message.take()) {
                            (Input::Send(_), Some(message)) => Ok(Step::Resend(message)),
                            (Input::Throw(err), _) => Err(err),
                            (Input::Send(_), None) => {
                                Err(PyRuntimeError::new_err("ferroware: a held-back send was lost"))
                            }
                        }
                    } else {
                        *yielded = true;
                        Ok(Step::Yield(waiter.clone_ref(py)))
                    }
                }
                None => Err(PyRuntimeError::new_err("ferroware: layer lost its place")),
            };
            let stepped = if self.phase == Phase::NextChunk && !matches!(stepped, Ok(Step::Yield(_))) {
                let mut channel = self.channel().get().inner_mut(py);
                channel.awaiting_chunk = false;
                // A chunk that went to the server from another task failed there:
                // fail as when our own send of it fails.
                match channel.forward_error.take() {
                    Some(err) => Err(err),
                    None => stepped,
                }
            } else {
                stepped
            };
            // What the finished sub-step leads to; an error in that work is
            // handled like one from the sub-step (the app gets unwound).
            let outcome = match stepped {
                Ok(Step::Yield(value)) => return Ok(Some(value)),
                Ok(Step::Return(value)) => {
                    self.sub = None;
                    self.advance(py, value)
                }
                Ok(Step::BodyEnd) => {
                    self.sub = None;
                    self.body_ended(py)
                }
                Ok(Step::Resend(message)) => {
                    self.sub = None;
                    self.await_send(py, message)
                }
                Ok(Step::Again) => Ok(true),
                Err(err) => {
                    self.sub = None;
                    Err(err)
                }
            }
            .or_else(|err| self.on_error(py, err));
            match outcome {
                Ok(true) => input = Input::none(py),
                Ok(false) => {
                    self.end(py);
                    return Ok(None);
                }
                Err(err) => {
                    self.end(py);
                    return Err(err);
                }
            }
        }
    }

    /// Steps `dispatch`, marking the channel as `dispatching` meanwhile: a
    /// `call_next` first awaited then is awaited in our task (`DriveCore::step`).
    fn step_dispatch(&mut self, dispatch: &Bound<'_, PyAny>, input: Input) -> PyResult<Step> {
        let py = dispatch.py();
        let channel = self.channel().get();
        channel.inner_mut(py).dispatching = true;
        let stepped = resume(py, dispatch, input);
        channel.inner_mut(py).dispatching = false;
        stepped.map(Step::from)
    }

    /// Steps the response `dispatch` returned, marking the channel as
    /// `responding` meanwhile: a `receive` it makes then is made in our task
    /// (`ferroware._handoff.ServerReceive`). When it yields a pull's turn (trio),
    /// the app is stepped for that pull next (`Sub::Serve`). When it waits on
    /// an asyncio future while `call_next`'s body may still be pulled, we wait
    /// on a proxy a pull can wake (`Sub::ResponseWaits`).
    #[inline(never)] // off the relaying path: `run` stays as small as it was
    fn step_response(&mut self, py: Python<'_>, response: Py<PyAny>, input: Input) -> PyResult<Step> {
        let channel = self.channel().clone_ref(py);
        let channel = channel.bind(py);
        pull::expect(channel)?;
        channel.get().inner_mut(py).responding = true;
        let stepped = resume(py, response.bind(py), input);
        channel.get().inner_mut(py).responding = false;
        match stepped? {
            coro::Step::Yield(value) if pull::is_turn(value.bind(py)) => {
                if pull::take(channel)? {
                    self.serve_pull(response, None);
                }
                // Stepped next: the core from its start, or (no pull waits) the response.
                Ok(Step::Again)
            }
            coro::Step::Yield(value) if value.is_none(py) && pull::take(channel)? => {
                // A bare yield (asyncio's "let the others run") with a pull
                // from another task waiting: serve it first.
                self.serve_pull(response, None);
                Ok(Step::Again)
            }
            coro::Step::Yield(value)
                if is_asyncio_future(value.bind(py)) && pull::may_come(channel, value.bind(py)) =>
            {
                // As a task does with the future it is given: it is ours to wait on now.
                value.bind(py).setattr(intern!(py, "_asyncio_future_blocking"), false)?;
                self.response_waits(py, response, Waiting::new(value))
            }
            step => Ok(step.into()),
        }
    }

    /// Steps the app for the pull just taken (`Sub::Serve`), then goes back
    /// to `response` (or to its wait on a future).
    fn serve_pull(&mut self, response: Py<PyAny>, waiting: Option<Waiting>) {
        self.sub = Some(Sub::Serve { response, core: DriveCore::new(Goal::Body), waiting });
    }

    /// The response waits on `waiting.future`: serve a pull if one waits,
    /// resume the response if the future is done, else wait on a new proxy of
    /// it, which a pull from another task completes early.
    fn response_waits(&mut self, py: Python<'_>, response: Py<PyAny>, waiting: Waiting) -> PyResult<Step> {
        let channel = self.channel().clone_ref(py);
        let channel = channel.bind(py);
        if pull::take(channel)? {
            self.serve_pull(response, Some(waiting));
            return Ok(Step::Again);
        }
        if waiting.future.bind(py).call_method0(intern!(py, "done"))?.is_truthy()? {
            self.sub = Some(Sub::Py(response));
            return Ok(Step::Again);
        }
        let (waiting, proxy) = waiting.proxied(py, self.dispatcher.get().hooks.get())?;
        pull::wait_home(channel, proxy.bind(py))?;
        self.sub = Some(Sub::ResponseWaits { response, waiting });
        Ok(Step::Yield(proxy))
    }

    /// Our task was resumed while the response waits on `waiting.future`.
    #[inline(never)] // rare: kept out of `Layer::run`, the hot loop
    fn response_woken(
        &mut self,
        py: Python<'_>,
        response: Py<PyAny>,
        waiting: Waiting,
        input: Input,
    ) -> PyResult<Step> {
        pull::left_home(self.channel().bind(py))?;
        match input {
            Input::Throw(err) => {
                // We were cancelled (or something was thrown in): as the event
                // loop would have, cancel what the response waits on, and throw
                // it in there.
                waiting.future.bind(py).call_method0(intern!(py, "cancel"))?;
                self.sub = Some(Sub::Py(response.clone_ref(py)));
                self.step_response(py, response, Input::Throw(err))
            }
            Input::Send(_) => self.response_waits(py, response, waiting),
        }
    }

    /// A pull was served: back to the response, or to waiting for its future.
    #[inline(never)] // rare: kept out of `Layer::run`, the hot loop
    fn served(&mut self, py: Python<'_>) -> PyResult<Step> {
        match self.sub.take() {
            Some(Sub::Serve { response, waiting: None, .. }) => {
                self.sub = Some(Sub::Py(response));
                Ok(Step::Again)
            }
            Some(Sub::Serve { response, waiting: Some(waiting), .. }) => {
                self.response_waits(py, response, waiting.again(py))
            }
            _ => Err(PyRuntimeError::new_err("ferroware: a served pull lost its response")),
        }
    }

    fn end(&mut self, py: Python<'_>) {
        self.phase = Phase::Done;
        self.sub = None;
        if let Some(channel) = &self.channel {
            // Two statements: the channel's borrow ends before what it held is dropped.
            let released = channel.get().inner_mut(py).release(py);
            drop(released);
        }
    }

    fn begin(&mut self, py: Python<'_>) -> PyResult<()> {
        let dispatcher = self.dispatcher.bind(py);
        let d = dispatcher.get();
        let hooks = d.hooks.get();
        // The channel first, so the request is built with it; the app's
        // `receive` (a method of the request) is given to the channel after.
        let channel =
            Bound::new(py, Channel::new(dispatcher, self.scope.clone_ref(py), py.None(), self.send.clone_ref(py)))?;
        let request = match &hooks.request_shape {
            Some(shape) => shape.instantiate(
                py,
                &[
                    (intern!(py, "scope"), self.scope.bind(py)),
                    (intern!(py, "_receive"), self.receive.bind(py)),
                    (intern!(py, "_send"), self.send.bind(py)),
                    (intern!(py, "channel"), channel.as_any()),
                ],
            )?,
            None => {
                let request = hooks.request_cls.bind(py).call1((&self.scope, &self.receive, &self.send))?;
                request.setattr(intern!(py, "channel"), &channel)?;
                request
            }
        };
        let downstream_receive = request.getattr(intern!(py, "downstream_receive"))?;
        // How to read and move this task's cancel scope: shared with the layer
        // above when it is ours (same task); else looked up here, once per
        // request, in the task the request runs in.
        // What the tracker tells is read here once per request (a borrow of it
        // is an atomic operation) and passed on with it.
        let (tracker, on_trio, eager_tasks) = match self.send.bind(py).cast::<Channel>() {
            Ok(parent) => {
                let parent = parent.get().inner(py);
                (parent.tracker.as_ref().map(|t| t.clone_ref(py)), parent.on_trio, parent.eager_tasks)
            }
            Err(_) => match ScopeTracker::lookup(py, hooks)? {
                Some(tracker) => {
                    let (on_trio, eager_tasks) = {
                        let found = tracker.borrow(py);
                        (found.on_trio(), found.eager_tasks())
                    };
                    (Some(tracker), on_trio, eager_tasks)
                }
                None => (None, false, false),
            },
        };
        // On trio, where dispatch is now: a `call_next` made inside a cancel
        // scope that dispatch entered takes the task path (`DriveCore::step`).
        let dispatch_scope = match &tracker {
            Some(tracker) if on_trio => Some(tracker.borrow_mut(py).current(py)?.unbind()),
            _ => None,
        };
        {
            let mut this = channel.get().inner_mut(py);
            this.receive = downstream_receive.clone().unbind();
            this.tracker = tracker;
            this.dispatch_scope = dispatch_scope;
            this.on_trio = on_trio;
            this.eager_tasks = eager_tasks;
        }
        let call_next = channel.getattr(intern!(py, "call_next"))?;
        let coro = d.dispatch_func.bind(py).call1((&request, call_next))?;
        self.sub = Some(Sub::Py(awaitable_iter(&coro)?));
        self.request = Some(request.unbind());
        self.downstream_receive = Some(downstream_receive.unbind());
        self.channel = Some(channel.unbind());
        self.phase = Phase::Dispatch;
        Ok(())
    }

    /// The awaited sub-step returned `value`; start the next one.
    /// Ok(true): go on stepping; Ok(false): the layer is done.
    fn advance(&mut self, py: Python<'_>, value: Py<PyAny>) -> PyResult<bool> {
        match self.phase {
            Phase::Dispatch => self.respond(py, value.into_bound(py)),
            Phase::SendHead => {
                if self.head.is_empty() {
                    self.next_chunk(py)
                } else {
                    let message = self.head.remove(0);
                    self.await_send(py, message)
                }
            }
            Phase::NextChunk => {
                let chunk = value.into_bound(py);
                self.phase = Phase::SendChunk;
                // A chunk is bytes; a mapping is a pathsend message. (An ABC
                // check for Mapping is slow, so bytes are told apart first.)
                let bytes = chunk.is_instance_of::<PyBytes>();
                if !bytes && (chunk.is_instance_of::<PyDict>() || chunk.is_instance_of::<PyMapping>()) {
                    self.pathsend = true;
                    return self.await_send(py, Message::Asgi(chunk.unbind()));
                }
                // The app's last chunk, going to a ferroware layer above: one
                // message says "chunk, then the end". That layer's body
                // iterator yields the same chunk and then ends, as it would
                // after a separate empty final chunk, so only the round trip
                // is saved. (A server still gets Starlette's exact messages.)
                if self.send.bind(py).is_instance_of::<Channel>()
                    && self.channel().get().inner(py).state == State::BodyDone
                {
                    self.phase = Phase::SendFinal;
                    return self.await_send(py, Message::Body { chunk: Some(chunk.unbind()), more: false });
                }
                self.await_send(py, Message::Body { chunk: Some(chunk.unbind()), more: true })
            }
            Phase::SendChunk => self.next_chunk(py),
            Phase::SendFinal => self.background(py),
            Phase::Respond | Phase::Background => self.sent(py),
            Phase::Checkpoint => self.finish(py),
            // A cancellation that arrived at the checkpoint is raised now that the
            // app was let finish (it must not be left suspended).
            Phase::Finish => match self.failure.take() {
                Some(err) => Err(err),
                None => Ok(false),
            },
            Phase::Abort => {
                Err(self.failure.take().unwrap_or_else(|| PyRuntimeError::new_err("ferroware: abort without an error")))
            }
            Phase::Begin | Phase::Done => Err(PyRuntimeError::new_err("ferroware: layer stepped out of order")),
        }
    }

    /// The awaited sub-step raised `err`.
    fn on_error(&mut self, py: Python<'_>, err: PyErr) -> PyResult<bool> {
        match self.phase {
            Phase::Dispatch
            | Phase::Respond
            | Phase::SendHead
            | Phase::NextChunk
            | Phase::SendChunk
            | Phase::SendFinal
            | Phase::Background => {
                // Like an exception escaping Starlette's task group: the app is
                // unwound (its cleanups may still await), then the error goes on.
                self.failure = Some(err);
                Channel::mark_sent(self.channel().bind(py))?;
                self.sub = Some(Sub::App(DriveCore::new(Goal::Abort)));
                self.phase = Phase::Abort;
                Ok(true)
            }
            Phase::Abort => match self.failure.take() {
                // An `Exception` from the app as it unwinds is dropped and the
                // failure that started the unwinding goes on, as in Starlette
                // (its task group keeps the app's `Exception` aside and the
                // response's error wins).
                Some(first) if err.is_instance_of::<PyException>(py) => Err(first),
                Some(first) => {
                    err.set_context(py, Some(first));
                    Err(err)
                }
                None => Err(err),
            },
            Phase::Checkpoint => {
                self.failure = Some(err);
                self.finish(py)
            }
            Phase::Finish | Phase::Begin | Phase::Done => Err(err),
        }
    }

    /// The app's body is over: send the empty final chunk (none after a pathsend).
    fn body_ended(&mut self, py: Python<'_>) -> PyResult<bool> {
        if self.pathsend {
            return self.background(py);
        }
        self.phase = Phase::SendFinal;
        self.await_send(py, Message::Body { chunk: None, more: false })
    }

    fn channel(&self) -> &Py<Channel> {
        self.channel.as_ref().expect("channel exists after begin")
    }

    /// `dispatch` returned `response`: send it.
    fn respond(&mut self, py: Python<'_>, response: Bound<'_, PyAny>) -> PyResult<bool> {
        if !response.is_callable() {
            let func = self.dispatcher.get().dispatch_func.bind(py);
            let name = func
                .getattr(intern!(py, "__qualname__"))
                .and_then(|n| n.extract::<String>())
                .unwrap_or_else(|_| func.repr().map(|r| r.to_string()).unwrap_or_default());
            return Err(PyTypeError::new_err(format!(
                "{name}() returned {}, expected a Response",
                response.get_type().name()?
            )));
        }
        self.add_server_timing(py, &response)?;
        let hooks = self.dispatcher.get().hooks.get();
        // `call_next`'s own response keeps its attributes in its __dict__:
        // read there, with no lookup through the class first.
        let attrs = match response.get_type().is(hooks.response_cls.bind(py)) {
            true => Some(instance_dict(&response)?),
            false => None,
        };
        let relayable = match &attrs {
            Some(attrs) => own_attr(&response, Some(attrs), intern!(py, "body_iterator"))
                .map(|it| it.is(self.channel()))
                .unwrap_or(false),
            None => false,
        };
        if !relayable {
            let receive = self.downstream_receive.as_ref().expect("set in begin").clone_ref(py);
            let coro = response.call1((&self.scope, receive, &self.send))?;
            self.sub = Some(Sub::Py(awaitable_iter(&coro)?));
            self.phase = Phase::Respond;
            self.response = Some(response.unbind());
            return Ok(true);
        }
        let attrs = attrs.as_ref();
        let info = own_attr(&response, attrs, intern!(py, "info"))?;
        if !info.is_none() {
            let debug = PyDict::new(py);
            debug.set_item(intern!(py, "type"), intern!(py, "http.response.debug"))?;
            debug.set_item(intern!(py, "info"), info)?;
            self.head.push(Message::Asgi(debug.into_any().unbind()));
        }
        self.head.push(Message::Start {
            status: own_attr(&response, attrs, intern!(py, "status_code"))?.unbind(),
            headers: own_attr(&response, attrs, intern!(py, "raw_headers"))?.unbind(),
        });
        self.response = Some(response.unbind());
        let first = self.head.remove(0);
        self.phase = Phase::SendHead;
        self.await_send(py, first)
    }

    fn next_chunk(&mut self, py: Python<'_>) -> PyResult<bool> {
        self.sub = Some(Sub::App(DriveCore::new(Goal::Body)));
        self.phase = Phase::NextChunk;
        // Chunks from another task may now go to the server directly
        // (`rust/forward.rs`), until this sub-step ends.
        self.channel().get().inner_mut(py).awaiting_chunk = true;
        Ok(true)
    }

    /// Sends `message` through the layer's own `send`: as fields when that is a
    /// ferroware channel, as an ASGI dict otherwise.
    fn await_send(&mut self, py: Python<'_>, message: Message) -> PyResult<bool> {
        if let Some(waiter) = self.forward_in_flight(py)? {
            self.sub = Some(Sub::AfterForward { waiter, message: Some(message), yielded: false });
            return Ok(true);
        }
        let send = self.send.bind(py);
        self.sub = Some(match send.cast::<Channel>() {
            Ok(channel) => match Channel::send_message(channel, message)? {
                Sent::Paused(pause) => Sub::Pause { pause, yielded: false },
                Sent::Other(awaitable) => Sub::Py(awaitable_iter(awaitable.bind(py))?),
            },
            Err(_) => Sub::Py(awaitable_iter(&send.call1((message.into_asgi(py)?,))?)?),
        });
        Ok(true)
    }

    /// When a chunk from another task is on its way through our `send`, a
    /// future that is done once it got through (else None).
    fn forward_in_flight(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let channel = self.channel().get();
        if !channel.inner(py).forwarding {
            return Ok(None);
        }
        // Only asyncio forwards (see `rust/forward.rs`), and seldom: asked here.
        let event_loop = py.import(intern!(py, "asyncio"))?.call_method0(intern!(py, "get_running_loop"))?;
        let waiter = event_loop.call_method0(intern!(py, "create_future"))?;
        waiter.setattr(intern!(py, "_asyncio_future_blocking"), true)?;
        channel.inner_mut(py).forward_waiter = Some(waiter.clone().unbind());
        Ok(Some(waiter.unbind()))
    }

    fn background(&mut self, py: Python<'_>) -> PyResult<bool> {
        // Only a relayed response gets here: `call_next`'s own.
        let response = self.response.as_ref().expect("set in respond").bind(py);
        let task = own_attr(response, Some(&instance_dict(response)?), intern!(py, "background"))?;
        if task.is_none() {
            return self.sent(py);
        }
        self.sub = Some(Sub::Py(awaitable_iter(&task.call0()?)?));
        self.phase = Phase::Background;
        Ok(true)
    }

    /// The middleware's response went out.
    fn sent(&mut self, py: Python<'_>) -> PyResult<bool> {
        Channel::mark_sent(self.channel().bind(py))?;
        // The outermost layer lets other ready tasks run before the app's
        // background work starts, as Starlette's call_next does. Inner layers
        // are resumed only after it, so one yield serves the whole stack.
        //
        // That yield costs a pass of the event loop per request, so it is
        // skipped when the app's suspended frames show no background work.
        let outermost = !self.send.bind(py).is_instance_of::<Channel>();
        if outermost {
            let hooks = self.dispatcher.get().hooks.get();
            let tracker = self.channel().get().inner(py).tracker.as_ref().map(|t| t.clone_ref(py));
            let event_loop = tracker.and_then(|t| t.borrow(py).event_loop(py));
            if hooks.others_ready.bind(py).call1((event_loop,))?.is_truthy()?
                && self.background_pending(py, hooks.response_calls.bind(py)) != Some(false)
            {
                self.sub = Some(Sub::Py(awaitable_iter(&hooks.checkpoint.bind(py).call0()?)?));
                self.phase = Phase::Checkpoint;
                return Ok(true);
            }
        }
        self.finish(py)
    }

    /// Whether anything below this layer, suspended after the response, has a
    /// background task to run: `Some(true)` or `Some(false)` when the
    /// suspended frames tell, `None` when they can't.
    /// A look that fails (an object not as expected on the way) is unknown too.
    fn background_pending(&self, py: Python<'_>, response_calls: &Bound<'_, PyTuple>) -> Option<bool> {
        let peek = Peek { py, response_calls, depth: std::cell::Cell::new(0) };
        peek.app_of(self.channel()).unwrap_or(None)
    }

    fn finish(&mut self, _py: Python<'_>) -> PyResult<bool> {
        self.sub = Some(Sub::App(DriveCore::new(Goal::Finish)));
        self.phase = Phase::Finish;
        Ok(true)
    }
}

/// One step of serving a pull of the body by another task (`Sub::Serve`):
/// Some(value) to yield, None once served.
#[inline(never)] // rare: kept out of `Layer::run`, the hot loop
fn serve(core: &mut DriveCore, channel: &Bound<'_, Channel>, input: Input) -> PyResult<Option<Py<PyAny>>> {
    // Its puller gave up: back to the response, the app left waiting where it
    // is (when it can be: on an asyncio future).
    let given_up = matches!(input, Input::Send(_)) && !pull::wanted(channel)?;
    if given_up && core.suspend(channel)? {
        return Ok(None);
    }
    match core.step(channel, input) {
        Outcome::Yield(value) => Ok(Some(value)),
        settled => pull::deliver(channel, settled).map(|()| None),
    }
}

/// A look down the suspended request, below a layer whose response went out,
/// for background work still to run (see `RunLayer::sent`).
///
/// It follows what each level awaits down to where the innermost app is
/// suspended: through ferroware layers (their own response, then their app)
/// and coroutines (`cr_await`). A coroutine running one of Starlette's
/// response `__call__` methods (`response_calls`) has the response as `self`,
/// and its `background` is what runs after the body. Pure-ASGI frames on the
/// way only return once their app does. A chain that ends at a raw `send`
/// with no response frame in it, or at anything but a ferroware pause (a
/// future, a foreign awaitable), leaves the answer unknown.
struct Peek<'a, 'py> {
    py: Python<'py>,
    response_calls: &'a Bound<'py, PyTuple>,
    depth: std::cell::Cell<usize>,
}

impl<'py> Peek<'_, 'py> {
    /// Deeper than any real stack: a cycle or a pathological chain gives up.
    const MAX_DEPTH: usize = 256;

    /// Whether `response` has a background task (None: it has no such
    /// attribute). A `relayed` response is `call_next`'s own, read in its `__dict__`.
    fn has_background(&self, response: &Bound<'py, PyAny>, relayed: bool) -> Option<bool> {
        let attrs = if relayed { instance_dict(response).ok() } else { None };
        own_attr(response, attrs.as_ref(), intern!(self.py, "background")).ok().map(|task| !task.is_none())
    }

    /// What is left of the app a channel steps.
    fn app_of(&self, channel: &Py<Channel>) -> PyResult<Option<bool>> {
        let app = match channel.get().try_inner(self.py) {
            Some(channel) => channel.coro.as_ref().map(|coro| coro.clone_ref(self.py)),
            None => return Ok(None),
        };
        match app {
            // The app never started, or has returned.
            None => Ok(Some(false)),
            Some(app) => self.level(app.into_bound(self.py)),
        }
    }

    fn layer(&self, layer: &Bound<'py, RunLayer>) -> PyResult<Option<bool>> {
        // What is needed, taken out first: looking at a response can run
        // Python code (a property), which must not find this layer borrowed.
        let (phase, response, channel) = match layer.get().layer.try_borrow(self.py) {
            Some(layer) => (
                layer.phase,
                layer.response.as_ref().map(|r| r.clone_ref(self.py)),
                layer.channel.as_ref().map(|c| c.clone_ref(self.py)),
            ),
            None => return Ok(None),
        };
        match phase {
            // Its own response, relayed or being sent, runs its background next.
            Phase::Respond | Phase::SendHead | Phase::NextChunk | Phase::SendChunk | Phase::SendFinal => {
                let relayed = phase != Phase::Respond;
                let response = response.map(|r| self.has_background(r.bind(self.py), relayed));
                match response {
                    Some(Some(false)) => {}
                    Some(Some(true)) => return Ok(Some(true)),
                    Some(None) | None => return Ok(None),
                }
            }
            Phase::Checkpoint | Phase::Finish => {}
            Phase::Done => return Ok(Some(false)),
            // Still in `dispatch`, in its response's background, or unwinding.
            Phase::Begin | Phase::Dispatch | Phase::Background | Phase::Abort => return Ok(None),
        }
        match &channel {
            Some(channel) => self.app_of(channel),
            None => Ok(Some(false)),
        }
    }

    /// Whether `code` is one of the response `__call__` codes. By identity: a
    /// tuple's `in` compares code objects by value, field by field, which cost
    /// more than the rest of the look.
    fn is_response_call(&self, code: &Bound<'py, PyAny>) -> bool {
        self.response_calls.iter().any(|known| known.is(code))
    }

    /// A level of the chain: a ferroware layer or a coroutine.
    fn level(&self, mut level: Bound<'py, PyAny>) -> PyResult<Option<bool>> {
        let py = self.py;
        let mut found_response = false;
        loop {
            self.depth.set(self.depth.get() + 1);
            if self.depth.get() > Self::MAX_DEPTH {
                return Ok(None);
            }
            if let Ok(layer) = level.cast::<RunLayer>() {
                return self.layer(layer);
            }
            if level.is_instance_of::<Pause>() {
                return Ok(found_response.then_some(false));
            }
            // SAFETY: a type check on a live object.
            if unsafe { ffi::PyCoro_CheckExact(level.as_ptr()) } == 0 {
                return Ok(None);
            }
            if self.is_response_call(&level.getattr(intern!(py, "cr_code"))?) {
                let locals = level.getattr(intern!(py, "cr_frame"))?.getattr(intern!(py, "f_locals"))?;
                match self.has_background(&locals.get_item(intern!(py, "self"))?, false) {
                    Some(false) => found_response = true,
                    Some(true) => return Ok(Some(true)),
                    None => return Ok(None),
                }
            }
            let awaited = level.getattr(intern!(py, "cr_await"))?;
            if awaited.is_none() {
                return Ok(None);
            }
            level = awaited;
        }
    }
}

/// Resumes the downstream app: a ferroware layer directly, anything else as
/// a coroutine.
pub fn resume_app(py: Python<'_>, app: &Bound<'_, PyAny>, input: Input) -> PyResult<coro::Step> {
    match app.cast::<RunLayer>() {
        Ok(layer) => Ok(match layer.get().step(py, input)? {
            Some(value) => coro::Step::Yield(value),
            None => coro::Step::Return(py.None()),
        }),
        Err(_) => resume(py, app, input),
    }
}

impl From<coro::Step> for Step {
    fn from(step: coro::Step) -> Self {
        match step {
            coro::Step::Yield(value) => Step::Yield(value),
            coro::Step::Return(value) => Step::Return(value),
        }
    }
}

/// The iterator to step for `await obj`: a coroutine, and our own awaitables,
/// step themselves; anything else through `__await__()`.
pub fn awaitable_iter(obj: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    let py = obj.py();
    // SAFETY: a type check on a live object.
    if unsafe { ffi::PyCoro_CheckExact(obj.as_ptr()) } != 0
        || obj.is_instance_of::<Pause>()
        || obj.is_instance_of::<RunLayer>()
    {
        return Ok(obj.clone().unbind());
    }
    match obj.getattr(intern!(py, "__await__")) {
        Ok(method) => Ok(method.call0()?.unbind()),
        Err(_) => Err(PyTypeError::new_err(format!(
            "object {} can't be used in 'await' expression",
            obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into())
        ))),
    }
}

crate::awaitable_pymethods!(RunLayer {
    /// The awaiting coroutine is closed under us: close what we await, then the app.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let (sub, channel) = {
            let mut layer = self.layer.try_borrow_mut(py)?;
            layer.phase = Phase::Done;
            (layer.sub.take(), layer.channel.as_ref().map(|c| c.clone_ref(py)))
        };
        if let Some(Sub::Py(iter) | Sub::Serve { response: iter, .. } | Sub::ResponseWaits { response: iter, .. }) = sub {
            iter.bind(py).call_method0(intern!(py, "close"))?;
        }
        if let Some(channel) = channel {
            DriveCore::new(Goal::Abort).close(channel.bind(py))?;
        }
        Ok(())
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let phase = self.layer.try_borrow(py).map(|layer| format!("{:?}", layer.phase));
        format!("<ferroware layer call phase={}>", phase.as_deref().unwrap_or("(running)"))
    }
});

pub fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<RunLayer>()?;
    Ok(())
}
