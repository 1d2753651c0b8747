//! `capyknock server`: the daemon that wires capture -> verifier -> firewall, with the control
//! socket, signals, reload and the state directory.
//!
//! Start-up: load and validate the config, bind the control socket (refusing to start when
//! another daemon answers on it), load the state directory, start capture, open the firewall
//! (without dropping grants that are still running), then tell systemd we are ready.
//!
//! One task, the core, owns the verifier, the users, the ban list and the capture. It never
//! waits for a disk or a firewall: those belong to the [`worker`](super::worker) thread, which it
//! feeds through a bounded channel; config files are read on the blocking pool. Control clients
//! are served by their own tasks and reach the core through a bounded channel.
//!
//! Shutdown (SIGTERM, SIGINT): stop serving the control socket, stop capture (detaching XDP),
//! save the replay state and bans, and leave the firewall as it is, so current grants run out on
//! their own. After a kill -9 the next start finds the same state on disk and in the firewall.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::{mpsc, oneshot, watch};

use super::{
    cluster::{
        fleet::{Fleet, Pending},
        store::StoreError,
        users::{StoreUser, merge},
    },
    config::{self, ConfigError, Settings},
    control::{Command, ControlError, ControlServer, Request, Response},
    knock_sink::KnockSink,
    logging::{self, RejectionLimiter},
    metrics::Metrics,
    realtime, reload,
    replay_store::ReplayStore,
    state::{StateDir, StateError},
    status::{CaptureStatus, FirewallStatus, Status, VerifierStatus},
    worker::{Effect, OpenWith, Reopen, Worker},
};
use crate::{
    capture::{Candidate, Capture, CaptureConfig, CaptureError, CaptureMode, RateLimitConfig},
    firewall::{self, BanList, ErrorChain, Firewall, FirewallKind},
    protocol::{
        totp::step_of,
        users::{User, Users, UsersError},
        verify::{self, RejectReason, Verdict, Verifier},
    },
};

/// Effects queued for the worker before the core starts refusing (and logging) new ones.
const EFFECT_QUEUE: usize = 4096;
/// Control requests queued for the core.
const CONTROL_QUEUE: usize = 16;
/// How often the core's timer runs (time step, log summary).
const TICK: Duration = Duration::from_secs(1);
/// Longest wait at start for the fleet's bans (`[cluster]`).
const FLEET_CATCH_UP: Duration = Duration::from_secs(5);
/// Every this many ticks: firewall check and repair, pruning.
const REPAIR_TICKS: u64 = 5;

/// What `capyknock server` was asked to do: the config file and the command-line overrides.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The configuration file.
    pub config: PathBuf,
    /// `--iface`: replaces the config's interfaces when not empty.
    pub ifaces: Vec<String>,
    /// `--capture`: replaces the config's capture mode.
    pub capture: Option<CaptureMode>,
    /// `--firewall`: replaces the config's firewall backend.
    pub firewall: Option<FirewallKind>,
}

impl Options {
    /// Applies the command-line overrides to settings read from the file.
    fn apply(&self, mut settings: Settings) -> Settings {
        if !self.ifaces.is_empty() {
            settings.interfaces.clone_from(&self.ifaces);
        }
        if let Some(c) = self.capture {
            settings.capture = c;
        }
        if let Some(f) = self.firewall {
            settings.firewall.backend = f;
        }
        settings
    }
}

/// Why the daemon could not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The users' keys could not be prepared.
    #[error("cannot prepare the users' keys")]
    Users(#[source] UsersError),
    /// The control socket could not be set up.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The state directory is unusable.
    #[error("state directory")]
    State(#[from] StateError),
    /// Capture could not start, or stopped.
    #[error("capture")]
    Capture(#[from] CaptureError),
    /// The firewall could not be set up.
    #[error("firewall")]
    Firewall(#[from] firewall::Error),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
    /// The daemon could not drop its privileges (`privsep = false` runs without).
    #[cfg(target_os = "linux")]
    #[error("privilege separation")]
    Privsep(#[source] super::privsep::sandbox::SandboxError),
    /// The worker thread could not start, or died.
    #[error("the firewall/state worker thread {0}")]
    Worker(&'static str),
    /// The privileged firewall helper ended (killed, crashed): the daemon exits so that its
    /// service manager restarts it with a new one.
    #[error("the firewall helper ended ({0}); exiting so the service manager restarts the daemon")]
    HelperEnded(String),
    /// The metrics endpoint could not be set up.
    #[cfg(unix)]
    #[error(transparent)]
    Metrics(#[from] super::metrics::http::MetricsError),
    /// Fleet mode could not start (`[cluster]`).
    #[error("fleet mode ([cluster])")]
    Cluster(#[source] StoreError),
    /// A setting asks for something this operating system does not have.
    #[error("{0}")]
    Unsupported(&'static str),
    /// Windows: the state directory's access list lets others in.
    #[cfg(windows)]
    #[error("{0}")]
    Acl(String),
}

/// Runs the daemon until SIGTERM or SIGINT (Windows: Ctrl-C, Ctrl-Break, console close).
/// Must run inside a multi-threaded tokio runtime.
pub async fn run(opts: Options) -> Result<(), DaemonError> {
    run_until(opts, std::future::pending(), || {}).await
}

/// [`run`], also stopping cleanly when `stop` completes (the Windows service's stop request),
/// and calling `ready` once start-up is complete: config loaded, state, capture and firewall
/// set up, the same point as systemd's READY=1 (the Windows service reports `RUNNING` then).
/// A start that fails never calls it.
pub async fn run_until(
    opts: Options,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(),
) -> Result<(), DaemonError> {
    let mut signals = Signals::install(Box::pin(stop))?;
    let Started {
        mut core,
        control_task,
        metrics_task,
        control_rx,
        reload_rx,
        worker,
    } = start(opts)?;
    ready();
    let result = core.run(&mut signals, control_rx, reload_rx).await;
    if let Some(task) = metrics_task {
        task.abort();
        let _ = task.await;
    }
    shutdown(core, control_task, worker).await;
    result
}

/// What a signal (or, on Windows, a console event or a service stop) asks of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SignalEvent {
    /// Stop cleanly; the text names what asked, for the log.
    Stop(&'static str),
    /// Re-read the configuration (SIGHUP; Windows has no such signal: `capyknock reload`).
    #[cfg(unix)]
    Reload,
}

/// The signals the daemon handles, plus an outside stop request.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
    #[cfg(windows)]
    ctrl_c: tokio::signal::windows::CtrlC,
    #[cfg(windows)]
    ctrl_break: tokio::signal::windows::CtrlBreak,
    #[cfg(windows)]
    ctrl_close: tokio::signal::windows::CtrlClose,
    #[cfg(windows)]
    ctrl_shutdown: tokio::signal::windows::CtrlShutdown,
    /// Completes when someone outside asks the daemon to stop (the Windows service manager).
    stop: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    stopped: bool,
}

impl Signals {
    fn install(
        stop: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    ) -> Result<Self, DaemonError> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let make = |kind| signal(kind).map_err(DaemonError::Signals);
            Ok(Self {
                term: make(SignalKind::terminate())?,
                int: make(SignalKind::interrupt())?,
                hup: make(SignalKind::hangup())?,
                stop,
                stopped: false,
            })
        }
        #[cfg(windows)]
        {
            use tokio::signal::windows;
            Ok(Self {
                ctrl_c: windows::ctrl_c().map_err(DaemonError::Signals)?,
                ctrl_break: windows::ctrl_break().map_err(DaemonError::Signals)?,
                ctrl_close: windows::ctrl_close().map_err(DaemonError::Signals)?,
                ctrl_shutdown: windows::ctrl_shutdown().map_err(DaemonError::Signals)?,
                stop,
                stopped: false,
            })
        }
    }

    /// The next event. Cancel-safe.
    async fn next(&mut self) -> SignalEvent {
        let already = self.stopped;
        let stop_request = &mut self.stop;
        let stop = async move {
            if already {
                std::future::pending::<()>().await;
            }
            stop_request.await;
        };
        #[cfg(unix)]
        let event = tokio::select! {
            biased;
            _ = self.term.recv() => SignalEvent::Stop("SIGTERM"),
            _ = self.int.recv() => SignalEvent::Stop("SIGINT"),
            _ = self.hup.recv() => SignalEvent::Reload,
            () = stop => SignalEvent::Stop("stop request"),
        };
        #[cfg(windows)]
        let event = tokio::select! {
            biased;
            _ = self.ctrl_c.recv() => SignalEvent::Stop("Ctrl-C"),
            _ = self.ctrl_break.recv() => SignalEvent::Stop("Ctrl-Break"),
            _ = self.ctrl_close.recv() => SignalEvent::Stop("console closed"),
            _ = self.ctrl_shutdown.recv() => SignalEvent::Stop("system shutdown"),
            () = stop => SignalEvent::Stop("service stop"),
        };
        if matches!(event, SignalEvent::Stop(_)) {
            self.stopped = true;
        }
        event
    }
}

/// A started daemon, ready for its main loop.
struct Started {
    core: Core,
    control_task: tokio::task::JoinHandle<()>,
    /// The metrics endpoint, when `metrics_listen` is set.
    metrics_task: Option<tokio::task::JoinHandle<()>>,
    control_rx: mpsc::Receiver<Command>,
    reload_rx: mpsc::Receiver<(Loaded, Option<oneshot::Sender<Response>>)>,
    worker: std::thread::JoinHandle<Firewall>,
}

/// Start-up, in the order of the module docs; any failure stops the daemon with its reason.
#[expect(
    clippy::too_many_lines,
    reason = "start-up is one sequence of steps in the order the module docs give"
)]
fn start(mut opts: Options) -> Result<Started, DaemonError> {
    // An absolute path, so status shows it and a reload finds it whatever the cwd. (Windows:
    // without resolving links, which would give a `\\?\` verbatim path admins do not write.)
    #[cfg(not(windows))]
    let absolute = std::fs::canonicalize(&opts.config);
    #[cfg(windows)]
    let absolute = std::path::absolute(&opts.config);
    if let Ok(path) = absolute {
        opts.config = path;
    }
    let settings = opts.apply(config::load(&opts.config)?);
    let users = settings.users_table().map_err(DaemonError::Users)?;
    let from_store = settings
        .cluster
        .as_ref()
        .is_some_and(|c| c.seal_key.is_some());
    if users.is_empty() && !from_store {
        tracing::warn!(
            config = %settings.path.display(),
            "no users configured: every knock will be refused (add one with `capyknock keygen`)"
        );
    }
    // Bind the socket first: a second daemon must stop before touching capture or firewall.
    let control = ControlServer::bind(&settings.control_socket, settings.control_group.as_deref())?;
    let priority = settings.realtime_priority;
    realtime::check_platform(priority);
    // The firewall helper starts now, before capture and the state directory are opened, so
    // it inherits none of them; it touches the firewall only once told how, below.
    #[cfg(target_os = "linux")]
    let helper = super::privsep::wanted(settings.privsep)
        .then(super::privsep::Helper::spawn)
        .transpose()?;
    #[cfg(target_os = "linux")]
    if let Some(pid) = helper.as_ref().and_then(super::privsep::Helper::pid) {
        realtime::process(priority, pid, "firewall helper");
    }
    #[cfg(not(target_os = "linux"))]
    let helper = no_privsep(&settings);
    let (metrics, metrics_task) = start_metrics(&settings)?;
    // Reads the TLS files now; connects in the background (start-up never waits for etcd).
    let fleet = settings
        .cluster
        .as_ref()
        .map(|c| Fleet::start(c, settings.freshness))
        .transpose()
        .map_err(DaemonError::Cluster)?;

    let now = SystemTime::now();
    // Windows: a state directory we create gets the ACL mode 0700 gives it on Unix.
    #[cfg(windows)]
    if !settings.state_dir.exists()
        && std::fs::create_dir_all(&settings.state_dir).is_ok()
        && let Err(err) = super::win_acl::protect_dir(&settings.state_dir)
    {
        tracing::warn!(dir = %settings.state_dir.display(), error = %err, "cannot restrict the new state directory to SYSTEM and Administrators");
    }
    let state = StateDir::open(&settings.state_dir)?;
    // Windows has no mode bits: the state directory's DACL must keep others out.
    #[cfg(windows)]
    super::win_acl::check_private(&settings.state_dir, "state directory")
        .map_err(DaemonError::Acl)?;
    let (replay, replay_store) = open_replay(&state, unix(now));

    let mut capture = Capture::open(&capture_config(&settings))?;
    if let Some(p) = priority
        && capture.mode() != crate::capture::ActiveMode::Xdp
    {
        tracing::warn!(
            mode = %capture.mode(),
            "realtime_priority = {p}: the core, the worker and the firewall helper run at \
             SCHED_FIFO, capture does not: in this mode it sees every datagram to the knock \
             port, junk included (use xdp capture to raise the whole knock path)"
        );
    }
    let knock_drop: Vec<u16> = if capture.mode() == crate::capture::ActiveMode::Udp {
        // The socket must receive the knocks: the firewall must not drop them.
        Vec::new()
    } else {
        settings.knock_ports.clone()
    };
    // In xdp and pcap modes nothing reads the knock ports: a sink socket keeps the stack from
    // ever answering them, whatever the firewall does (`knock_sink`).
    let knock_sink = if knock_drop.is_empty() {
        KnockSink::default()
    } else {
        KnockSink::bind_except(&knock_drop, capture.udp_sockets())
    };
    if let Some(warning) = firewall::stealth_warning(&settings.firewall, &knock_drop) {
        tracing::warn!("{warning}");
    }
    let protected = settings.protected_ports();
    settings
        .protection_warnings()
        .iter()
        .for_each(|w| tracing::warn!("{w}"));
    // The firewall owns the bans: it reads the saved ones back and applies them.
    let fw = open_firewall(helper.as_ref(), &settings, &protected, &knock_drop)?;
    let firewall_name = fw.name();
    set_users(&mut capture, &users)?;
    capture.set_time_step(step_of(unix(now)))?;

    // Everything privileged is done: XDP is loaded and attached, the ring buffer, the sockets
    // and the state directory are open, the helper holds the firewall. From here on this
    // process parses packets and control requests, so it keeps no capability and runs under
    // its seccomp filter (threads started below inherit both).
    // The core: this thread, where `block_on` runs it; the worker, started below without
    // CAP_SYS_NICE, inherits it (`realtime` module docs). No thread starts here until then.
    realtime::this_thread_and_its_next(priority, "core");
    #[cfg(target_os = "linux")]
    if let Some(helper) = &helper {
        enter_sandbox(helper, &capture)?;
    }

    let (effects, effects_rx) = mpsc::channel(EFFECT_QUEUE);
    let replay_durable = Arc::new(AtomicBool::new(false));
    let helper_watch = helper.clone();
    let worker = Worker::new(fw, state, replay_store, Arc::clone(&replay_durable))
        .with_reopen(Reopen {
            config: settings.firewall.clone(),
            knock_drop,
            state_dir: settings.state_dir.clone(),
            helper: reopen_with(helper),
        })
        .with_metrics(metrics.clone());
    let bans = worker.subscribe_bans();
    let worker = std::thread::Builder::new()
        .name(realtime::WORKER_THREAD.into())
        .spawn(move || {
            realtime::this_thread(priority, realtime::WORKER_THREAD);
            worker.run(effects_rx)
        })
        .map_err(|_| DaemonError::Worker("could not start"))?;
    // From here on, threads this one starts (the blocking pool) run at normal priority.
    realtime::this_thread(priority, "core");
    // Fleet bans are applied before the daemon reports ready (bounded: a down store delays
    // the start by at most this, and its bans follow when it returns).
    let mut fleet = fleet;
    let mut store_users = None;
    if let Some(f) = fleet.as_mut() {
        f.set_users(&settings.users);
        store_users = f.store_users();
        let (tx, local) = (effects.clone(), local_addresses());
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(f.start_sync(tx, local, FLEET_CATCH_UP))
        });
    }
    // The store's users as caught up (empty when the store did not answer in time): applied
    // below, before ready, the way a reload applies users.
    let first_store_users = store_users
        .as_mut()
        .map(|rx| rx.borrow_and_update().clone());

    let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE);
    let control_path = control.path().to_owned();
    let control_task = tokio::spawn(control.serve(control_tx));

    let verifier = Verifier::new(
        verify::Settings {
            freshness: settings.freshness,
        },
        replay,
    );
    let (reload_tx, reload_rx) = mpsc::channel(1);
    let config_users = settings.users.clone();
    let mut core = Core {
        started: Instant::now(),
        loaded_at: unix(SystemTime::now()),
        limiter: RejectionLimiter::new(settings.log, Instant::now()),
        protected,
        opts,
        settings,
        users,
        verifier,
        bans,
        capture,
        firewall_name,
        effects,
        reload_tx,
        reloading: false,
        accepted: 0,
        rejected: RejectReason::ALL.iter().map(|r| (r.name(), 0)).collect(),
        replay_durable,
        _knock_sink: knock_sink,
        last_step: step_of(unix(now)),
        ticks: 0,
        fatal: None,
        metrics,
        fleet,
        helper: helper_watch,
        config_users,
        store_users,
        store_pending: false,
        applying_store: false,
    };
    if let Some(set) = first_store_users
        && !set.is_empty()
    {
        match with_store_users(
            &core.settings,
            core.config_users.clone(),
            &set,
            Source::Store,
        ) {
            Ok(r) => {
                core.apply_reload(r);
            }
            Err(err) => {
                tracing::error!("users from the fleet store not applied: {err}");
            }
        }
    }
    announce(&core, &control_path);
    super::memory::release_startup_memory();
    Ok(Started {
        core,
        control_task,
        metrics_task,
        control_rx,
        reload_rx,
        worker,
    })
}

/// How the worker reopens the firewall after a failure: through the helper when there is one.
#[cfg(target_os = "linux")]
fn reopen_with(helper: Option<super::privsep::Helper>) -> Option<OpenWith> {
    helper.map(|h| OpenWith::new(move |ports| h.reopen(ports)))
}

/// Without privilege separation the worker reopens the firewall itself.
#[cfg(not(target_os = "linux"))]
fn reopen_with(helper: Option<NoHelper>) -> Option<OpenWith> {
    helper.map(|never| match never {})
}

/// Privilege separation exists on Linux only: elsewhere there is never a helper.
#[cfg(not(target_os = "linux"))]
#[derive(Debug, Clone)]
enum NoHelper {}

/// The firewall helper the core watches (never one off Linux).
#[cfg(target_os = "linux")]
type HelperHandle = super::privsep::Helper;
#[cfg(not(target_os = "linux"))]
type HelperHandle = NoHelper;

/// How the helper ended, once it has (see [`super::privsep::Helper::exited`]).
#[cfg(target_os = "linux")]
fn helper_exited(helper: &HelperHandle) -> Option<String> {
    helper.exited()
}

#[cfg(not(target_os = "linux"))]
fn helper_exited(helper: &HelperHandle) -> Option<String> {
    match *helper {}
}

/// Logs that `privsep = true` cannot be honoured here; there is never a helper.
#[cfg(not(target_os = "linux"))]
fn no_privsep(settings: &Settings) -> Option<NoHelper> {
    if settings.privsep == Some(true) {
        tracing::warn!(
            "privsep = true: privilege separation exists only on Linux; the daemon runs as one process"
        );
    }
    None
}

/// Drops every capability and enters the seccomp filter (privilege separation). Pcap capture
/// that follows new interfaces keeps `CAP_NET_RAW` to open a capture on each (XDP needs nothing:
/// attaching the program it already holds takes no capability).
#[cfg(target_os = "linux")]
fn enter_sandbox(helper: &super::privsep::Helper, capture: &Capture) -> Result<(), DaemonError> {
    use super::privsep::sandbox::{CapSet, Capability, CapsHashSet};
    let mut keep = CapsHashSet::new();
    if capture.mode() == crate::capture::ActiveMode::Pcap && capture.follows_interfaces() {
        if caps::has_cap(None, CapSet::Permitted, Capability::CAP_NET_RAW).unwrap_or(false) {
            keep.insert(Capability::CAP_NET_RAW);
        } else {
            tracing::warn!(
                "no CAP_NET_RAW: pcap capture cannot attach to interfaces that appear later"
            );
        }
    }
    super::privsep::sandbox::enter_network(keep.clone()).map_err(DaemonError::Privsep)?;
    let kept: Vec<String> = keep.iter().map(ToString::to_string).collect();
    tracing::info!(
        helper_pid = helper.pid(),
        kept = %if kept.is_empty() { "none".to_owned() } else { kept.join(",") },
        "privileges dropped: seccomp filter on, capabilities kept as listed; the firewall helper keeps CAP_NET_ADMIN"
    );
    Ok(())
}

/// Opens the firewall: through the privileged helper when there is one, here otherwise.
#[cfg(target_os = "linux")]
fn open_firewall(
    helper: Option<&super::privsep::Helper>,
    settings: &Settings,
    protected: &[crate::ports::PortSpec],
    knock_drop: &[u16],
) -> Result<Firewall, firewall::Error> {
    match helper {
        Some(helper) => {
            settings.firewall.validate()?;
            Firewall::with_backend(
                helper.open(&settings.firewall, protected, knock_drop)?,
                Some(&settings.state_dir),
                settings.firewall.keep_established,
            )
        }
        None => Firewall::open(
            &settings.firewall,
            protected,
            knock_drop,
            &settings.state_dir,
        ),
    }
}

/// Opens the firewall in this process (no privilege separation outside Linux).
#[cfg(not(target_os = "linux"))]
fn open_firewall(
    helper: Option<&NoHelper>,
    settings: &Settings,
    protected: &[crate::ports::PortSpec],
    knock_drop: &[u16],
) -> Result<Firewall, firewall::Error> {
    if let Some(never) = helper {
        match *never {}
    }
    Firewall::open(
        &settings.firewall,
        protected,
        knock_drop,
        &settings.state_dir,
    )
}

/// Binds and serves the metrics endpoint when `metrics_listen` is set (off by default). Called
/// before capture and firewall start, so a port already taken stops the start early.
#[cfg(unix)]
fn start_metrics(
    settings: &Settings,
) -> Result<(Option<Metrics>, Option<tokio::task::JoinHandle<()>>), DaemonError> {
    let Some(listen) = &settings.metrics_listen else {
        return Ok((None, None));
    };
    let server =
        super::metrics::http::MetricsServer::bind(listen, settings.control_group.as_deref())?;
    let metrics = Metrics::new();
    let task = tokio::spawn(server.serve(metrics.clone()));
    Ok((Some(metrics), Some(task)))
}

/// The metrics endpoint is served on Unix only for now: a config that asks for it elsewhere is
/// refused rather than silently ignored.
#[cfg(not(unix))]
fn start_metrics(
    settings: &Settings,
) -> Result<(Option<Metrics>, Option<tokio::task::JoinHandle<()>>), DaemonError> {
    match settings.metrics_listen {
        None => Ok((None, None)),
        Some(_) => Err(DaemonError::Unsupported(
            "metrics_listen: the metrics endpoint is not available on Windows yet; remove it from [server]",
        )),
    }
}

/// Logs that the daemon is ready and tells systemd.
fn announce(core: &Core, control_path: &std::path::Path) {
    let ready = format!(
        "knock ports {} ({}), firewall {}, {}",
        crate::ports::knock_ports_text(&core.settings.knock_ports),
        core.capture.mode(),
        core.firewall_name,
        crate::ports::count_of(core.users.len(), "user")
    );
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        knock_ports = %crate::ports::knock_ports_text(&core.settings.knock_ports),
        capture = %core.capture.mode(),
        firewall = core.firewall_name,
        users = core.users.len(),
        control_socket = %control_path.display(),
        metrics = %core.settings.metrics_listen.as_ref().map_or_else(|| "off".to_owned(), ToString::to_string),
        "capyknock daemon ready"
    );
    notify(Notify::Ready(&ready));
}

/// Stops serving, stops capture (detaching XDP), saves the state; leaves the firewall as it is.
async fn shutdown(
    core: Core,
    control_task: tokio::task::JoinHandle<()>,
    worker: std::thread::JoinHandle<Firewall>,
) {
    notify(Notify::Stopping);
    control_task.abort();
    let _ = control_task.await;
    let Core {
        capture, effects, ..
    } = core;
    capture.shutdown();
    let _ = effects.send(Effect::Shutdown).await;
    drop(effects);
    // The firewall comes back and is dropped as it is: grants run out by themselves.
    if !matches!(
        tokio::task::spawn_blocking(move || worker.join()).await,
        Ok(Ok(_))
    ) {
        tracing::error!("the firewall/state worker ended abnormally");
    }
    tracing::info!("capyknock daemon stopped; current grants stay until they expire");
}

/// The result of loading a config (or merging the store's users) on the blocking pool, for a
/// reload.
type Loaded = Result<Reloaded, String>;

/// The store's users as a node last read them.
type StoreUsers = Arc<Vec<StoreUser>>;

/// What a reload changes to.
struct Reloaded {
    /// The new settings, their users the config's and the store's ([`merge`]).
    settings: Settings,
    /// The config file's users alone.
    config_users: Vec<User>,
    /// The verifier's table of `settings.users`.
    users: Users,
    /// What asked for it.
    source: Source,
}

/// What asked for a change of users.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// SIGHUP or `capyknock reload`: the config file was read again.
    File,
    /// The users in the fleet store changed (`users_from_store`).
    Store,
}

/// `settings` (whose users are the config file's, `config_users`) with the store's users
/// joined to them; the refused records are logged. Runs on the blocking pool (it derives
/// every user's keys).
fn with_store_users(
    settings: &Settings,
    config_users: Vec<User>,
    store: &[StoreUser],
    source: Source,
) -> Result<Reloaded, String> {
    let mut settings = Settings {
        users: config_users.clone(),
        ..settings.clone()
    };
    let (users, refused) = merge(&settings, store);
    for (key, why) in refused {
        tracing::error!(key = %key, why = %why, "user from the fleet store refused on this node");
    }
    settings.users = users;
    let users = settings
        .users_table()
        .map_err(|e| ErrorChain(&e).to_string())?;
    Ok(Reloaded {
        settings,
        config_users,
        users,
        source,
    })
}

/// The next change of the store's users; never, when they do not come from the store.
async fn store_change(rx: &mut Option<watch::Receiver<StoreUsers>>) {
    let changed = match rx {
        Some(r) => r.changed().await.is_ok(),
        None => false,
    };
    if !changed {
        // No store users, or their sender is gone: nothing will change any more.
        std::future::pending::<()>().await;
    }
}

/// The core task's state. See the module docs.
struct Core {
    opts: Options,
    settings: Settings,
    users: Users,
    verifier: Verifier,
    /// The bans as the firewall last published them.
    bans: watch::Receiver<BanList>,
    capture: Capture,
    firewall_name: &'static str,
    protected: Vec<crate::ports::PortSpec>,
    effects: mpsc::Sender<Effect>,
    reload_tx: mpsc::Sender<(Loaded, Option<oneshot::Sender<Response>>)>,
    reloading: bool,
    limiter: RejectionLimiter,
    started: Instant,
    loaded_at: u64,
    accepted: u64,
    rejected: BTreeMap<&'static str, u64>,
    /// Set by the worker: whether uses of codes can be made durable. While false, knocks are
    /// refused (`state_unavailable`).
    replay_durable: Arc<AtomicBool>,
    /// Held for the daemon's lifetime.
    _knock_sink: KnockSink,
    last_step: u64,
    ticks: u64,
    fatal: Option<DaemonError>,
    /// The metrics endpoint's counters, when it is on.
    metrics: Option<Metrics>,
    /// Fleet mode: every grant is claimed in etcd first (`server::cluster`).
    fleet: Option<Fleet>,
    /// The firewall helper (privilege separation), watched every tick.
    helper: Option<HelperHandle>,
    /// The config file's users (`settings.users` adds the store's).
    config_users: Vec<User>,
    /// The store's users as they change (`users_from_store`).
    store_users: Option<watch::Receiver<StoreUsers>>,
    /// The store's users changed during a reload: applied once it is done.
    store_pending: bool,
    /// The change running now (`reloading`) is the store's users', not a reload's.
    applying_store: bool,
}

impl Core {
    async fn run(
        &mut self,
        signals: &mut Signals,
        mut control: mpsc::Receiver<Command>,
        mut reloads: mpsc::Receiver<(Loaded, Option<oneshot::Sender<Response>>)>,
    ) -> Result<(), DaemonError> {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // `biased`: signals, control and timers are served before the next candidate, so a
            // flood of knocks cannot starve them.
            tokio::select! {
                biased;
                event = signals.next() => match event {
                    SignalEvent::Stop(what) => {
                        tracing::info!("{what}: shutting down");
                        break;
                    }
                    #[cfg(unix)]
                    SignalEvent::Reload => {
                        tracing::info!("SIGHUP: reloading the configuration");
                        self.start_reload(None);
                    }
                },
                Some((loaded, reply)) = reloads.recv() => self.finish_reload(loaded, reply),
                () = store_change(&mut self.store_users) => self.start_store_users(),
                Some(cmd) = control.recv() => self.control(cmd),
                _ = tick.tick() => self.tick(),
                candidate = self.capture.next() => match candidate {
                    Ok(c) => self.knock(&c),
                    Err(err) => {
                        tracing::error!(error = %ErrorChain(&err), "capture stopped; exiting");
                        return Err(err.into());
                    }
                },
            }
            if let Some(err) = self.fatal.take() {
                return Err(err);
            }
        }
        Ok(())
    }

    /// One candidate: ban check, verify, log, hand the grant to the worker.
    fn knock(&mut self, c: &Candidate) {
        let received = Instant::now();
        let now_wall = SystemTime::now();
        let now = unix(now_wall);
        let src = c.src.ip().to_canonical();
        let banned = |addr| self.bans.borrow().is_banned(addr, now_wall);
        if banned(src) {
            self.rejected_line(RejectReason::Banned, src, None);
            return;
        }
        let verdict = self.verifier.verify(&self.users, &c.bytes, src, now);
        let used = self.verifier.take_used();
        match (verdict, used) {
            (Verdict::Grant(g), Some(used)) if g.addr != src && banned(g.addr) => {
                // The user asked for a banned address.
                self.rejected_line(RejectReason::Banned, src, Some(&g.nickname));
                self.send(Effect::RecordUse {
                    used,
                    verified_at: now,
                });
            }
            (Verdict::Grant(g), Some(used)) if !self.replay_durable.load(Ordering::Acquire) => {
                // Fail closed: without a durable record, a restart could accept this again.
                self.rejected_line(RejectReason::StateUnavailable, src, Some(&g.nickname));
                self.send(Effect::RecordUse {
                    used,
                    verified_at: now,
                });
            }
            (Verdict::Grant(grant), Some(used)) if self.fleet.is_some() => {
                if let Some(fleet) = &self.fleet {
                    let scope = self.settings.user_scopes.get(&grant.user).cloned();
                    let knock = Pending {
                        grant,
                        used,
                        received,
                        src,
                        scope,
                        verified_at: now,
                    };
                    fleet.claim_then_grant(knock, self.effects.clone(), self.metrics.clone());
                }
            }
            (Verdict::Grant(grant), Some(used)) => {
                self.accepted += 1;
                if let Some(m) = &self.metrics {
                    m.accepted();
                }
                logging::accepted(&grant, src);
                self.send(Effect::Grant {
                    grant,
                    used,
                    received,
                    verified_at: now,
                });
            }
            (Verdict::Grant(g), None) => {
                // Cannot happen: the verifier charges a use for every grant. Refuse.
                tracing::error!(nickname = %g.nickname, "a grant without a recorded use; refused");
                self.rejected_line(RejectReason::StateUnavailable, src, Some(&g.nickname));
            }
            (Verdict::Reject(r), used) => {
                self.rejected_line(r.reason, src, r.nickname.as_deref());
                if let Some(used) = used {
                    self.send(Effect::RecordUse {
                        used,
                        verified_at: now,
                    });
                }
            }
        }
    }

    fn rejected_line(&mut self, reason: RejectReason, src: IpAddr, nickname: Option<&str>) {
        if let Some(n) = self.rejected.get_mut(reason.name()) {
            *n += 1;
        }
        if let Some(m) = &self.metrics {
            m.rejected(reason);
        }
        if self.limiter.allow(src, Instant::now()) {
            logging::rejected(reason.name(), src, nickname);
        }
    }

    /// Queues an effect without waiting; false (logged) when the worker is behind or gone.
    fn send(&mut self, effect: Effect) -> bool {
        match self.effects.try_send(effect) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(e)) => {
                tracing::error!(
                    effect = effect_name(&e),
                    "the firewall/state worker is {EFFECT_QUEUE} changes behind; dropping one"
                );
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.fatal = Some(DaemonError::Worker("stopped"));
                false
            }
        }
    }

    /// Copies the pre-filter counters into the metrics (once a second, when they are on): a
    /// scrape reads the copy and never touches the capture.
    fn publish_prefilter(&self) {
        if let Some(m) = &self.metrics {
            match self.capture.counters() {
                Ok(c) => m.set_prefilter(&c),
                Err(err) => {
                    tracing::debug!(error = %ErrorChain(&err), "cannot read the pre-filter counters");
                }
            }
        }
    }

    fn tick(&mut self) {
        self.ticks += 1;
        if let Some(status) = self.helper.as_ref().and_then(helper_exited) {
            tracing::error!(%status, "the firewall helper ended: no grant, ban or repair can reach the firewall; exiting so the service manager restarts the daemon (grants and bans in the kernel stay)");
            self.fatal = Some(DaemonError::HelperEnded(status));
            return;
        }
        self.publish_prefilter();
        let now_wall = SystemTime::now();
        let now = unix(now_wall);
        let step = step_of(now);
        if step != self.last_step {
            match self.capture.set_time_step(step) {
                Ok(()) => self.last_step = step,
                Err(err) => {
                    tracing::error!(error = %ErrorChain(&err), "cannot update the pre-filter's time step");
                }
            }
        }
        if let Some(count) = self.limiter.take_summary(Instant::now()) {
            logging::suppressed(count);
        }
        self.send(Effect::KeepReplayAhead);
        if self.ticks.is_multiple_of(REPAIR_TICKS) {
            self.send(Effect::Repair);
            if !self.replay_durable.load(Ordering::Acquire) {
                self.send(Effect::RecoverReplay(Box::new(
                    self.verifier.replay().clone(),
                )));
            }
        }
    }

    fn control(&mut self, cmd: Command) {
        let Command { request, reply } = cmd;
        match request {
            Request::Status {} => {
                let status = Box::new(self.status());
                if let Err(mpsc::error::TrySendError::Full(Effect::Status { reply, .. })) =
                    self.effects.try_send(Effect::Status { status, reply })
                {
                    let _ = reply.send(Response::error("the daemon is busy; try again"));
                }
            }
            Request::Reload {} => self.start_reload(Some(reply)),
            Request::Ban {
                addr,
                duration_secs,
            } => self.ban(addr, duration_secs, reply),
            Request::Unban { addr } => {
                // The worker logs it once the firewall has lifted it.
                let addr = addr.to_canonical();
                if let Some(fleet) = &self.fleet {
                    fleet.publish_unban(addr);
                }
                self.ban_effect(Effect::Unban { addr, reply });
            }
        }
    }

    fn ban(&mut self, addr: IpAddr, duration_secs: Option<u64>, reply: oneshot::Sender<Response>) {
        let addr = addr.to_canonical();
        if let Some(why) = super::control::unbannable(addr, &local_addresses()) {
            tracing::warn!(target: logging::KNOCK_TARGET, %addr, why, "ban refused");
            let _ = reply.send(Response::error(format!("refusing to ban {addr}: {why}")));
            return;
        }
        let until = duration_secs.map(|s| SystemTime::now() + Duration::from_secs(s));
        if let Some(fleet) = &self.fleet {
            fleet.publish_ban(addr, duration_secs.map(Duration::from_secs));
        }
        tracing::info!(
            target: logging::KNOCK_TARGET,
            %addr,
            duration = %duration_secs.map_or_else(|| "until unbanned".to_owned(), |s| humantime::format_duration(Duration::from_secs(s)).to_string()),
            "address banned"
        );
        self.ban_effect(Effect::Ban { addr, until, reply });
    }

    /// Hands a ban or unban to the worker, which answers the control client; when the worker
    /// is too far behind, the client is told at once.
    fn ban_effect(&mut self, effect: Effect) {
        if let Err(e) = self.effects.try_send(effect)
            && let Effect::Ban { reply, .. } | Effect::Unban { reply, .. } = e.into_inner()
        {
            let _ = reply.send(Response::error(
                "the firewall worker is busy; nothing changed, try again",
            ));
        }
    }

    fn start_reload(&mut self, reply: Option<oneshot::Sender<Response>>) {
        if self.reloading {
            if let Some(reply) = reply {
                let _ = reply.send(Response::error("a reload is already running; try again"));
            }
            return;
        }
        self.reloading = true;
        notify(Notify::Reloading);
        let path = self.settings.path.clone();
        let opts = self.opts.clone();
        let tx = self.reload_tx.clone();
        let store = self.store_snapshot();
        tokio::task::spawn_blocking(move || {
            let loaded = config::load(&path)
                .map_err(|e| e.to_string())
                .map(|s| opts.apply(s))
                .and_then(|s| {
                    let config_users = s.users.clone();
                    with_store_users(&s, config_users, &store, Source::File)
                });
            let _ = tx.blocking_send((loaded, reply));
        });
    }

    /// The store's users as last published (none without `users_from_store`).
    fn store_snapshot(&mut self) -> StoreUsers {
        self.store_users
            .as_mut()
            .map(|rx| rx.borrow_and_update().clone())
            .unwrap_or_default()
    }

    /// The store's users changed: joins them to the config's on the blocking pool, then
    /// applies them as a reload does (after the reload running now, if any).
    fn start_store_users(&mut self) {
        if self.reloading {
            self.store_pending = true;
            return;
        }
        self.reloading = true;
        self.applying_store = true;
        let store = self.store_snapshot();
        let settings = self.settings.clone();
        let config_users = self.config_users.clone();
        let tx = self.reload_tx.clone();
        tokio::task::spawn_blocking(move || {
            let loaded = with_store_users(&settings, config_users, &store, Source::Store);
            let _ = tx.blocking_send((loaded, None));
        });
    }

    fn finish_reload(&mut self, loaded: Loaded, reply: Option<oneshot::Sender<Response>>) {
        self.reloading = false;
        if std::mem::take(&mut self.applying_store) {
            match loaded {
                Ok(r) => {
                    self.apply_reload(r);
                }
                Err(err) => tracing::error!(
                    "users from the fleet store not applied, the users in force are unchanged: \
                     {err}"
                ),
            }
            self.after_reload();
            return;
        }
        let response = match loaded {
            Err(err) => {
                // One log line (journald splits lines); the client gets the multi-line text.
                let flat = err.replace("\n  ", " | ").replace('\n', " | ");
                tracing::error!("reload refused, the configuration in force is unchanged: {flat}");
                Response::error(format!(
                    "reload refused, the configuration in force is unchanged:\n{err}"
                ))
            }
            Ok(r) => self.apply_reload(r),
        };
        notify(Notify::Ready(if response.ok {
            "configuration reloaded"
        } else {
            "reload refused; old configuration in force"
        }));
        if let Some(reply) = reply {
            let _ = reply.send(response);
        }
        self.after_reload();
    }

    /// Applies a change of the store's users that arrived during the reload.
    fn after_reload(&mut self) {
        if std::mem::take(&mut self.store_pending) {
            self.start_store_users();
        }
    }

    fn apply_reload(&mut self, reloaded: Reloaded) -> Response {
        let Reloaded {
            settings: new,
            config_users,
            users,
            source,
        } = reloaded;
        let plan = reload::plan(&self.settings, new, &self.protected);
        if let Err(err) = set_users(&mut self.capture, &users) {
            // Put the old users back so the pre-filter and the verifier agree.
            let _ = set_users(&mut self.capture, &self.users);
            tracing::error!(error = %ErrorChain(&err), "reload refused: cannot update the pre-filter's users");
            return Response::error(format!(
                "reload refused: cannot update the pre-filter's users: {}",
                ErrorChain(&err)
            ));
        }
        self.users = users;
        self.config_users = config_users;
        if let Some(fleet) = &self.fleet {
            fleet.set_users(&plan.settings.users);
        }
        self.verifier.set_settings(verify::Settings {
            freshness: plan.settings.freshness,
        });
        self.limiter.set_limits(plan.settings.log);
        self.settings = plan.settings;
        self.loaded_at = unix(SystemTime::now());
        let mut notes = Vec::new();
        if !plan.needs_restart.is_empty() {
            let keys = plan.needs_restart.join(", ");
            tracing::warn!(settings = %keys, "changed settings need a restart; the old values stay in force until then");
            notes.push(format!("changed, restart to apply: {keys}"));
        }
        if !plan.unprotected.is_empty() {
            // Protect the union: a port no user has any more stays protected (closed to
            // everyone) until a restart rather than opening to the world.
            let mut ports: std::collections::BTreeSet<_> = self.protected.iter().copied().collect();
            ports.extend(plan.unprotected.iter().copied());
            self.protected = ports.into_iter().collect();
            self.send(Effect::Protect(self.protected.clone()));
            let new: Vec<String> = plan.unprotected.iter().map(ToString::to_string).collect();
            notes.push(format!("now protecting {}", new.join(", ")));
        }
        if let Some(warning) = &plan.protection_warning {
            tracing::warn!("{warning}");
            notes.push(warning.clone());
        }
        if !plan.removed.is_empty() {
            if self.settings.revoke_removed_users {
                self.send(Effect::RevokeUsers(plan.removed.clone()));
            }
            tracing::info!(
                removed = plan.removed.len(),
                revoke = self.settings.revoke_removed_users,
                "removed users can no longer knock"
            );
        }
        match source {
            Source::File => tracing::info!(
                users = self.users.len(),
                added = plan.added,
                removed = plan.removed.len(),
                "configuration reloaded"
            ),
            Source::Store => tracing::info!(
                users = self.users.len(),
                added = plan.added,
                removed = plan.removed.len(),
                "users from the fleet store applied (no reload needed)"
            ),
        }
        let mut msg = format!(
            "reloaded {}: {} users ({} added, {} removed{})",
            self.settings.path.display(),
            self.users.len(),
            plan.added,
            plan.removed.len(),
            if plan.removed.is_empty() {
                ""
            } else if self.settings.revoke_removed_users {
                ", their access revoked"
            } else {
                ", their current access runs out by itself"
            }
        );
        for n in notes {
            msg.push_str("; ");
            msg.push_str(&n);
        }
        Response::message(msg)
    }

    fn status(&self) -> Status {
        let prefilter = match self.capture.counters() {
            Ok(c) => c.iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            Err(err) => {
                tracing::warn!(error = %ErrorChain(&err), "cannot read the pre-filter counters");
                BTreeMap::new()
            }
        };
        Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_secs: self.started.elapsed().as_secs(),
            config: self.settings.path.display().to_string(),
            config_loaded_at: self.loaded_at,
            knock_ports: self.settings.knock_ports.clone(),
            users: self.users.len(),
            capture: capture_status(&self.capture, &self.settings),
            firewall: FirewallStatus {
                backend: self.firewall_name.to_owned(),
            },
            prefilter,
            verifier: VerifierStatus {
                accepted: self.accepted,
                rejected: self
                    .rejected
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), *v))
                    .collect(),
                firewall_errors: 0,
                replay_state_durable: self.replay_durable.load(Ordering::Acquire),
                replay_state_users: self.verifier.replay().len(),
            },
            grants: Vec::new(),
            bans: Vec::new(),
            log_lines_suppressed: self.limiter.suppressed_total(),
            cluster: self.fleet.as_ref().map(Fleet::status),
        }
    }
}

/// The capture settings for `settings`.
fn capture_config(settings: &Settings) -> CaptureConfig {
    CaptureConfig {
        mode: settings.capture,
        ifaces: settings.interfaces.clone(),
        knock_ports: settings.knock_ports.clone(),
        xdp_mode: settings.xdp_mode,
        per_source: RateLimitConfig {
            per_second: settings.limits.per_source_rate,
            burst: settings.limits.per_source_burst,
        },
        per_user: RateLimitConfig {
            per_second: settings.limits.per_user_rate,
            burst: settings.limits.per_user_burst,
        },
        global: RateLimitConfig {
            per_second: settings.limits.global_rate,
            burst: settings.limits.global_rate,
        },
        realtime_priority: settings.realtime_priority,
    }
}

/// The capture part of `status`: the interfaces attached now, with the attach mode in use on
/// each, and which new interfaces are followed.
fn capture_status(capture: &Capture, settings: &Settings) -> CaptureStatus {
    let attached = capture.interfaces();
    CaptureStatus {
        mode: capture.mode().to_string(),
        interfaces: attached.iter().map(|a| a.name.clone()).collect(),
        detail: attached
            .iter()
            .filter_map(|a| a.xdp_mode.map(|m| format!("{}: {m}", a.name)))
            .collect::<Vec<_>>()
            .join(", "),
        follows: if !capture.follows_interfaces() {
            String::new()
        } else if settings.interfaces.is_empty() {
            "all".to_owned()
        } else {
            settings.interfaces.join(", ")
        },
    }
}

/// Gives the pre-filter the users' ids and tag keys.
fn set_users(capture: &mut Capture, users: &Users) -> Result<(), CaptureError> {
    let keys: Vec<_> = users
        .tag_keys()
        .map(|(id, key)| (id.0, *key.expose_secret()))
        .collect();
    capture.set_users(&keys)
}

/// Loads the replay state and opens its file for the worker. When the file cannot be opened
/// or created (read-only or broken state directory), the daemon still starts, but refuses
/// every knock until the worker manages to write it (fail closed, logged loudly).
fn open_replay(
    state: &StateDir,
    now_unix: u64,
) -> (crate::protocol::replay::ReplayState, Option<ReplayStore>) {
    let (replay, _, reusable) = ReplayStore::load(state.path(), now_unix);
    let opened = if reusable {
        ReplayStore::open(state.path(), &replay, now_unix)
    } else {
        ReplayStore::create(state.path(), &replay, now_unix)
    };
    match opened {
        Ok(store) => (replay, Some(store)),
        Err(err) => {
            tracing::error!(
                error = %ErrorChain(&err),
                "CANNOT SAVE THE REPLAY STATE: every knock is refused until it can be saved \
                 (fix the state directory: space, permissions, read-only mount); bans and the \
                 firewall work"
            );
            (replay, None)
        }
    }
}

fn effect_name(e: &Effect) -> &'static str {
    match e {
        Effect::Grant { .. } => "grant",
        Effect::RecordUse { .. } => "record a used code",
        Effect::RecoverReplay(_) => "recover the replay state",
        Effect::Ban { .. } => "ban",
        Effect::Unban { .. } => "unban",
        Effect::RevokeUsers(_) => "revoke users",
        Effect::Protect(_) => "protect ports",
        Effect::Repair => "firewall check",
        Effect::KeepReplayAhead => "renew the replay horizon",
        Effect::Status { .. } => "status",
        Effect::Shutdown => "shutdown",
    }
}

/// Seconds since the Unix epoch (0 before it).
fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What the daemon tells its service manager.
#[derive(Debug, Clone, Copy)]
enum Notify<'a> {
    /// Serving, with a one-line status.
    Ready(&'a str),
    /// Re-reading the configuration.
    Reloading,
    /// Shutting down.
    Stopping,
}

/// Tells systemd (when `NOTIFY_SOCKET` is set); errors are logged, never fatal.
#[cfg(target_os = "linux")]
fn notify(what: Notify<'_>) {
    use sd_notify::NotifyState;
    let result = match what {
        Notify::Ready(status) => {
            sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(status)])
        }
        Notify::Reloading => sd_notify::notify(&[NotifyState::Reloading]),
        Notify::Stopping => sd_notify::notify(&[NotifyState::Stopping]),
    };
    if let Err(err) = result {
        tracing::debug!(error = %err, "sd_notify failed");
    }
}

/// No systemd outside Linux (the Windows service reports its state itself).
#[cfg(not(target_os = "linux"))]
fn notify(what: Notify<'_>) {
    let status = match what {
        Notify::Ready(status) => status,
        Notify::Reloading => "reloading",
        Notify::Stopping => "stopping",
    };
    tracing::trace!(status, "no service manager notification on this platform");
}

/// This host's own addresses (every interface's), so a ban cannot cut the server off from
/// itself. Empty if they cannot be listed (the ban then goes ahead: loopback is still refused).
#[cfg(unix)]
fn local_addresses() -> Vec<IpAddr> {
    match nix::ifaddrs::getifaddrs() {
        Ok(addrs) => addrs
            .filter_map(|a| {
                let a = a.address?;
                a.as_sockaddr_in()
                    .map(|v4| IpAddr::V4(v4.ip()))
                    .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
            })
            .collect(),
        Err(err) => {
            tracing::warn!(error = %err, "cannot list this host's addresses");
            Vec::new()
        }
    }
}

/// This host's own addresses: every adapter's (`GetAdaptersAddresses`).
#[cfg(windows)]
fn local_addresses() -> Vec<IpAddr> {
    super::win_host::addresses()
}
