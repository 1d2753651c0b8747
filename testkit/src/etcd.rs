//! A throwaway etcd cluster for fleet labs: one to five members (Debian's `etcd-server`) in a
//! namespace of their own, each member its own process, ports and data directory, which the
//! lab can kill and start again; capyknock nodes reach them over veths ([`EtcdCluster::attach`]).
//!
//! ```text
//!   [etcd ns]  member i: client 0.0.0.0:(2379 + 10 i), peer 127.0.0.1:(2380 + 10 i)
//!     cka* 10.77.S.1  <---->  ckb* 10.77.S.2 [node ns]   (one link per node)
//!          http://10.77.S.1:2379, :2389, ... are that node's endpoints
//! ```
//!
//! With [`ClientTls`] ([`EtcdCluster::create`], [`EtcdCluster::serve_tls`], then
//! [`EtcdCluster::start_all`]) the members serve clients over https only and require a client
//! certificate signed by the given CA (`--client-cert-auth`); the URLs above are then `https://`,
//! and etcdctl presents the given client certificate. Peer traffic stays plain http on loopback.
//!
//! The members are killed (SIGKILL) and reaped on drop, then the namespace and the data go, on
//! panic too.
//!
//! The data directories live on tmpfs (`/dev/shm`) where there is one: etcd fsyncs its log on
//! every write, and on a busy disk (a CI machine right after a build) an fsync can outlast the
//! election timeout, so the members of a new cluster never settle on a leader. A killed member
//! loses nothing on tmpfs (only a machine crash would), which is all these labs do to it.

use std::{
    fmt::Write as _,
    fs::File,
    net::IpAddr,
    path::PathBuf,
    process::{Child, Stdio},
    time::Duration,
};

use crate::{
    Error, Result,
    files::TempDir,
    netns::{Link, NetNs, connect},
    wait::wait_until,
};

/// The first member's client port; member `i` uses `CLIENT_PORT + 10 i` (peer: one more).
pub const CLIENT_PORT: u16 = 2379;

/// One member.
#[derive(Debug)]
struct Member {
    name: String,
    child: Option<Child>,
}

/// Client TLS for the members, from PEM files the caller made (peers stay on plain http).
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// The CA trusted for client certificates (`--trusted-ca-file`), which also signed
    /// `server_cert` (etcdctl checks the members against it).
    pub ca: PathBuf,
    /// The members' certificate (`--cert-file`): its names must include 127.0.0.1 (etcdctl)
    /// and the members' side of every link nodes reach them by.
    pub server_cert: PathBuf,
    /// Its key (`--key-file`).
    pub server_key: PathBuf,
    /// The client certificate etcdctl presents (health checks, [`EtcdCluster::keys`]).
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
}

/// An etcd cluster in its own namespace. See the module docs.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Member>,
    initial_cluster: String,
    /// `USER:PASSWORD` for etcdctl once authentication is on.
    user: Option<String>,
    /// Clients over https with client certificates, when set.
    tls: Option<ClientTls>,
    /// The members' namespace.
    pub ns: NetNs,
    /// Data directories and logs.
    pub dir: TempDir,
}

impl EtcdCluster {
    /// Starts `size` members in a new namespace `ck-<tag>-…` and waits until the cluster
    /// answers (a linearizable read through every member).
    pub fn start(tag: &str, size: usize) -> Result<Self> {
        let mut cluster = Self::create(tag, size)?;
        cluster.start_all()?;
        Ok(cluster)
    }

    /// The namespace and the data directory of `size` members, none started yet: nodes can
    /// be attached first (their links' addresses go into a server certificate), then
    /// [`Self::start_all`].
    pub fn create(tag: &str, size: usize) -> Result<Self> {
        let ns = NetNs::unique(tag)?;
        let dir = TempDir::create(data_root().join(ns.name()), 0o700)?;
        let initial_cluster = (0..size)
            .map(|i| format!("m{i}=http://127.0.0.1:{}", peer_port(i)))
            .collect::<Vec<_>>()
            .join(",");
        Ok(Self {
            members: (0..size)
                .map(|i| Member {
                    name: format!("m{i}"),
                    child: None,
                })
                .collect(),
            initial_cluster,
            user: None,
            tls: None,
            ns,
            dir,
        })
    }

    /// Serves clients over https only, with client-certificate authentication, from the next
    /// start of each member on; the URLs ([`Self::endpoints`], [`Self::local_endpoint`]) are
    /// `https://` from now on. See the module docs.
    pub fn serve_tls(&mut self, tls: ClientTls) {
        self.tls = Some(tls);
    }

    /// Starts every member and waits until the cluster answers (a linearizable read through
    /// every member).
    pub fn start_all(&mut self) -> Result<()> {
        for i in 0..self.members.len() {
            self.start_member(i)?;
        }
        self.wait_healthy(Duration::from_secs(30))
    }

    /// How many members the cluster has (running or not).
    #[must_use]
    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// Starts member `i` (again: a restarted member keeps its data directory).
    pub fn start_member(&mut self, i: usize) -> Result<()> {
        let member = self
            .members
            .get(i)
            .ok_or_else(|| Error::Other(format!("no etcd member {i}")))?;
        if member.child.is_some() {
            return Err(Error::Other(format!("etcd member {i} is running")));
        }
        let name = member.name.clone();
        let log = self.dir.file(&format!("{name}.log"));
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| Error::io(format!("open {}", log.display()), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| Error::io("duplicate a file handle", e))?;
        let data = self.dir.file(&name);
        let client = format!("{}://0.0.0.0:{}", self.scheme(), client_port(i));
        let advertise = self.local_endpoint(i);
        let peer = format!("http://127.0.0.1:{}", peer_port(i));
        let mut cmd = self.ns.command("etcd");
        cmd.arg("--name")
            .arg(&name)
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &advertise])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", self.ns.name()])
            // Short timeouts: a test notices a lost member or quorum within seconds, with room
            // for a loaded machine's scheduling delays.
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"]);
        if let Some(tls) = &self.tls {
            // etcd 3.4 already requires a client certificate when --trusted-ca-file is set;
            // --client-cert-auth says so.
            cmd.arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
        let child = cmd.spawn().map_err(|e| Error::Spawn {
            command: crate::process::describe(&cmd),
            source: e,
        })?;
        if let Some(m) = self.members.get_mut(i) {
            m.child = Some(child);
        }
        Ok(())
    }

    /// Kills member `i` (SIGKILL: a crash, or a machine gone) and reaps it.
    pub fn kill_member(&mut self, i: usize) -> Result<()> {
        let child = self
            .members
            .get_mut(i)
            .and_then(|m| m.child.take())
            .ok_or_else(|| Error::Other(format!("etcd member {i} is not running")))?;
        reap(child);
        Ok(())
    }

    /// Waits until a linearizable read succeeds through every running member.
    pub fn wait_healthy(&self, within: Duration) -> Result<()> {
        let endpoints: Vec<String> = self
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.child.is_some())
            .map(|(i, _)| self.local_endpoint(i))
            .collect();
        // A linearizable read needs a quorum.
        let ok = wait_until(within, Duration::from_millis(200), || {
            Ok(endpoints.iter().all(|e| {
                self.etcdctl(e, &["get", "--consistency=l", "/health-probe"])
                    .is_ok_and(|o| o.status.success())
            }))
        })?;
        if ok {
            Ok(())
        } else {
            Err(Error::Timeout(format!(
                "etcd did not become healthy within {within:?}; logs in {}{}",
                self.dir.path.display(),
                self.diagnosis()
            )))
        }
    }

    /// Each member's state and the end of its log, for a failure message (the data directory
    /// is gone by the time anyone could read it).
    fn diagnosis(&self) -> String {
        let mut out = String::new();
        for m in &self.members {
            let state = match &m.child {
                None => "not started".to_owned(),
                Some(child) if crate::netns::is_alive(&child.id().to_string()) => {
                    "running".to_owned()
                }
                Some(_) => "exited".to_owned(),
            };
            let _ = write!(out, "\n--- member {} ({state}), end of its log:", m.name);
            let log = std::fs::read_to_string(self.dir.file(&format!("{}.log", m.name)))
                .unwrap_or_else(|e| format!("(cannot read: {e})"));
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines.len().saturating_sub(LOG_TAIL_LINES);
            for line in lines.iter().skip(tail) {
                let _ = write!(out, "\n  {line}");
            }
        }
        out
    }

    /// Makes etcdctl log in as `user_password` (`USER:PASSWORD`), once authentication is on.
    pub fn set_user(&mut self, user_password: &str) {
        self.user = Some(user_password.to_owned());
    }

    /// Runs `etcdctl --endpoints ENDPOINT ARGS` in the members' namespace.
    pub fn etcdctl(&self, endpoint: &str, args: &[&str]) -> Result<std::process::Output> {
        let mut cmd = self.ns.command("etcdctl");
        cmd.env("ETCDCTL_API", "3").args([
            "--endpoints",
            endpoint,
            "--dial-timeout=1s",
            "--command-timeout=2s",
        ]);
        if let Some(user) = &self.user {
            cmd.arg(format!("--user={user}"));
        }
        if let Some(tls) = &self.tls {
            cmd.arg("--cacert")
                .arg(&tls.ca)
                .arg("--cert")
                .arg(&tls.client_cert)
                .arg("--key")
                .arg(&tls.client_key);
        }
        cmd.args(args);
        cmd.output().map_err(|e| Error::Spawn {
            command: crate::process::describe(&cmd),
            source: e,
        })
    }

    /// The keys under `prefix`, read through the first running member.
    pub fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        let i = self
            .members
            .iter()
            .position(|m| m.child.is_some())
            .ok_or_else(|| Error::Other("no etcd member is running".into()))?;
        let out = self.etcdctl(
            &self.local_endpoint(i),
            &["get", "--prefix", "--keys-only", prefix],
        )?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// Connects `node` (a capyknock node's namespace) to the members' namespace on subnet
    /// number `subnet`; the link's `a` side is the members'.
    pub fn attach(&self, node: &NetNs, subnet: u8) -> Result<Link> {
        connect(&self.ns, node, subnet)
    }

    /// The client URLs of every member as seen from a node attached by `link`.
    #[must_use]
    pub fn endpoints(&self, link: &Link) -> Vec<String> {
        let addr = link.a(false);
        (0..self.members.len())
            .map(|i| url(self.scheme(), addr, client_port(i)))
            .collect()
    }

    /// Member `i`'s client URL inside the members' namespace (what etcdctl uses).
    #[must_use]
    pub fn local_endpoint(&self, i: usize) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), client_port(i))
    }

    /// `https` with [`ClientTls`], else `http`.
    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(child) = m.child.take() {
                reap(child);
            }
        }
    }
}

fn reap(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// How many log lines of each member a failure message shows.
const LOG_TAIL_LINES: usize = 12;

/// Where the data directories go: tmpfs if the machine has `/dev/shm` (see the module docs).
fn data_root() -> std::path::PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// Member `i`'s client port.
#[must_use]
pub fn client_port(i: usize) -> u16 {
    CLIENT_PORT + 10 * u16::try_from(i).unwrap_or(0)
}

fn peer_port(i: usize) -> u16 {
    client_port(i) + 1
}

fn url(scheme: &str, addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{scheme}://{a}:{port}"),
        IpAddr::V6(a) => format!("{scheme}://[{a}]:{port}"),
    }
}
