//! Running the Windows build of capyknock under Wine inside a network namespace.
//!
//! ```text
//!   [ns] wineserver -f (creates every socket of its clients, so it must live in the namespace)
//!        wine64 capyknock.exe ...            private WINEPREFIX per test, in its temp dir,
//!                                            with the ProcessPrng shim as bcryptprimitives.dll
//! ```
//!
//! Wine 8 (Debian's wine64) lacks `bcryptprimitives.dll`, from which Rust's std takes its random
//! numbers; [`shim_dll`] builds a stand-in (`tests/wine/processprng_shim.c`) with mingw once per
//! test run, and [`Wine::new`] copies it into the test's prefix only. The `.exe` is the debug
//! build for `x86_64-pc-windows-gnu` (`cargo xtask test` builds it once before the tests).
//! Everything is stopped on drop (`wineserver -k`, then the server process), even when the test
//! panics. docs/WINDOWS.md has the manual steps.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use capyknock_testkit::{netns::NetNs, process};

/// Wine's 64-bit loader (Debian's wine64 does not put it on PATH).
pub const WINE64: &str = "/usr/lib/wine/wine64";
/// The wineserver of that Wine.
pub const WINESERVER: &str = "/usr/lib/wine/wineserver";
/// The Rust target of the Windows build.
pub const WINDOWS_TARGET: &str = "x86_64-pc-windows-gnu";

/// The Windows build of capyknock: `$CAPYKNOCK_EXE`, else the debug build for
/// [`WINDOWS_TARGET`] in this workspace. Panics (never skips) when it or Wine is missing.
#[must_use]
pub fn windows_exe() -> PathBuf {
    assert!(
        Path::new(WINE64).exists(),
        "{WINE64} missing: install Wine (`apt-get install wine64 gcc-mingw-w64-x86-64`, or \
         `cargo xtask setup --for-tests`)"
    );
    if let Some(path) = std::env::var_os("CAPYKNOCK_EXE") {
        return PathBuf::from(path);
    }
    let exe = capyknock_testkit::files::target_dir()
        .join(WINDOWS_TARGET)
        .join("debug/capyknock.exe");
    assert!(
        exe.exists(),
        "{} missing: run `cargo build -p capyknock --target {WINDOWS_TARGET}` (cargo xtask test does)",
        exe.display()
    );
    exe
}

/// The `ProcessPrng` shim DLL, built with mingw on first use (shared by the tests of one run).
#[must_use]
pub fn shim_dll() -> PathBuf {
    static DLL: OnceLock<PathBuf> = OnceLock::new();
    DLL.get_or_init(|| {
        let src = capyknock_testkit::files::workspace_root().join("tests/wine");
        let out_dir = capyknock_testkit::files::target_dir().join("wine-shim");
        std::fs::create_dir_all(&out_dir).unwrap_or_else(|e| panic!("{}: {e}", out_dir.display()));
        // Per process, so two test binaries building at once do not write the same file.
        let dll = out_dir.join(format!("bcryptprimitives-{}.dll", std::process::id()));
        process::run(
            Command::new("x86_64-w64-mingw32-gcc")
                .args(["-shared", "-O2", "-o"])
                .arg(&dll)
                .arg(src.join("processprng_shim.c"))
                .arg(src.join("processprng_shim.def"))
                .arg("-ladvapi32"),
        )
        .unwrap_or_else(|e| {
            panic!("building the ProcessPrng shim (apt-get install gcc-mingw-w64-x86-64): {e}")
        });
        dll
    })
    .clone()
}

/// A Unix path as the Windows program sees it (Wine maps `/` to drive `Z:`).
#[must_use]
pub fn win_path(path: &Path) -> String {
    format!("Z:{}", path.display()).replace('/', "\\")
}

/// A Wine prefix with its wineserver running in one network namespace.
#[derive(Debug)]
pub struct Wine {
    prefix: PathBuf,
    ns: String,
    server: Option<Child>,
}

impl Wine {
    /// Creates the prefix `dir/wine` (a few seconds), with wineserver running in `ns`, and
    /// installs the `ProcessPrng` shim in it.
    #[must_use]
    pub fn new(ns: &NetNs, dir: &Path) -> Self {
        let prefix = dir.join("wine");
        std::fs::create_dir_all(&prefix).unwrap_or_else(|e| panic!("{}: {e}", prefix.display()));
        let server = spawn_server(ns, &prefix);
        let mut wine = Self {
            prefix,
            ns: ns.name().to_owned(),
            server: Some(server),
        };
        let started = Instant::now();
        let out = wine.run(
            ns,
            Path::new("wineboot"),
            &["--init"],
            Duration::from_mins(2),
        );
        assert!(
            out.status.success(),
            "wineboot --init: {}",
            process::output_text(&out)
        );
        let system32 = wine.prefix.join("drive_c/windows/system32");
        assert!(system32.is_dir(), "wineboot made no {}", system32.display());
        std::fs::copy(shim_dll(), system32.join("bcryptprimitives.dll"))
            .unwrap_or_else(|e| panic!("installing the shim: {e}"));
        eprintln!(
            "wine prefix {} ready in {:.1} s (wineserver in {})",
            wine.prefix.display(),
            started.elapsed().as_secs_f64(),
            wine.ns
        );
        wine.server_alive();
        wine
    }

    /// Panics if the wineserver has exited.
    fn server_alive(&mut self) {
        if let Some(server) = &mut self.server
            && let Ok(Some(status)) = server.try_wait()
        {
            panic!("wineserver exited: {status}");
        }
    }

    /// `wine64 program` in `ns` under this prefix (`program`: a Windows path or a builtin
    /// such as `wineboot`). The namespace must be the wineserver's.
    #[must_use]
    pub fn command(&self, ns: &NetNs, program: &Path) -> Command {
        assert_eq!(
            ns.name(),
            self.ns,
            "Wine programs must run in their wineserver's namespace"
        );
        let mut cmd = ns.command(WINE64);
        cmd.arg(program)
            .env("WINEPREFIX", &self.prefix)
            .env("WINEDEBUG", "-all")
            // No Mono/Gecko install prompts: capyknock needs neither.
            .env("WINEDLLOVERRIDES", "mscoree=;mshtml=");
        cmd
    }

    /// Runs `wine64 program args` in `ns` and returns its output. stdout and stderr go through
    /// files, never pipes: Wine's own services (services.exe, winedevice.exe, ...), started by
    /// the first program, inherit them and would hold a pipe open long after the program ended.
    /// Killed after `within`.
    pub fn run(
        &self,
        ns: &NetNs,
        program: &Path,
        args: &[&str],
        within: Duration,
    ) -> std::process::Output {
        static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (out_path, err_path) = (
            self.prefix.with_extension(format!("out.{n}")),
            self.prefix.with_extension(format!("err.{n}")),
        );
        let file =
            |p: &Path| std::fs::File::create(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let mut child = self
            .command(ns, program)
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file(&out_path))
            .stderr(file(&err_path))
            .spawn()
            .unwrap_or_else(|e| panic!("{WINE64} {}: {e}", program.display()));
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap_or_else(|e| panic!("wait: {e}")) {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} {args:?} did not end within {within:?}; output so far:\n{}{}",
                    program.display(),
                    std::fs::read_to_string(&out_path).unwrap_or_default(),
                    std::fs::read_to_string(&err_path).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        std::process::Output {
            status,
            stdout: std::fs::read(&out_path).unwrap_or_default(),
            stderr: std::fs::read(&err_path).unwrap_or_default(),
        }
    }

    /// The prefix.
    #[must_use]
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// A reboot of this Wine "machine": every Wine process is stopped and the wineserver
    /// started again in `ns`. The next program starts Wine's services.exe afresh, which starts
    /// the services installed for automatic start.
    pub fn reboot(&mut self, ns: &NetNs) {
        assert_eq!(ns.name(), self.ns, "reboot in the wineserver's namespace");
        self.kill_all();
        self.server = Some(spawn_server(ns, &self.prefix));
    }

    /// Stops every Wine process of this prefix (`wineserver -k`) and waits for the server.
    pub fn kill_all(&mut self) {
        let _ = Command::new(WINESERVER)
            .arg("-k")
            .env("WINEPREFIX", &self.prefix)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(mut server) = self.server.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match server.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = server.kill();
                        let _ = server.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
    }
}

/// `wineserver` for `prefix` in `ns`: foreground (a child the guard can wait for), persistent
/// (it must not exit between two Wine programs of the test); `wineserver -k` ends it.
fn spawn_server(ns: &NetNs, prefix: &Path) -> Child {
    ns.command(WINESERVER)
        .args(["-f", "-p"])
        .env("WINEPREFIX", prefix)
        .env("WINEDEBUG", "-all")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {WINESERVER}: {e}"))
}

impl Drop for Wine {
    fn drop(&mut self) {
        self.kill_all();
    }
}
