//! The daemon as a Windows service: `capyknock service install|uninstall|start|stop`, and the
//! service's own entry point (`capyknock service run`, which only the Service Control Manager
//! starts).
//!
//! `install` registers the service `capyknock` (`LocalSystem`, automatic start, restarted by the
//! SCM 5 s after a failure, three times a day) running `capyknock.exe service run --config
//! PATH`, and creates `capyknock` in the `ProgramData` folder ([`super::win_host::data_dir`])
//! with its `state` and `logs` directories for SYSTEM and Administrators only
//! ([`super::win_acl::protect_dir`]). A stop request from the
//! SCM stops the daemon the way Ctrl-C does: capture stops, the replay state and bans are
//! saved, grants are left to expire as the ledger says.
//!
//! Logs: a service has no console, so `service run` writes the daemon's log lines to
//! `capyknock\logs\capyknock.log` there, the same text as on stderr; at each start a
//! log over [`ROTATE_AT`] bytes is renamed to `capyknock.log.1` (one old file kept).
//! docs/WINDOWS.md.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    sync::Mutex,
    time::Duration,
};

use windows_service::{
    define_windows_service,
    service::{
        ServiceAccess, ServiceAction, ServiceActionType, ServiceControl, ServiceControlAccept,
        ServiceErrorControl, ServiceExitCode, ServiceFailureActions, ServiceFailureResetPeriod,
        ServiceInfo, ServiceStartType, ServiceState, ServiceStatus, ServiceType,
    },
    service_control_handler::{self, ServiceControlHandlerResult, ServiceStatusHandle},
    service_dispatcher,
    service_manager::{ServiceManager, ServiceManagerAccess},
};

use super::config;

/// The service's name (`sc query capyknock`).
pub const SERVICE_NAME: &str = "capyknock";
/// What the Services console shows.
const DISPLAY_NAME: &str = "capyknock single packet authorization";
/// A log file larger than this at start is rotated.
pub const ROTATE_AT: u64 = 10 * 1024 * 1024;

/// `capyknock service`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    #[command(subcommand)]
    pub action: ServiceCommand,
}

/// What to do with the service.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ServiceCommand {
    /// Register the service (automatic start, restart on failure) and create
    /// %ProgramData%\capyknock for SYSTEM and Administrators only.
    Install {
        /// The configuration the service runs with.
        #[arg(long, short, value_name = "PATH", default_value_os_t = config::default_config_path())]
        config: PathBuf,
    },
    /// Stop and remove the service (the configuration, state and logs stay).
    Uninstall,
    /// Start the service.
    Start,
    /// Stop the service (state saved; grants expire as the ledger says).
    Stop,
    /// The service's entry point, started by the Service Control Manager.
    #[command(hide = true)]
    Run {
        /// The configuration.
        #[arg(long, short, value_name = "PATH", default_value_os_t = config::default_config_path())]
        config: PathBuf,
        /// Where the log goes: the folder `install` created (it passes it), else
        /// `%ProgramData%\capyknock\logs`.
        #[arg(long, value_name = "DIR")]
        log_dir: Option<PathBuf>,
    },
}

/// Why a service command failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A Service Control Manager call failed.
    #[error("{action} (run as Administrator)")]
    Scm {
        /// What we were doing.
        action: &'static str,
        /// Why.
        #[source]
        source: windows_service::Error,
    },
    /// A directory or file could not be prepared.
    #[error("{what} {}", path.display())]
    Io {
        /// What.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn scm(action: &'static str) -> impl FnOnce(windows_service::Error) -> ServiceError {
    move |source| ServiceError::Scm { action, source }
}

/// Runs a `capyknock service ...` command.
pub fn run(args: &ServiceArgs) -> Result<(), ServiceError> {
    match &args.action {
        ServiceCommand::Install { config } => install(config),
        ServiceCommand::Uninstall => uninstall(),
        ServiceCommand::Start => {
            let service = open(ServiceAccess::START)?;
            service
                .start::<&str>(&[])
                .map_err(scm("starting the service"))?;
            println!("service {SERVICE_NAME} starting");
            Ok(())
        }
        ServiceCommand::Stop => {
            let service = open(ServiceAccess::STOP)?;
            service.stop().map_err(scm("stopping the service"))?;
            println!("service {SERVICE_NAME} stopping");
            Ok(())
        }
        ServiceCommand::Run { config, log_dir } => run_service(
            config,
            &log_dir
                .clone()
                .unwrap_or_else(|| super::win_host::data_dir().join("logs")),
        ),
    }
}

fn open(access: ServiceAccess) -> Result<windows_service::service::Service, ServiceError> {
    let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
        .map_err(scm("opening the Service Control Manager"))?;
    manager
        .open_service(SERVICE_NAME, access)
        .map_err(scm("opening the capyknock service (is it installed?)"))
}

/// Creates `dir` if missing and sets it to SYSTEM and Administrators only.
fn admin_only_dir(dir: &Path) -> Result<(), ServiceError> {
    let io = |what| {
        move |source| ServiceError::Io {
            what,
            path: dir.to_owned(),
            source,
        }
    };
    std::fs::create_dir_all(dir).map_err(io("cannot create"))?;
    super::win_acl::protect_dir(dir).map_err(io("cannot restrict to SYSTEM and Administrators"))
}

fn install(config: &Path) -> Result<(), ServiceError> {
    let data = super::win_host::data_dir();
    admin_only_dir(&data)?;
    for sub in ["state", "logs"] {
        admin_only_dir(&data.join(sub))?;
    }
    let exe = std::env::current_exe().map_err(|source| ServiceError::Io {
        what: "cannot find this program's path",
        path: PathBuf::new(),
        source,
    })?;
    let manager = ServiceManager::local_computer(
        None::<&str>,
        ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE,
    )
    .map_err(scm("opening the Service Control Manager"))?;
    let info = ServiceInfo {
        name: SERVICE_NAME.into(),
        display_name: DISPLAY_NAME.into(),
        service_type: ServiceType::OWN_PROCESS,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: exe,
        // The log folder just made private, named on the command line so the service need not
        // find it again (before ProgramData came from the shell's known folder, the SCM's
        // %ProgramData% could differ: Wine 8's points at C:\users\Public).
        launch_arguments: vec![
            OsString::from("service"),
            OsString::from("run"),
            OsString::from("--config"),
            config.as_os_str().to_owned(),
            OsString::from("--log-dir"),
            data.join("logs").into_os_string(),
        ],
        dependencies: vec![],
        // LocalSystem: Windows Firewall changes need it.
        account_name: None,
        account_password: None,
    };
    let service = manager
        .create_service(
            &info,
            ServiceAccess::CHANGE_CONFIG | ServiceAccess::START | ServiceAccess::QUERY_STATUS,
        )
        .map_err(scm("creating the service"))?;
    service
        .set_description("Opens firewall ports for one encrypted UDP knock with a TOTP code")
        .map_err(scm("describing the service"))?;
    let restart = ServiceAction {
        action_type: ServiceActionType::Restart,
        delay: Duration::from_secs(5),
    };
    service
        .update_failure_actions(ServiceFailureActions {
            reset_period: ServiceFailureResetPeriod::After(Duration::from_hours(24)),
            reboot_msg: None,
            command: None,
            actions: Some(vec![restart.clone(), restart.clone(), restart]),
        })
        .map_err(scm("setting restart on failure"))?;
    // Without this flag the SCM restarts only a process that dies without reporting; a daemon
    // that stops on an error reports "stopped" with exit code 1 and would stay down. Windows
    // has had it since Vista; where it is refused (Wine 8: "Invalid level") the service is
    // still installed and restarts after a crash, so say so rather than fail half-installed.
    let restarts = match service.set_failure_actions_on_non_crash_failures(true) {
        Ok(()) => "restart on failure",
        Err(err) => {
            eprintln!(
                "warning: cannot set restart after an error stop ({err}); the service restarts \
                 after a crash only: `sc.exe failureflag {SERVICE_NAME} 1` sets it"
            );
            "restart after a crash"
        }
    };
    println!(
        "service {SERVICE_NAME} installed (automatic start, {restarts}), config {}; \
         start it with `capyknock service start`; logs in {}",
        config.display(),
        data.join("logs").display()
    );
    Ok(())
}

fn uninstall() -> Result<(), ServiceError> {
    let service = open(ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE)?;
    if service
        .query_status()
        .is_ok_and(|s| s.current_state != ServiceState::Stopped)
    {
        let _ = service.stop();
        for _ in 0..100 {
            if service
                .query_status()
                .is_ok_and(|s| s.current_state == ServiceState::Stopped)
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    service.delete().map_err(scm("deleting the service"))?;
    println!("service {SERVICE_NAME} removed; configuration, state and logs are kept");
    Ok(())
}

/// The configuration `service run` was given, for the service's main (the SCM passes its own
/// arguments, not ours, to the service main).
static CONFIG: Mutex<Option<PathBuf>> = Mutex::new(None);

fn run_service(config: &Path, log_dir: &Path) -> Result<(), ServiceError> {
    if let Ok(mut slot) = CONFIG.lock() {
        *slot = Some(config.to_owned());
    }
    init_file_log(log_dir);
    service_dispatcher::start(SERVICE_NAME, ffi_service_main).map_err(scm(
        "connecting to the Service Control Manager (only it starts `service run`)",
    ))
}

define_windows_service!(ffi_service_main, service_main);

fn service_main(_arguments: Vec<OsString>) {
    if let Err(err) = serve() {
        tracing::error!(error = %crate::error_chain::ErrorChain(&err), "service failed");
    }
}

/// A status report: `controls` accepted only while running; the checkpoint and wait hint only
/// while start is pending.
fn status(state: ServiceState, checkpoint: u32, exit: ServiceExitCode) -> ServiceStatus {
    ServiceStatus {
        service_type: ServiceType::OWN_PROCESS,
        current_state: state,
        controls_accepted: if state == ServiceState::Running {
            ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN
        } else {
            ServiceControlAccept::empty()
        },
        exit_code: exit,
        checkpoint,
        wait_hint: if state == ServiceState::StartPending {
            PENDING_WAIT_HINT
        } else {
            Duration::ZERO
        },
        process_id: None,
    }
}

/// The service-specific exit code the service stops with after `result` (0: a clean stop).
/// The same numbers as the command line's exit statuses (docs/OPERATIONS.md): 2 for a config
/// that cannot be used, 1 for any other failure. `sc.exe query capyknock` shows it as
/// `SERVICE_EXIT_CODE` beside `WIN32_EXIT_CODE : 1066` (`ERROR_SERVICE_SPECIFIC_ERROR`); any
/// non-zero code lets the SCM apply the restart-on-failure actions (`install` sets the
/// non-crash failure flag).
#[must_use]
pub fn exit_code(result: &Result<(), super::cli::CliError>) -> ServiceExitCode {
    match result {
        Ok(()) => ServiceExitCode::NO_ERROR,
        Err(err) => ServiceExitCode::ServiceSpecific(u32::from(err.exit_code())),
    }
}

/// How often the checkpoint of a pending start advances (the SCM expects progress within the
/// wait hint).
const PENDING_BEAT: Duration = Duration::from_secs(5);
/// The wait hint of a pending start: a few beats, so a slow start (a firewall listing its
/// rules) is never taken for a hung one.
const PENDING_WAIT_HINT: Duration = Duration::from_secs(30);

/// Reports `START_PENDING` with an advancing checkpoint, from a thread of its own, until
/// [`PendingStart::end`].
struct PendingStart {
    beat: Mutex<Option<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)>>,
}

impl PendingStart {
    fn begin(handle: ServiceStatusHandle) -> Result<Self, ServiceError> {
        handle
            .set_service_status(status(
                ServiceState::StartPending,
                1,
                ServiceExitCode::NO_ERROR,
            ))
            .map_err(scm("reporting the service as starting"))?;
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let mut checkpoint = 1;
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                rx.recv_timeout(PENDING_BEAT)
            {
                checkpoint += 1;
                let _ = handle.set_service_status(status(
                    ServiceState::StartPending,
                    checkpoint,
                    ServiceExitCode::NO_ERROR,
                ));
            }
        });
        Ok(Self {
            beat: Mutex::new(Some((tx, thread))),
        })
    }

    /// Stops the pending reports and waits until the last one is out, so that the next
    /// report (`RUNNING` or `STOPPED`) is the last the SCM gets. Later calls do nothing.
    fn end(&self) {
        if let Some((tx, thread)) = self.beat.lock().ok().and_then(|mut b| b.take()) {
            drop(tx);
            let _ = thread.join();
        }
    }
}

fn serve() -> Result<(), ServiceError> {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stop_tx = Mutex::new(Some(stop_tx));
    let handle = service_control_handler::register(SERVICE_NAME, move |control| match control {
        ServiceControl::Stop | ServiceControl::Shutdown => {
            if let Some(tx) = stop_tx.lock().ok().and_then(|mut t| t.take()) {
                let _ = tx.send(());
            }
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    })
    .map_err(scm("registering the service's control handler"))?;
    // START_PENDING until the daemon has read its config and set everything up: the point
    // where, on Linux, it tells systemd READY=1.
    let pending = std::sync::Arc::new(PendingStart::begin(handle)?);
    let on_ready = std::sync::Arc::clone(&pending);
    let config = CONFIG
        .lock()
        .ok()
        .and_then(|c| c.clone())
        .unwrap_or_else(config::default_config_path);
    let args = super::cli::ServerArgs {
        config,
        ifaces: Vec::new(),
        capture: None,
        firewall: None,
    };
    let result = super::cli::server_until(
        &args,
        async move {
            let _ = stop_rx.await;
            let _ = handle.set_service_status(status(
                ServiceState::StopPending,
                1,
                ServiceExitCode::NO_ERROR,
            ));
        },
        move || {
            // Before the daemon serves anything: once its pipe answers, the SCM says RUNNING.
            on_ready.end();
            if let Err(err) = handle.set_service_status(status(
                ServiceState::Running,
                0,
                ServiceExitCode::NO_ERROR,
            )) {
                tracing::warn!(error = %err, "cannot report the service as running");
            }
        },
    );
    // A start that failed: no pending report may follow STOPPED.
    pending.end();
    if let Err(err) = &result {
        tracing::error!(
            error = %crate::error_chain::ErrorChain(err),
            exit_code = err.exit_code(),
            "the daemon stopped; the service reports it as stopped with this service-specific exit code"
        );
    }
    handle
        .set_service_status(status(ServiceState::Stopped, 0, exit_code(&result)))
        .map_err(scm("reporting the service as stopped"))
}

/// Sends the log to `capyknock.log` in `dir`, rotating a large one first. Without a usable file
/// the lines go to stderr, which a service does not have: the failure is then visible only as
/// the service's exit.
fn init_file_log(dir: &Path) {
    let path = dir.join("capyknock.log");
    if std::fs::metadata(&path).is_ok_and(|m| m.len() > ROTATE_AT) {
        let _ = std::fs::rename(&path, dir.join("capyknock.log.1"));
    }
    let _ = std::fs::create_dir_all(dir);
    match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        Ok(file) => crate::tracing_setup::init_with_writer(Mutex::new(file)),
        Err(_) => crate::tracing_setup::init(),
    }
}
