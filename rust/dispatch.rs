//! The per-layer objects: `Hooks`, `Dispatcher` and the per-request `Channel`.
//!
//! A `Channel` is one request through one `BaseHTTPMiddleware` layer. It is the
//! `send` the downstream app gets. The app runs in the caller's own task,
//! stepped by a driver (see `drive.rs`); when it calls `send` from inside that
//! stepping, `send` stores the message and returns the channel's `Pause`, which
//! yields itself once. The driver recognises it, takes the message, and
//! either resumes the app or leaves it suspended inside `send` until the
//! middleware wants more: that is the whole backpressure mechanism, and why the
//! app's background work only runs after the response went out.
//!
//! A `send` made from another task (the app's own task group) can't pause our
//! stepping, so it goes to the Python hook, which hands the message over
//! through the app's pending `receive` (see `ferroware._handoff`).

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple, PyType};
use pyo3::{ffi, intern, IntoPyObjectExt};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::context::AppContext;
use crate::coro::{exception_from_throw_args, Ready};
use crate::drive::{Drive, Goal};
use crate::gil_cell::{GilCell, Ref, RefMut};
use crate::layer::RunLayer;
use crate::message::Message;
use crate::objects::Shape;
use crate::timing::{Timing, Timings};

/// Where the request stands, from the middleware's side.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum State {
    /// `call_next` has not been awaited.
    Idle,
    /// `call_next` is running the downstream app up to `http.response.start`.
    Running,
    /// The start message was taken; body chunks are taken one at a time.
    Started,
    /// The final body (or pathsend) was taken, or the body iteration was
    /// closed; the app waits inside its last send.
    BodyDone,
    /// The middleware's response went out (or was dropped): sends are discarded.
    Draining,
    /// The downstream coroutine is gone.
    Done,
}

/// `(get_running_loop, current_task, states, move)`, see `ferroware._scopes.asyncio_support`.
pub type AsyncioScopes = (Py<PyAny>, Py<PyAny>, Py<PyDict>, Py<PyAny>);

/// What the layer sets on each request it builds (`RunLayer::begin`).
pub const REQUEST_FIELDS: [&str; 4] = ["scope", "_receive", "_send", "channel"];
/// What each response `call_next` returns holds as its own (`drive::make_response`).
pub const RESPONSE_FIELDS: [&str; 6] =
    ["status_code", "raw_headers", "body_iterator", "info", "background", "_headers"];

/// The Python pieces the compiled layer calls, fixed once at import.
#[pyclass(module = "ferroware._core", frozen)]
pub struct Hooks {
    /// The request `dispatch` sees; it has a `channel` attribute and a
    /// `downstream_receive()` method.
    pub request_cls: Py<PyType>,
    /// The `__dict__` shape of a new request: what `request_cls(scope,
    /// receive, send).__dict__` holds, with `scope`, `_receive`, `_send` and
    /// `channel` to be filled in (see `objects`); None to call the class instead.
    pub request_shape: Option<Shape>,
    /// The response class `call_next` returns (built without running `__init__`).
    pub response_cls: Py<PyType>,
    /// The `__dict__` shape of a new response: its per-response attributes,
    /// and `info`, `background` and `_headers` (the cached `headers`) as None,
    /// found in the instance, not the class.
    pub response_shape: Shape,
    /// `foreign_send(channel, message) -> Awaitable[None]`, for a send the
    /// channel can't take directly (another task's, or one after the response)
    /// and doesn't forward (`forward::foreign_send`).
    pub foreign_send: Py<PyAny>,
    /// `others_ready(loop) -> bool`: whether another task is ready to run
    /// (`loop`: the running asyncio loop if known, else None).
    pub others_ready: Py<PyAny>,
    /// `checkpoint() -> Awaitable[None]`: a shielded yield to the event loop.
    pub checkpoint: Py<PyAny>,
    /// `ProxyLink(future)`: hands out asyncio futures (`.proxy()`) done when
    /// `future` is, or earlier when a send from another task wakes one (see `drive.rs`).
    pub proxy_link: Py<PyAny>,
    /// `Handoff.of(channel)`: the channel's hand-off, made on first use.
    pub handoff_of: Py<PyAny>,
    /// `(get_running_loop, current_task, states, move)` or None, see `ferroware._scopes`.
    pub asyncio_scopes: Option<AsyncioScopes>,
    /// `trio_scopes() -> (task, holder, attribute, move) | None`.
    pub trio_scopes: Py<PyAny>,
    /// The code objects of the `__call__` methods of Starlette's responses: a
    /// suspended app frame running one of them tells whether a background
    /// task follows the body (see `RunLayer::sent`).
    pub response_calls: Py<PyTuple>,
    /// `AppTask(app, scope, receive, context)`: the app in a task of its own,
    /// for a request on the task path (`ferroware._app_task`).
    pub app_task: Py<PyAny>,
    /// Every request takes the task path (for tests: `FERROWARE_FORCE_TASK_PATH`).
    pub force_task_path: bool,
}

#[pymethods]
impl Hooks {
    #[new]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (*, request_cls, request_template, response_cls, foreign_send, others_ready, checkpoint, proxy_link, handoff_of, asyncio_scopes, trio_scopes, response_calls, app_task, force_task_path=false))]
    fn new(
        py: Python<'_>,
        request_cls: Py<PyType>,
        request_template: Option<Py<PyDict>>,
        response_cls: Py<PyType>,
        foreign_send: Py<PyAny>,
        others_ready: Py<PyAny>,
        checkpoint: Py<PyAny>,
        proxy_link: Py<PyAny>,
        handoff_of: Py<PyAny>,
        asyncio_scopes: Option<AsyncioScopes>,
        trio_scopes: Py<PyAny>,
        response_calls: Py<PyTuple>,
        app_task: Py<PyAny>,
        force_task_path: bool,
    ) -> PyResult<Self> {
        let request_shape = match request_template {
            Some(template) => Some(Shape::new(request_cls.bind(py), Some(template.bind(py)), &REQUEST_FIELDS)?),
            None => None,
        };
        let response_shape = Shape::new(response_cls.bind(py), None, &RESPONSE_FIELDS)?;
        Ok(Hooks {
            request_cls,
            request_shape,
            response_cls,
            response_shape,
            foreign_send,
            others_ready,
            checkpoint,
            proxy_link,
            handoff_of,
            asyncio_scopes,
            trio_scopes,
            response_calls,
            app_task,
            force_task_path,
        })
    }

    /// Whether every request takes the task path.
    #[getter]
    fn force_task_path(&self) -> bool {
        self.force_task_path
    }

    /// Whether requests and responses are built directly (`objects::Shape`),
    /// not the slow, ordinary way their check fell back to.
    #[getter]
    fn builds_directly(&self) -> bool {
        self.request_shape.as_ref().is_some_and(Shape::is_direct) && self.response_shape.is_direct()
    }
}

/// One per middleware instance: the downstream app, the dispatch function and
/// the hooks. Calling it runs one HTTP request through the layer.
///
/// `inner` is set when the downstream app is itself a ferroware layer: its
/// request then starts straight from this one's channel, so a run of
/// consecutive layers is stepped by compiled code with no Python frame between
/// them but the users' `dispatch` functions.
#[pyclass(module = "ferroware._core", frozen)]
pub struct Dispatcher {
    pub app: Py<PyAny>,
    pub dispatch_func: Py<PyAny>,
    pub hooks: Py<Hooks>,
    pub inner: Option<Py<Dispatcher>>,
    /// Where this layer's own time is recorded, when timings are on.
    pub timing: Option<Timing>,
}

#[pymethods]
impl Dispatcher {
    #[new]
    #[pyo3(signature = (app, dispatch_func, hooks, inner=None, timing=None))]
    fn new(
        app: Py<PyAny>,
        dispatch_func: Py<PyAny>,
        hooks: Py<Hooks>,
        inner: Option<Py<Dispatcher>>,
        timing: Option<(Py<Timings>, usize)>,
    ) -> Self {
        let timing = timing.map(|(timings, layer)| Timing { timings, layer });
        Dispatcher { app, dispatch_func, hooks, inner, timing }
    }

    #[getter]
    fn app(&self, py: Python<'_>) -> Py<PyAny> {
        self.app.clone_ref(py)
    }

    #[getter]
    fn dispatch_func(&self, py: Python<'_>) -> Py<PyAny> {
        self.dispatch_func.clone_ref(py)
    }

    #[getter]
    fn inner(&self, py: Python<'_>) -> Option<Py<Dispatcher>> {
        self.inner.as_ref().map(|d| d.clone_ref(py))
    }

    /// `await dispatcher(scope, receive, send)`: one HTTP request through the layer.
    fn __call__(slf: &Bound<'_, Self>, scope: Py<PyAny>, receive: Py<PyAny>, send: Py<PyAny>) -> RunLayer {
        RunLayer::new(slf, scope, receive, send)
    }
}

/// Frozen, its mutable part in a `GilCell`: a mutable pyclass would pay
/// PyO3's atomic borrow flag (locked instructions) on each of the dozens of
/// borrows a request makes per layer.
#[pyclass(module = "ferroware._core", frozen)]
pub struct Channel {
    pub(crate) dispatcher: Py<Dispatcher>,
    pub(crate) scope: Py<PyAny>,
    /// The middleware's own (outer) `send`.
    pub(crate) send: Py<PyAny>,
    /// Timings on: how long the downstream app has been stepped is counted.
    pub(crate) timed: bool,
    inner: GilCell<ChannelInner>,
}

/// The mutable part of a `Channel`.
pub struct ChannelInner {
    /// The `receive` the downstream app gets.
    pub(crate) receive: Py<PyAny>,
    pub(crate) coro: Option<Py<PyAny>>,
    /// True while a driver is inside `coro.send/throw`: a `send` made now comes
    /// from the coroutine being stepped, in our task.
    pub(crate) stepping: bool,
    pub(crate) outbox: Option<Message>,
    pub(crate) state: State,
    pub(crate) info: Option<Py<PyAny>>,
    /// An app error raised after the response started, re-raised by `finish`.
    pub(crate) error: Option<PyErr>,
    /// Reused by every direct send: one allocation per request, not per message.
    pub(crate) pause: Option<Py<Pause>>,
    /// The Python meeting point for sends from other tasks, once there is one.
    handoff: Option<Py<PyAny>>,
    /// Timings on: how long the downstream app has been stepped, in total.
    pub(crate) app_nanos: u64,
    /// The asyncio future the app waits on, while our task waits on its proxy.
    pub(crate) waiting: Option<Waiting>,
    /// How to read and move the task's cancel scope (shared by the request's
    /// layers), and whether this layer moves the task between scopes.
    pub(crate) tracker: Option<Py<ScopeTracker>>,
    pub(crate) tracking: bool,
    /// The app's own cancel scope it is suspended in, while dispatch runs.
    pub(crate) app_scope: Option<Py<PyAny>>,
    /// The layer relays the response and waits for the app's next chunk.
    pub(crate) awaiting_chunk: bool,
    /// A chunk another task sent is on its way from that task through this
    /// layer's `send` (`forward`): a send of the layer's own waits on
    /// `forward_waiter` (made then) until it is through, so two sends never
    /// overlap. Set on every channel of the run the chunk goes past.
    pub(crate) forwarding: bool,
    pub(crate) forward_waiter: Option<Py<PyAny>>,
    /// Such a send failed: the layer must not end the body as if it had gone
    /// out (the server would close a body missing a chunk), but fail as when
    /// its own send fails.
    pub(crate) forward_error: Option<PyErr>,
    /// The app was told the client disconnected (`receive` gave it
    /// `http.disconnect`): nobody reads the rest of the body.
    pub(crate) client_gone: bool,
    /// The context the app runs in, from when `call_next` started it.
    pub(crate) app_context: Option<AppContext>,
    /// True while the layer steps the response `dispatch` returned, in our
    /// task: a `receive` it makes then may serve pulls of the body from other
    /// tasks (`rust/pull.rs`).
    pub(crate) responding: bool,
    /// That response was stepped before the body was over: a pull of the
    /// body may come from another task, and goes through the hand-off.
    pub(crate) foreign_pulls: bool,
    /// True while the layer steps `dispatch`: `call_next` first awaited now is
    /// awaited in the layer's own task.
    pub(crate) dispatching: bool,
    /// The request is on the task path (`ferroware._app_task`): `coro` is the
    /// relay of this `AppTask`, which runs the app in a task of its own.
    pub(crate) app_task: Option<Py<PyAny>>,
    /// On trio, the task's cancel scope when the layer began: where `dispatch`
    /// started.
    pub(crate) dispatch_scope: Option<Py<PyAny>>,
    /// The tracker's task is trio's.
    pub(crate) on_trio: bool,
    /// The loop has a task factory, which may start tasks eagerly: which
    /// task runs `call_next` is asked (`ScopeTracker::in_other_task`).
    pub(crate) eager_tasks: bool,
}

/// The app is suspended on `future` (asyncio); our task waits on `proxy`, which
/// a send from another task can complete early to wake us. `link` (a
/// `ProxyLink`, made at the first proxy) hands out a proxy per wait of ours and
/// settles the current one when `future` is done, with one callback on it.
pub struct Waiting {
    pub future: Py<PyAny>,
    pub proxy: Option<Py<PyAny>>,
    pub link: Option<Py<PyAny>>,
}

impl Waiting {
    /// The app started waiting on `future`.
    pub fn new(future: Py<PyAny>) -> Self {
        Waiting { future, proxy: None, link: None }
    }

    /// The same wait, without a proxy (ours was used up).
    pub fn again(&self, py: Python<'_>) -> Self {
        Waiting { future: self.future.clone_ref(py), proxy: None, link: self.link.as_ref().map(|l| l.clone_ref(py)) }
    }

    /// The same wait with a new proxy of its future to wait on (from its link,
    /// made now if this is the first), and that proxy.
    pub fn proxied(&self, py: Python<'_>, hooks: &Hooks) -> PyResult<(Self, Py<PyAny>)> {
        let link = match &self.link {
            Some(link) => link.clone_ref(py),
            None => hooks.proxy_link.call1(py, (&self.future,))?,
        };
        let proxy = link.call_method0(py, intern!(py, "proxy"))?;
        let waiting = Waiting { future: self.future.clone_ref(py), proxy: Some(proxy.clone_ref(py)), link: Some(link) };
        Ok((waiting, proxy))
    }
}

/// How to read and move one task's cancel scope (see `ferroware._scopes`).
/// Looked up once per request by the outermost layer and shared (one object)
/// by the layers inside it, which run in the same task.
#[pyclass(module = "ferroware._core")]
pub struct ScopeTracker {
    task: Py<PyAny>,
    /// What holds the innermost scope (anyio's task record, or the trio task);
    /// on asyncio found through `key` in `states` once anyio has made it.
    holder: Option<Py<PyAny>>,
    key: Option<(Py<PyDict>, Py<PyAny>)>,
    attribute: Py<PyString>,
    mover: Py<PyAny>,
    /// The running asyncio loop (None on trio), kept so nothing later in the
    /// request has to ask for it again: on CPython 3.11 each ask is a syscall.
    event_loop: Option<Py<PyAny>>,
    /// `asyncio.current_task`, kept when the loop has a task factory: one
    /// may run a new task's first step at once, inside the step that created
    /// it (`asyncio.eager_task_factory`), so a `call_next` given to
    /// `create_task` would first run while the layer steps `dispatch`, in
    /// that other task. Then which task runs `call_next` is asked.
    current_task: Option<Py<PyAny>>,
}

impl ScopeTracker {
    /// For the current task: asyncio looked up here directly, trio through its hook.
    pub fn lookup(py: Python<'_>, hooks: &Hooks) -> PyResult<Option<Py<ScopeTracker>>> {
        if let Some((get_running_loop, current_task, states, mover)) = &hooks.asyncio_scopes {
            let event_loop = get_running_loop.call0(py)?;
            if !event_loop.is_none(py) {
                // Given the loop, current_task doesn't look it up again.
                let task = current_task.call1(py, (&event_loop,))?;
                if task.is_none(py) {
                    return Ok(None);
                }
                // SAFETY: a live object; PyWeakref_NewRef returns a new reference or NULL.
                let key = unsafe {
                    Bound::from_owned_ptr_or_err(py, ffi::PyWeakref_NewRef(task.as_ptr(), std::ptr::null_mut()))?
                };
                let factory = event_loop.call_method0(py, intern!(py, "get_task_factory"))?;
                let tracker = ScopeTracker {
                    task,
                    holder: None,
                    key: Some((states.clone_ref(py), key.unbind())),
                    attribute: intern!(py, "cancel_scope").clone().unbind(),
                    mover: mover.clone_ref(py),
                    event_loop: Some(event_loop),
                    current_task: (!factory.is_none(py)).then(|| current_task.clone_ref(py)),
                };
                return Ok(Some(Py::new(py, tracker)?));
            }
        }
        let found = hooks.trio_scopes.call0(py)?;
        if found.is_none(py) {
            return Ok(None);
        }
        let (task, holder, attribute, mover): (Py<PyAny>, Py<PyAny>, Py<PyString>, Py<PyAny>) = found.extract(py)?;
        Ok(Some(Py::new(
            py,
            ScopeTracker {
                task,
                holder: Some(holder),
                key: None,
                attribute,
                mover,
                event_loop: None,
                current_task: None,
            },
        )?))
    }

    /// Whether the running task is another than the request's. Asked only
    /// where a task factory may start tasks eagerly (see `current_task`);
    /// elsewhere `call_next` run while the layer steps `dispatch` is in the
    /// request's task.
    pub fn in_other_task(&self, py: Python<'_>) -> PyResult<bool> {
        let (Some(current_task), Some(event_loop)) = (&self.current_task, &self.event_loop) else { return Ok(false) };
        Ok(!current_task.call1(py, (event_loop,))?.is(&self.task))
    }

    /// Whether the loop has a task factory (see `current_task`).
    pub fn eager_tasks(&self) -> bool {
        self.current_task.is_some()
    }

    /// Whether the task is trio's (asyncio's trackers know their loop).
    pub fn on_trio(&self) -> bool {
        self.event_loop.is_none()
    }

    /// The asyncio loop the request runs on, if it was looked up.
    pub fn event_loop<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.event_loop.as_ref().map(|l| l.bind(py).clone())
    }

    /// The task's innermost cancel scope now (None when it has none).
    pub fn current<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        if self.holder.is_none() {
            if let Some((states, key)) = &self.key {
                let states = states.bind(py);
                if states.is_empty() {
                    // No task has an anyio record: no scope anywhere (cheap, common).
                    return Ok(py.None().into_bound(py));
                }
                self.holder = states.get_item(key.bind(py))?.map(Bound::unbind);
            }
        }
        match &self.holder {
            Some(holder) => holder.bind(py).getattr(self.attribute.bind(py)),
            None => Ok(py.None().into_bound(py)),
        }
    }

    pub fn moves(&self, py: Python<'_>, from: &Bound<'_, PyAny>, to: &Bound<'_, PyAny>) -> PyResult<()> {
        let holder = self.holder.as_ref().map_or_else(|| py.None(), |h| h.clone_ref(py));
        self.mover.call1(py, (&self.task, holder, from, to))?;
        Ok(())
    }
}

impl Channel {
    pub fn new(dispatcher: &Bound<'_, Dispatcher>, scope: Py<PyAny>, receive: Py<PyAny>, send: Py<PyAny>) -> Self {
        Channel {
            dispatcher: dispatcher.clone().unbind(),
            scope,
            send,
            timed: dispatcher.get().timing.is_some(),
            inner: GilCell::new(ChannelInner {
                receive,
                coro: None,
                stepping: false,
                outbox: None,
                state: State::Idle,
                info: None,
                error: None,
                pause: None,
                handoff: None,
                app_nanos: 0,
                waiting: None,
                tracker: None,
                tracking: false,
                app_scope: None,
                awaiting_chunk: false,
                forwarding: false,
                forward_waiter: None,
                forward_error: None,
                client_gone: false,
                app_context: None,
                responding: false,
                foreign_pulls: false,
                dispatching: false,
                app_task: None,
                dispatch_scope: None,
                on_trio: false,
                eager_tasks: false,
            }),
        }
    }

    /// The mutable part, borrowed. Never held across a call into Python code
    /// that could reach this channel (see `gil_cell`).
    #[track_caller]
    pub fn inner<'a>(&'a self, py: Python<'_>) -> Ref<'a, ChannelInner> {
        self.inner.borrow(py)
    }

    #[track_caller]
    pub fn inner_mut<'a>(&'a self, py: Python<'_>) -> RefMut<'a, ChannelInner> {
        self.inner.borrow_mut(py)
    }

    /// A shared borrow, or None if the channel is being changed right now.
    pub fn try_inner<'a>(&'a self, py: Python<'_>) -> Option<Ref<'a, ChannelInner>> {
        self.inner.try_borrow(py)
    }
}

impl ChannelInner {
    /// Drops what ties the channel to the request once the layer is done: the
    /// app's `receive` is a method of the request, which points back here.
    /// Without this, every request would leave a cycle for the garbage collector.
    /// What it held is returned, to be dropped once the channel is no longer
    /// borrowed (dropping an object can run Python code).
    #[must_use]
    pub fn release(&mut self, py: Python<'_>) -> impl Sized {
        (
            std::mem::replace(&mut self.receive, py.None()),
            self.outbox.take(),
            self.handoff.take(),
            self.waiting.take(),
            self.tracker.take(),
            self.app_scope.take(),
            self.forward_waiter.take(),
            self.forward_error.take(),
            self.app_task.take(),
        )
    }

    pub fn handoff_ref(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.handoff.as_ref().map(|h| h.clone_ref(py))
    }

    pub fn is_response_sent(&self) -> bool {
        matches!(self.state, State::Draining | State::Done)
    }
}

impl Channel {
    /// The middleware's response went out (or failed): the app's later sends
    /// are discarded, its `receive` reports a disconnect, and a task parked on
    /// a send is released.
    pub fn mark_sent(slf: &Bound<'_, Self>) -> PyResult<()> {
        let handoff = {
            let mut this = slf.get().inner_mut(slf.py());
            if this.state != State::Done {
                this.state = State::Draining;
            }
            this.handoff.as_ref().map(|h| h.clone_ref(slf.py()))
        };
        if let Some(handoff) = handoff {
            handoff.bind(slf.py()).call_method0(intern!(slf.py(), "close"))?;
        }
        Ok(())
    }

    /// Calls `method` of the channel's hand-off with `args`: what it returned,
    /// or None if the channel has no hand-off (then nothing is parked on it).
    pub fn call_handoff<'py>(
        slf: &Bound<'py, Self>,
        method: &Bound<'py, PyString>,
        args: impl pyo3::call::PyCallArgs<'py>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let py = slf.py();
        let Some(handoff) = slf.get().inner(py).handoff_ref(py) else { return Ok(None) };
        handoff.into_bound(py).call_method1(method, args).map(Some)
    }

    /// `send(message)`: the channel's pause when the app is being stepped here,
    /// else the Python hook's awaitable.
    pub fn send_message(slf: &Bound<'_, Self>, message: Message) -> PyResult<Sent> {
        let py = slf.py();
        let channel = slf.get();
        let mut this = channel.inner_mut(py);
        if this.stepping && !this.is_response_sent() {
            this.outbox = Some(message);
            let pause = match &this.pause {
                Some(pause) => {
                    pause.get().rearm();
                    pause.clone_ref(py)
                }
                None => {
                    let pause = Py::new(py, Pause::default())?;
                    this.pause = Some(pause.clone_ref(py));
                    pause
                }
            };
            return Ok(Sent::Paused(pause));
        }
        // From another task, or after the response went out (then the Python
        // side discards it, with a checkpoint so a sending loop stays cancellable).
        drop(this);
        Ok(Sent::Other(crate::forward::foreign_send(slf, message)?))
    }

    /// Calls `each` on every channel of the run of ferroware layers out from
    /// this one, this one first; returns the `send` beyond the run.
    pub fn run_outwards<'py>(slf: &Bound<'py, Self>, mut each: impl FnMut(&Channel)) -> Bound<'py, PyAny> {
        let mut channel = slf.clone();
        loop {
            each(channel.get());
            let send = channel.get().send.bind(slf.py()).clone();
            match send.cast::<Channel>() {
                Ok(upper) => channel = upper.clone(),
                Err(_) => return send,
            }
        }
    }

    /// Starts the downstream app: `app(scope, receive, channel)`, or straight
    /// into the inner layer when the app is one; on the task path, in a task
    /// of its own, relayed (`ferroware._app_task`).
    pub fn start_app(slf: &Bound<'_, Self>, task_path: bool) -> PyResult<()> {
        let py = slf.py();
        let channel = slf.get();
        let receive = channel.inner(py).receive.clone_ref(py);
        let scope = channel.scope.clone_ref(py);
        let dispatcher = channel.dispatcher.get();
        let app_context = AppContext::copy_current(py)?;
        let (coro, app_task) = if task_path {
            let args = (&dispatcher.app, scope, receive, app_context.context());
            let app_task = dispatcher.hooks.get().app_task.bind(py).call1(args)?;
            (app_task.call_method1(intern!(py, "relay"), (slf,))?.unbind(), Some(app_task.unbind()))
        } else {
            let coro = match &dispatcher.inner {
                Some(inner) if is_http(scope.bind(py))? => {
                    RunLayer::new(inner.bind(py), scope, receive, slf.clone().into_any().unbind()).into_py_any(py)?
                }
                _ => dispatcher.app.bind(py).call1((scope, receive, slf))?.unbind(),
            };
            (coro, None)
        };
        let mut this = channel.inner_mut(py);
        this.coro = Some(coro);
        this.app_task = app_task;
        this.app_context = Some(app_context);
        Ok(())
    }

    /// On the task path, after the response went out (`finish`) or failed:
    /// the relay is closed, and the app task's `finish()` or `abort()` is
    /// stepped in its place.
    #[inline(never)] // the task path only: kept out of the stepping code
    pub fn end_app_task(
        slf: &Bound<'_, Self>,
        app_task: &Bound<'_, PyAny>,
        method: &Bound<'_, PyString>,
    ) -> PyResult<()> {
        let py = slf.py();
        let (relay, waiting) = {
            let mut this = slf.get().inner_mut(py);
            this.state = State::Draining;
            (this.coro.take(), this.waiting.take())
        };
        // A drive of another task still waiting on the relay is woken: it
        // finds the response gone (`DriveCore::run`).
        if let Some(proxy) = waiting.as_ref().and_then(|w| w.proxy.as_ref()) {
            wake_future(proxy.bind(py))?;
        }
        if let Some(relay) = relay {
            relay.bind(py).call_method0(intern!(py, "close"))?;
        }
        let coro = app_task.call_method0(method)?;
        slf.get().inner_mut(py).coro = Some(coro.unbind());
        Ok(())
    }
}

/// Completes an asyncio future our task waits on (with None), unless it is
/// done already (settled, or cancelled with its waiter).
pub(crate) fn wake_future(future: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = future.py();
    if !future.call_method0(intern!(py, "done"))?.is_truthy()? {
        future.call_method1(intern!(py, "set_result"), (py.None(),))?;
    }
    Ok(())
}

fn is_http(scope: &Bound<'_, PyAny>) -> PyResult<bool> {
    let py = scope.py();
    scope.get_item(intern!(py, "type"))?.eq(intern!(py, "http"))
}

/// What `send` gave back.
pub enum Sent {
    /// The channel's pause: the driver above takes the message.
    Paused(Py<Pause>),
    /// Any other awaitable (the cross-task hand-off, a discarded send).
    Other(Py<PyAny>),
}

#[pymethods]
impl Channel {
    /// `call_next(request)`: the downstream app's response, returned as soon as
    /// it sends `http.response.start`. The request argument is accepted for API
    /// compatibility; like Starlette, the app runs on the middleware's scope.
    #[pyo3(signature = (request=None))]
    fn call_next(slf: &Bound<'_, Self>, request: Option<&Bound<'_, PyAny>>) -> PyResult<Drive> {
        let _ = request;
        let mut this = slf.get().inner_mut(slf.py());
        if this.state != State::Idle {
            return Err(PyRuntimeError::new_err(
                "call_next() was already called for this request; a middleware can call it once",
            ));
        }
        this.state = State::Running;
        drop(this);
        Ok(Drive::new(slf, Goal::Start))
    }

    /// The channel is the `send` the downstream app is given.
    fn __call__(slf: &Bound<'_, Self>, message: Py<PyAny>) -> PyResult<Py<PyAny>> {
        Ok(match Channel::send_message(slf, Message::Asgi(message))? {
            Sent::Paused(pause) => pause.into_any(),
            Sent::Other(awaitable) => awaitable,
        })
    }

    /// Async iteration over the response body, for `response.body_iterator`.
    fn __aiter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// The next chunk, stepped here; once the layer steps a response of its
    /// own, the hand-off says what to await instead, as the caller may be
    /// another task (`rust/pull.rs`).
    fn __anext__(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let handoff = match slf.get().inner(py) {
            this if this.state == State::Started && this.foreign_pulls => this.handoff_ref(py),
            // In our task, or the body is over (the drive ends at once, stepping nothing).
            _ => None,
        };
        let drive = Drive::new(slf, Goal::Body).into_py_any(py)?;
        match handoff {
            Some(handoff) => Ok(handoff.bind(py).call_method1(intern!(py, "pull"), (slf, drive))?.unbind()),
            None => Ok(drive),
        }
    }

    /// Stops the body iteration early, as `aclose()` on Starlette's body
    /// generator does. The app is not touched: it stays in its `send` until the
    /// middleware's response went out, then runs on with its sends discarded.
    fn aclose(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let mut this = self.inner_mut(py);
        if this.state == State::Started {
            this.state = State::BodyDone;
        }
        drop(this);
        Ready::none(py)
    }

    /// True once the middleware's response went out or the app can no longer send.
    #[getter]
    fn response_sent(&self, py: Python<'_>) -> bool {
        self.inner(py).is_response_sent()
    }

    /// The request's `receive` told the app that the client disconnected.
    fn client_gone(&self, py: Python<'_>) {
        self.inner_mut(py).client_gone = true;
    }

    /// True while the channel is stepping the app in the current task.
    #[getter]
    fn stepping(&self, py: Python<'_>) -> bool {
        self.inner(py).stepping
    }

    /// True while the layer is stepping its own response in the current task.
    #[getter]
    fn responding(&self, py: Python<'_>) -> bool {
        self.inner(py).responding
    }

    #[getter]
    fn handoff(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.inner(py).handoff_ref(py)
    }

    #[setter]
    fn set_handoff(&self, py: Python<'_>, handoff: Py<PyAny>) {
        self.inner_mut(py).handoff = Some(handoff);
    }

    /// Wakes our task if it waits on a proxy for the app's future; True if it did.
    fn wake(&self, py: Python<'_>) -> PyResult<bool> {
        let proxy = self.inner(py).waiting.as_ref().and_then(|w| w.proxy.as_ref()).map(|p| p.clone_ref(py));
        let Some(proxy) = proxy else { return Ok(false) };
        wake_future(proxy.bind(py))?;
        Ok(true)
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let state = self.try_inner(py).map(|this| format!("{:?}", this.state));
        format!("<ferroware Channel state={}>", state.as_deref().unwrap_or("(busy)"))
    }
}

/// Returned by a direct `send`: yields itself once, so the driver above sees
/// the message; then finishes (returns None) when the driver resumes it. It
/// holds nothing, so it makes no reference cycle with its channel.
///
/// Frozen, its one flag an atomic used with relaxed ordering (a plain load or
/// store): a mutable pyclass would pay PyO3's atomic borrow flag, a locked
/// instruction, on every step, and a pause is stepped several times per layer.
#[pyclass(module = "ferroware._core", frozen)]
#[derive(Default)]
pub struct Pause {
    yielded: AtomicBool,
}

impl Pause {
    /// Ready to yield again, for the channel's next direct send.
    pub fn rearm(&self) {
        self.yielded.store(false, Ordering::Relaxed);
    }

    fn mark_yielded(&self) {
        self.yielded.store(true, Ordering::Relaxed);
    }
}

#[pymethods]
impl Pause {
    fn __await__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(slf: PyRef<'_, Self>) -> Option<PyRef<'_, Self>> {
        if slf.yielded.load(Ordering::Relaxed) {
            return None;
        }
        slf.mark_yielded();
        Some(slf)
    }

    fn send<'py>(slf: PyRef<'py, Self>, _value: &Bound<'py, PyAny>) -> PyResult<PyRef<'py, Self>> {
        if slf.yielded.load(Ordering::Relaxed) {
            return Err(crate::coro::stop_iteration(slf.py(), slf.py().None()));
        }
        slf.mark_yielded();
        Ok(slf)
    }

    /// The driver throws protocol errors in here, so they surface at the app's
    /// own `await send(...)`.
    #[pyo3(signature = (typ, val=None, tb=None))]
    fn throw(
        &self,
        py: Python<'_>,
        typ: &Bound<'_, PyAny>,
        val: Option<&Bound<'_, PyAny>>,
        tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        self.mark_yielded();
        Err(exception_from_throw_args(py, typ, val, tb)?)
    }

    fn close(&self) {
        self.mark_yielded();
    }
}

pub fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Hooks>()?;
    m.add_class::<ScopeTracker>()?;
    m.add_class::<Dispatcher>()?;
    m.add_class::<Channel>()?;
    m.add_class::<Pause>()?;
    Ok(())
}
