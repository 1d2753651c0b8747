//! The exec backend: runs admin-configured programs (pf, firewalld, ipset, ufw, ...) from argv
//! templates, never through a shell.
//!
//! A template is a list of arguments; placeholders (`{addr}`, `{family}`, `{ipver}`, `{proto}`,
//! `{port}`, `{timeout}`) are substituted inside each argument, once, so whatever a value
//! contains ends up inside that one argument and is never re-read as a placeholder, split,
//! globbed or interpreted. The program (first element) cannot contain placeholders. Values
//! containing NUL, or starting with `-` (which a program could read as an option), are refused.
//! Each command runs with a timeout, an empty environment apart from a fixed `PATH`, and stdin
//! closed; a non-zero exit is an error that carries the program's stderr.

use std::{
    ffi::OsString,
    fmt,
    io::Read,
    net::IpAddr,
    process::{Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant, SystemTime},
};

use serde::{Deserialize, Serialize};

use super::{
    Backend, Error,
    config::ExecConfig,
    model::{Ban, GrantKey, Ledger, PortGrant, ceil_secs},
};

/// Most bytes of a command's stdout/stderr kept for logs; the rest is read and discarded.
const OUTPUT_LIMIT: usize = 4096;

/// How long to wait for a command's output after it exited.
const OUTPUT_GRACE: Duration = Duration::from_millis(500);

/// `PATH` the commands run with (templates should name programs by absolute path anyway).
#[cfg(unix)]
const SAFE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A placeholder name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    /// `{addr}`: the address, `192.0.2.1` or `2001:db8::1` (never a scope id or prefix).
    Addr,
    /// `{family}`: `ipv4` or `ipv6` (firewalld's and nft's spelling).
    Family,
    /// `{ipver}`: `4` or `6` (for names like `capyknock4`, or `iptables`/`ip6tables`).
    IpVer,
    /// `{proto}`: `tcp` or `udp`.
    Proto,
    /// `{port}`: the port number.
    Port,
    /// `{timeout}`: seconds left, rounded up, at least 1; `0` for a ban with no end and in
    /// `close`/`unban`.
    Timeout,
}

impl Var {
    const ALL: [(&'static str, Var); 6] = [
        ("addr", Var::Addr),
        ("family", Var::Family),
        ("ipver", Var::IpVer),
        ("proto", Var::Proto),
        ("port", Var::Port),
        ("timeout", Var::Timeout),
    ];

    fn parse(name: &str) -> Option<Var> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Lit(String),
    Var(Var),
}

/// A parsed argv template. Deserialized from a list of strings, checked at config load.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct Template {
    source: Vec<String>,
    program: String,
    args: Vec<Vec<Piece>>,
}

impl Template {
    /// The placeholders the template uses.
    pub fn vars(&self) -> impl Iterator<Item = Var> + '_ {
        self.args.iter().flatten().filter_map(|p| match p {
            Piece::Var(v) => Some(*v),
            Piece::Lit(_) => None,
        })
    }
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.source).finish()
    }
}

/// Why a template or a substitution was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// Empty list or empty program.
    #[error("an exec template needs a program: write [\"/path/to/program\", \"arg\", ...]")]
    NoProgram,
    /// Placeholder in the program name.
    #[error("the program {0:?} cannot contain placeholders: name a fixed program")]
    VarInProgram(String),
    /// Unknown placeholder.
    #[error(
        "unknown placeholder {{{name}}} in {arg:?}: use {{addr}}, {{family}}, {{ipver}}, {{proto}}, {{port}} or {{timeout}} (write {{{{ and }}}} for literal braces)"
    )]
    UnknownVar {
        /// The name between the braces.
        name: String,
        /// The argument.
        arg: String,
    },
    /// Unbalanced brace.
    #[error("unbalanced brace in {0:?} (write {{{{ and }}}} for literal braces)")]
    Brace(String),
    /// NUL byte in the template.
    #[error("NUL byte in exec template argument {0:?}")]
    Nul(String),
    /// A value that cannot be passed safely.
    #[error("refusing value {value:?} for {{{var}}}: {why}")]
    BadValue {
        /// Placeholder name.
        var: &'static str,
        /// The value.
        value: String,
        /// Why.
        why: &'static str,
    },
}

impl TryFrom<Vec<String>> for Template {
    type Error = TemplateError;

    fn try_from(source: Vec<String>) -> Result<Self, Self::Error> {
        let mut parts = source.iter();
        let program = parts
            .next()
            .filter(|p| !p.is_empty())
            .ok_or(TemplateError::NoProgram)?;
        if program.contains('\0') {
            return Err(TemplateError::Nul(program.clone()));
        }
        if parse_arg(program)?
            .iter()
            .any(|p| matches!(p, Piece::Var(_)))
        {
            return Err(TemplateError::VarInProgram(program.clone()));
        }
        let args = parts.map(|a| parse_arg(a)).collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            program: program.clone(),
            source,
            args,
        })
    }
}

impl From<Template> for Vec<String> {
    fn from(t: Template) -> Self {
        t.source
    }
}

fn parse_arg(arg: &str) -> Result<Vec<Piece>, TemplateError> {
    if arg.contains('\0') {
        return Err(TemplateError::Nul(arg.to_owned()));
    }
    let mut pieces = Vec::new();
    let mut lit = String::new();
    let mut chars = arg.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                lit.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                lit.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some('{') | None => return Err(TemplateError::Brace(arg.to_owned())),
                        Some(c) => name.push(c),
                    }
                }
                let var = Var::parse(&name).ok_or_else(|| TemplateError::UnknownVar {
                    name,
                    arg: arg.to_owned(),
                })?;
                if !lit.is_empty() {
                    pieces.push(Piece::Lit(std::mem::take(&mut lit)));
                }
                pieces.push(Piece::Var(var));
            }
            '}' => return Err(TemplateError::Brace(arg.to_owned())),
            c => lit.push(c),
        }
    }
    if !lit.is_empty() || pieces.is_empty() {
        pieces.push(Piece::Lit(lit));
    }
    Ok(pieces)
}

/// Values for the placeholders. Built from typed values by the backend; tests may put anything
/// here to prove values stay inert.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vars {
    /// `{addr}`.
    pub addr: String,
    /// `{family}`.
    pub family: String,
    /// `{ipver}`.
    pub ipver: String,
    /// `{proto}`.
    pub proto: String,
    /// `{port}`.
    pub port: String,
    /// `{timeout}`.
    pub timeout: String,
}

impl Vars {
    /// Values for an address alone (bans), with `timeout` seconds.
    #[must_use]
    pub fn for_addr(addr: IpAddr, timeout: u64) -> Self {
        let (family, ipver) = match addr {
            IpAddr::V4(_) => ("ipv4", "4"),
            IpAddr::V6(_) => ("ipv6", "6"),
        };
        Self {
            addr: addr.to_string(),
            family: family.to_owned(),
            ipver: ipver.to_owned(),
            proto: String::new(),
            port: String::new(),
            timeout: timeout.to_string(),
        }
    }

    /// Values for a grant, with `timeout` seconds.
    #[must_use]
    pub fn for_grant(key: &GrantKey, timeout: u64) -> Self {
        Self {
            proto: key.protocol.as_str().to_owned(),
            port: key.port.to_string(),
            ..Self::for_addr(key.addr, timeout)
        }
    }

    fn get(&self, var: Var) -> (&'static str, &str) {
        match var {
            Var::Addr => ("addr", &self.addr),
            Var::Family => ("family", &self.family),
            Var::IpVer => ("ipver", &self.ipver),
            Var::Proto => ("proto", &self.proto),
            Var::Port => ("port", &self.port),
            Var::Timeout => ("timeout", &self.timeout),
        }
    }
}

impl Template {
    /// The program and its arguments with placeholders filled in: one output argument per
    /// template argument, whatever the values contain.
    pub fn render(&self, vars: &Vars) -> Result<Vec<OsString>, TemplateError> {
        let mut argv = Vec::with_capacity(self.args.len().saturating_add(1));
        argv.push(OsString::from(&self.program));
        for pieces in &self.args {
            let mut arg = String::new();
            for piece in pieces {
                match piece {
                    Piece::Lit(s) => arg.push_str(s),
                    Piece::Var(var) => {
                        let (name, value) = vars.get(*var);
                        check_value(name, value)?;
                        arg.push_str(value);
                    }
                }
            }
            argv.push(OsString::from(arg));
        }
        Ok(argv)
    }

    /// The program this template runs.
    #[must_use]
    pub fn program(&self) -> &str {
        &self.program
    }
}

fn check_value(var: &'static str, value: &str) -> Result<(), TemplateError> {
    let why = if value.contains('\0') {
        "it contains a NUL byte"
    } else if value.starts_with('-') {
        "it starts with '-' and could be read as an option"
    } else {
        return Ok(());
    };
    Err(TemplateError::BadValue {
        var,
        value: value.to_owned(),
        why,
    })
}

/// What a finished command printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Exit status.
    pub status: ExitStatus,
    /// First [`OUTPUT_LIMIT`] bytes of stdout.
    pub stdout: Vec<u8>,
    /// First [`OUTPUT_LIMIT`] bytes of stderr.
    pub stderr: Vec<u8>,
}

/// Why running a command failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The template could not be filled in.
    #[error("cannot build the command")]
    Template(#[source] TemplateError),
    /// The program could not be started.
    #[error("cannot run {program}")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Waiting for it failed.
    #[error("waiting for {program} failed")]
    Wait {
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// It ran too long and was killed.
    #[error("{program} did not finish within {timeout:?} and was killed")]
    Timeout {
        /// The program.
        program: String,
        /// The limit.
        timeout: Duration,
    },
    /// It exited with an error.
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        /// The program.
        program: String,
        /// Its exit status.
        status: ExitStatus,
        /// Its stderr (trimmed, at most [`OUTPUT_LIMIT`] bytes, lossily decoded).
        stderr: String,
    },
}

/// Runs `argv` without a shell, killing it after `timeout`. Returns its output when it exits
/// with status 0.
pub fn run(argv: &[OsString], timeout: Duration) -> Result<Output, ExecError> {
    let Some((program, rest)) = argv.split_first() else {
        return Err(ExecError::Template(TemplateError::NoProgram));
    };
    let name = program.to_string_lossy().into_owned();
    let mut cmd = Command::new(program);
    cmd.args(rest)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    #[cfg(unix)]
    cmd.env_clear().env("PATH", SAFE_PATH).env("LC_ALL", "C");
    let mut child = cmd.spawn().map_err(|source| ExecError::Spawn {
        program: name.clone(),
        source,
    })?;
    let stdout = child.stdout.take().map(spawn_reader);
    let stderr = child.stderr.take().map(spawn_reader);
    let started = Instant::now();
    let waited = wait_timeout::ChildExt::wait_timeout(&mut child, timeout);
    let status = match waited {
        Ok(Some(status)) => status,
        Ok(None) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ExecError::Timeout {
                program: name,
                timeout,
            });
        }
        Err(source) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ExecError::Wait {
                program: name,
                source,
            });
        }
    };
    // The pipes close when the child exits, unless it left a background process holding them:
    // then we stop waiting for its output after a short grace period.
    let stdout = stdout
        .and_then(|rx| rx.recv_timeout(OUTPUT_GRACE).ok())
        .unwrap_or_default();
    let stderr = stderr
        .and_then(|rx| rx.recv_timeout(OUTPUT_GRACE).ok())
        .unwrap_or_default();
    tracing::trace!(program = %name, elapsed = ?started.elapsed(), %status, "exec finished");
    if !status.success() {
        return Err(ExecError::Failed {
            program: name,
            status,
            stderr: String::from_utf8_lossy(&stderr).trim().to_owned(),
        });
    }
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Reads a pipe to its end on a thread; the receiver gets the first [`OUTPUT_LIMIT`] bytes.
fn spawn_reader(r: impl Read + Send + 'static) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(read_bounded(r));
    });
    rx
}

fn read_bounded(mut r: impl Read) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = OUTPUT_LIMIT.saturating_sub(kept.len());
                kept.extend(buf.iter().take(n.min(room)));
            }
        }
    }
}

/// The exec backend.
#[derive(Debug)]
pub struct ExecBackend {
    config: ExecConfig,
    knock_ports: Vec<u16>,
}

impl ExecBackend {
    /// A backend running the templates in `config`; `knock_drop` is run for each of
    /// `knock_ports` when the rules are (re)stored (pass none when knocks are read from a UDP
    /// socket, which must receive them).
    #[must_use]
    pub fn new(config: ExecConfig, knock_ports: &[u16]) -> Self {
        Self {
            config,
            knock_ports: knock_ports.to_vec(),
        }
    }

    /// Values for the knock port `port`.
    fn knock_vars(port: u16) -> Vars {
        Vars {
            proto: "udp".to_owned(),
            port: port.to_string(),
            ..Vars::default()
        }
    }

    fn run_template(
        &self,
        what: &'static str,
        template: &Template,
        vars: &Vars,
    ) -> Result<(), ExecError> {
        let argv = template.render(vars).map_err(ExecError::Template)?;
        let out = run(&argv, self.config.timeout)?;
        tracing::debug!(
            action = what,
            program = template.program(),
            addr = %vars.addr,
            stdout = %String::from_utf8_lossy(&out.stdout).trim(),
            "firewall command done"
        );
        Ok(())
    }

    /// Runs `template` for every item, logging each failure, and returns the first error.
    fn run_all<'a>(
        &self,
        what: &'static str,
        template: &Template,
        items: impl Iterator<Item = Vars> + 'a,
    ) -> Result<(), Error> {
        let mut first = None;
        let mut failed = 0usize;
        for vars in items {
            if let Err(err) = self.run_template(what, template, &vars) {
                tracing::warn!(
                    action = what,
                    addr = %vars.addr,
                    proto = %vars.proto,
                    port = %vars.port,
                    error = %crate::firewall::ErrorChain(&err),
                    "firewall command failed"
                );
                failed = failed.saturating_add(1);
                first.get_or_insert(err);
            }
        }
        match first {
            None => Ok(()),
            Some(source) => Err(Error::Exec {
                action: what,
                failed,
                source,
            }),
        }
    }
}

impl Backend for ExecBackend {
    fn name(&self) -> &'static str {
        "exec"
    }

    fn expires_by_itself(&self) -> bool {
        false
    }

    fn persistent_ledger(&self) -> bool {
        true
    }

    fn add_grants(&mut self, grants: &[PortGrant], now: SystemTime) -> Result<(), Error> {
        let items = grants.iter().filter_map(|g| {
            g.remaining(now)
                .map(|left| Vars::for_grant(&g.key(), ceil_secs(left).max(1)))
        });
        self.run_all("open", &self.config.open, items)
    }

    fn remove_grants(&mut self, keys: &[GrantKey]) -> Result<(), Error> {
        let items = keys.iter().map(|k| Vars::for_grant(k, 0));
        self.run_all("close", &self.config.close, items)
    }

    fn add_ban(&mut self, ban: &Ban, now: SystemTime) -> Result<bool, Error> {
        let Some(template) = &self.config.ban else {
            return Ok(false);
        };
        let timeout = match ban.remaining(now) {
            None => return Ok(true),
            Some(None) => 0,
            Some(Some(left)) => ceil_secs(left).max(1),
        };
        self.run_all(
            "ban",
            template,
            std::iter::once(Vars::for_addr(ban.addr, timeout)),
        )?;
        Ok(true)
    }

    fn remove_ban(&mut self, addr: IpAddr) -> Result<(), Error> {
        match &self.config.unban {
            Some(template) => {
                self.run_all("unban", template, std::iter::once(Vars::for_addr(addr, 0)))
            }
            None => Ok(()),
        }
    }

    fn restore(&mut self, ledger: &Ledger, now: SystemTime) -> Result<(), Error> {
        let dropped = match &self.config.knock_drop {
            Some(t) => self.run_all(
                "knock_drop",
                t,
                self.knock_ports.iter().map(|&p| Self::knock_vars(p)),
            ),
            None => Ok(()),
        };
        let grants: Vec<PortGrant> = ledger.grants().collect();
        let granted = self.add_grants(&grants, now);
        let mut banned = Ok(());
        for ban in ledger.bans() {
            if let Err(e) = self.add_ban(&ban, now) {
                banned = Err(e);
            }
        }
        dropped.and(granted).and(banned)
    }

    fn remove_all(&mut self, ledger: &Ledger) -> Result<(), Error> {
        let keys: Vec<GrantKey> = ledger.grants().map(|g| g.key()).collect();
        let closed = self.remove_grants(&keys);
        let mut unbanned = Ok(());
        for ban in ledger.bans() {
            if let Err(e) = self.remove_ban(ban.addr) {
                unbanned = Err(e);
            }
        }
        let undropped = match &self.config.knock_undrop {
            Some(t) => self.run_all(
                "knock_undrop",
                t,
                self.knock_ports.iter().map(|&p| Self::knock_vars(p)),
            ),
            None => Ok(()),
        };
        closed.and(unbanned).and(undropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tpl(args: &[&str]) -> Result<Template, TemplateError> {
        Template::try_from(args.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
    }

    fn vars(addr: &str) -> Vars {
        Vars {
            addr: addr.to_owned(),
            family: "ipv4".into(),
            ipver: "4".into(),
            proto: "tcp".into(),
            port: "22".into(),
            timeout: "30".into(),
        }
    }

    #[test]
    fn substitutes_per_argument() {
        let t = tpl(&[
            "/usr/sbin/ipset",
            "add",
            "ck{ipver}",
            "{addr},{proto}:{port}",
            "timeout",
            "{timeout}",
            "{{lit}}",
        ])
        .unwrap();
        let argv = t.render(&vars("192.0.2.1")).unwrap();
        assert_eq!(
            argv,
            [
                "/usr/sbin/ipset",
                "add",
                "ck4",
                "192.0.2.1,tcp:22",
                "timeout",
                "30",
                "{lit}"
            ]
            .map(OsString::from)
        );
    }

    /// Regression (hardening review): with the exec backend nothing dropped the knock port.
    /// `knock_drop` runs for every knock port whenever the rules are stored, and
    /// `knock_undrop` when they are removed.
    #[cfg(unix)]
    #[test]
    fn knock_drop_runs_for_every_knock_port() {
        let dir = tempfile::tempdir().unwrap();
        let mark = |name: &str| dir.path().join(name).display().to_string();
        let config = ExecConfig {
            open: tpl(&["/bin/true"]).unwrap(),
            close: tpl(&["/bin/true"]).unwrap(),
            ban: None,
            unban: None,
            knock_drop: Some(tpl(&["/usr/bin/touch", &mark("drop-{proto}-{port}")]).unwrap()),
            knock_undrop: Some(tpl(&["/bin/rm", &mark("drop-{proto}-{port}")]).unwrap()),
            knock_drop_in_ruleset: false,
            timeout: Duration::from_secs(5),
        };
        config.validate().unwrap();
        let mut backend = ExecBackend::new(config, &[62201, 4000]);
        backend.restore(&Ledger::new(), SystemTime::now()).unwrap();
        assert!(dir.path().join("drop-udp-62201").exists());
        assert!(dir.path().join("drop-udp-4000").exists());
        backend.remove_all(&Ledger::new()).unwrap();
        assert!(!dir.path().join("drop-udp-62201").exists());
        // udp capture: the knock port must stay open to the daemon's socket, nothing runs.
        let mut udp_mode = ExecBackend::new(backend.config.clone(), &[]);
        udp_mode.restore(&Ledger::new(), SystemTime::now()).unwrap();
        assert!(!dir.path().join("drop-udp-62201").exists());
    }

    #[test]
    fn knock_drop_may_use_only_port_and_proto() {
        let mut config = ExecConfig {
            open: tpl(&["/bin/true"]).unwrap(),
            close: tpl(&["/bin/true"]).unwrap(),
            ban: None,
            unban: None,
            knock_drop: Some(tpl(&["/bin/x", "{addr}:{port}"]).unwrap()),
            knock_undrop: None,
            knock_drop_in_ruleset: false,
            timeout: Duration::from_secs(5),
        };
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("knock_drop")
        );
        config.knock_drop = None;
        config.knock_undrop = Some(tpl(&["/bin/x", "{port}"]).unwrap());
        assert!(config.validate().is_err());
    }

    #[test]
    fn empty_argument_is_kept() {
        let t = tpl(&["/bin/x", "", "{port}"]).unwrap();
        assert_eq!(
            t.render(&vars("a")).unwrap(),
            ["/bin/x", "", "22"].map(OsString::from)
        );
    }

    #[test]
    fn rejects_bad_templates() {
        assert_eq!(tpl(&[]), Err(TemplateError::NoProgram));
        assert_eq!(tpl(&[""]), Err(TemplateError::NoProgram));
        assert!(matches!(
            tpl(&["{addr}"]),
            Err(TemplateError::VarInProgram(_))
        ));
        assert!(matches!(
            tpl(&["/bin/{proto}"]),
            Err(TemplateError::VarInProgram(_))
        ));
        assert!(matches!(
            tpl(&["x", "{adr}"]),
            Err(TemplateError::UnknownVar { .. })
        ));
        assert!(matches!(
            tpl(&["x", "{ADDR}"]),
            Err(TemplateError::UnknownVar { .. })
        ));
        for bad in ["{addr", "addr}", "{{addr}", "{a{ddr}"] {
            assert!(
                matches!(tpl(&["x", bad]), Err(TemplateError::Brace(_))),
                "{bad}"
            );
        }
        assert!(matches!(tpl(&["x", "a\0b"]), Err(TemplateError::Nul(_))));
        assert!(matches!(tpl(&["x\0"]), Err(TemplateError::Nul(_))));
    }

    /// Values that would be dangerous in a shell string: each must come out as part of exactly
    /// one argument, byte for byte, and never be expanded again.
    const HOSTILE: &[&str] = &[
        "1.2.3.4; rm -rf /",
        "a b  c",
        "\"quoted\" 'single'",
        "line1\nline2\r\n",
        "fe80::1%eth0",
        "$(reboot)`id`${HOME}",
        "* ? [a-z] ~",
        "{port}{{addr}}",
        "|&><\\",
        "\u{202e}ünïcødé",
    ];

    #[test]
    fn hostile_values_stay_inside_their_argument() {
        let t = tpl(&["/bin/x", "{addr}", "pre-{addr}-post", "{port}"]).unwrap();
        for value in HOSTILE {
            let argv = t.render(&vars(value)).unwrap();
            assert_eq!(argv.len(), 4);
            assert_eq!(argv[1], OsString::from(*value));
            assert_eq!(argv[2], OsString::from(format!("pre-{value}-post")));
            assert_eq!(argv[3], OsString::from("22"));
        }
    }

    #[test]
    fn nul_and_option_like_values_are_refused() {
        let t = tpl(&["/bin/x", "{addr}"]).unwrap();
        for bad in ["a\0b", "-rf", "--help"] {
            assert!(
                matches!(
                    t.render(&vars(bad)),
                    Err(TemplateError::BadValue { var: "addr", .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn typed_values_are_plain() {
        let key = GrantKey {
            addr: "fe80::1".parse().unwrap(),
            protocol: crate::ports::Protocol::Udp,
            port: 51820,
        };
        let v = Vars::for_grant(&key, 61);
        assert_eq!(
            (
                v.addr.as_str(),
                v.family.as_str(),
                v.ipver.as_str(),
                v.proto.as_str(),
                v.port.as_str(),
                v.timeout.as_str()
            ),
            ("fe80::1", "ipv6", "6", "udp", "51820", "61")
        );
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(args in proptest::collection::vec(".{0,12}", 0..5)) {
            let _ = Template::try_from(args);
        }

        #[test]
        fn any_value_is_one_argument(value in "[^\0-][^\0]{0,40}") {
            let t = tpl(&["/bin/x", "<{addr}>", "{timeout}"]).unwrap();
            let argv = t.render(&vars(&value)).unwrap();
            proptest::prop_assert_eq!(argv.len(), 3);
            proptest::prop_assert_eq!(&argv[1], &OsString::from(format!("<{value}>")));
        }
    }

    /// Runs a real program through argv and reads back the arguments it received.
    #[cfg(unix)]
    #[test]
    fn hostile_values_reach_a_real_program_as_one_argument() {
        // printf prints each argument followed by NUL, so we can split exactly.
        let t = tpl(&["printf", "%s\\0", "{addr}", "x {port} y"]).unwrap();
        for value in HOSTILE {
            let argv = t.render(&vars(value)).unwrap();
            let out = run(&argv, Duration::from_secs(5)).unwrap();
            let got: Vec<&[u8]> = out.stdout.split(|b| *b == 0).collect();
            assert_eq!(
                got,
                vec![value.as_bytes(), b"x 22 y".as_slice(), b"".as_slice()],
                "value {value:?}"
            );
        }
    }

    #[cfg(unix)]
    #[test]
    fn failures_carry_stderr_and_timeouts_kill() {
        let argv = ["sh", "-c", "echo boom >&2; exit 3"].map(OsString::from);
        match run(&argv, Duration::from_secs(5)) {
            Err(ExecError::Failed { stderr, status, .. }) => {
                assert_eq!(stderr, "boom");
                assert_eq!(status.code(), Some(3));
            }
            other => panic!("expected failure, got {other:?}"),
        }
        let started = Instant::now();
        let argv = ["sleep", "10"].map(OsString::from);
        assert!(matches!(
            run(&argv, Duration::from_millis(200)),
            Err(ExecError::Timeout { .. })
        ));
        assert!(started.elapsed() < Duration::from_secs(5));
        let argv = ["/nonexistent/program"].map(OsString::from);
        assert!(matches!(
            run(&argv, Duration::from_secs(1)),
            Err(ExecError::Spawn { .. })
        ));
        // The environment is cleared apart from PATH.
        let argv = ["sh", "-c", "echo \"$HOME|$PATH\""].map(OsString::from);
        let out = run(&argv, Duration::from_secs(5)).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("|{SAFE_PATH}")
        );
    }

    #[cfg(unix)]
    #[test]
    fn output_is_bounded() {
        let argv = ["sh", "-c", "head -c 100000 /dev/zero"].map(OsString::from);
        let out = run(&argv, Duration::from_secs(5)).unwrap();
        assert_eq!(out.stdout.len(), OUTPUT_LIMIT);
    }
}
