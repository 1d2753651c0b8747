//! Harness for the fleet tests: a real etcd cluster ([`EtcdCluster`], members in a namespace of
//! their own) and capyknock nodes, each a [`DaemonLab`] (server and client namespaces, TCP
//! service, the real daemon) whose server namespace is linked to the members' namespace.
//!
//! ```text
//!   [client A] --- [server A: capyknock node-a] ---+
//!                                                  +--- [etcd: m0, m1, m2]
//!   [client B] --- [server B: capyknock node-b] ---+
//! ```
//!
//! Each client has its own address, so "the same packet from another address" is a packet
//! captured on A's link and sent again from B's client. Everything is removed on drop (daemons
//! first, then etcd, then the namespaces), on panic too.
//!
//! [`TestCa`] makes a throwaway private CA and the certificates of a TLS lab (etcd's server
//! certificate, the nodes' client certificates) at test time.

use std::{
    fmt::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU8, Ordering},
};

use capyknock::{
    client::config::{self as client_config, CodeSource},
    protocol::users::{AllowIp, TotpMode, User},
    server::config::render_user,
};
use capyknock_testkit::{
    KNOCK_PORT, config::ServerToml, etcd::EtcdCluster, files::write_private, netns::Link,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::daemon::DaemonLab;

/// The key prefix the test nodes use.
pub const PREFIX: &str = "/capyknock-test/";

static SUBNET: AtomicU8 = AtomicU8::new(200);

/// One capyknock node of a fleet lab.
#[derive(Debug)]
pub struct Node {
    /// The node's name in `[cluster]`.
    pub name: String,
    /// Server, client, service and daemon.
    pub lab: DaemonLab,
    /// server <-> etcd members' namespace (`a`: the members' side).
    pub etcd_link: Link,
    /// The `[cluster]` endpoints this node uses.
    pub endpoints: Vec<String>,
    /// `on_store_failure`.
    pub policy: &'static str,
    /// More `[cluster]` lines (each ending in a newline), e.g. `user`/`password`.
    pub cluster_extra: String,
}

impl Node {
    /// A node named `name` (`tag` names its namespaces) linked to `etcd`.
    #[must_use]
    pub fn new(tag: &str, name: &str, etcd: &EtcdCluster, policy: &'static str) -> Self {
        let lab = DaemonLab::new(tag);
        let etcd_link = etcd
            .attach(&lab.server, SUBNET.fetch_add(1, Ordering::Relaxed))
            .unwrap();
        let endpoints = etcd.endpoints(&etcd_link);
        Self {
            name: name.to_owned(),
            lab,
            etcd_link,
            endpoints,
            policy,
            cluster_extra: String::new(),
        }
    }

    /// Writes the node's config: the lab's `[server]` and `[firewall]`, `[cluster]`, `users`.
    pub fn write_config(&self, users: &[&User]) {
        self.write_config_with(users, &[], None);
    }

    /// Like [`Self::write_config`], with this node in `groups` and every user's `scope` set
    /// to `scope` (e.g. `group:pool`) when given.
    pub fn write_config_with(&self, users: &[&User], groups: &[&str], scope: Option<&str>) {
        let mut text = ServerToml {
            comment: Some(&format!("fleet node {}", self.name)),
            knock_port: KNOCK_PORT,
            interfaces: &[&self.lab.link.a_if],
            state_dir: &self.lab.file("state"),
            control_socket: &self.lab.socket(),
            default_access: None,
            extra: &self.lab.server_extra,
        }
        .render();
        let endpoints: Vec<String> = self.endpoints.iter().map(|e| format!("\"{e}\"")).collect();
        let _ = write!(
            text,
            "\n[cluster]\nendpoints = [{}]\nnode = \"{}\"\nprefix = \"{PREFIX}\"\n\
             on_store_failure = \"{}\"\ntimeout = \"500ms\"\ngroups = [{}]\n",
            endpoints.join(", "),
            self.name,
            self.policy,
            groups
                .iter()
                .map(|g| format!("\"{g}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
        text.push_str(&self.cluster_extra);
        for u in users {
            text.push_str(&render_user(u));
            if let Some(scope) = scope {
                let _ = writeln!(text, "scope = \"{scope}\"");
            }
        }
        self.lab.write_raw_config(&text);
    }

    /// Starts the daemon and waits until it has reached the store.
    pub fn start(&mut self) {
        self.lab.start();
        self.wait_store_reachable();
    }

    /// The file of this node's seal key (users from the store).
    #[must_use]
    pub fn seal_key(&self) -> PathBuf {
        self.lab.file("cluster-seal.key")
    }

    /// Takes users from the store (`users_from_store = true`, `seal_key` = [`Self::seal_key`])
    /// in the next config written.
    pub fn use_store_users(&mut self) {
        let _ = write!(
            self.cluster_extra,
            "users_from_store = true\nseal_key = \"{}\"\n",
            self.seal_key().display()
        );
    }

    /// Runs `capyknock keygen --cluster CONFIG ARGS` in the node's namespace (where etcd is
    /// reachable); panics unless it succeeds; returns its standard output.
    #[expect(
        clippy::must_use_candidate,
        reason = "often called only for its effect"
    )]
    pub fn keygen(&self, args: &[&str]) -> String {
        let out = self
            .lab
            .server
            .command(crate::capyknock_bin())
            .env("RUST_LOG", "warn")
            .arg("keygen")
            .arg("--cluster")
            .arg(self.lab.config())
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "keygen --cluster {args:?} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// `keygen --cluster` of a machine user `nickname` allowed tcp/22, its profile written to
    /// the lab's `clients.toml`; the user as the server knows it (from that profile) and
    /// keygen's output.
    pub fn keygen_user(&self, nickname: &str) -> (User, String) {
        let clients = self.lab.file("clients.toml");
        let server = self.lab.server_addr(false).to_string();
        let stdout = self.keygen(&[
            "--nickname",
            nickname,
            "--server",
            &server,
            "--ports",
            "22",
            "--totp-mode",
            "derived",
            "--no-qr",
            "--profile",
            nickname,
            "--client-config",
            &clients.display().to_string(),
        ]);
        let config = client_config::load(&clients).unwrap();
        let profile = config.select(Some(nickname)).unwrap();
        let CodeSource::Derived(totp) = &profile.code else {
            panic!("not a derived profile")
        };
        let user = User {
            id: profile.user_id,
            nickname: nickname.to_owned(),
            key: profile.key.clone(),
            totp: totp.clone(),
            totp_mode: TotpMode::Derived,
            ports: profile.ports.clone(),
            access: std::time::Duration::from_mins(5),
            allow_ip: AllowIp::Source,
        };
        (user, stdout)
    }

    /// Waits until the log of this run says the store is reachable.
    pub fn wait_store_reachable(&self) {
        let _ = self
            .lab
            .wait_log_within(&["fleet store (etcd) reachable"], 20);
    }
}

/// A throwaway private CA (rcgen, ECDSA P-256) that writes the certificates it issues as PEM
/// files, every file mode 0600.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

/// A certificate and its key, as files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS #8, mode 0600).
    pub key: PathBuf,
}

impl TestCa {
    /// A new CA named `name`.
    #[must_use]
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert_pem = params.self_signed(&key).unwrap().pem();
        Self {
            issuer: Issuer::new(params, key),
            cert_pem,
        }
    }

    /// Writes the CA's certificate to `path`.
    pub fn write_cert(&self, path: &Path) {
        write_private(path, self.cert_pem.as_bytes()).unwrap();
    }

    /// Issues a server certificate for the addresses `ips` into `dir`/`name`.pem and
    /// `name`.key.
    #[must_use]
    pub fn server(&self, dir: &Path, name: &str, ips: &[IpAddr]) -> CertFiles {
        let names: Vec<String> = ips.iter().map(ToString::to_string).collect();
        self.issue(dir, name, names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// Issues a client certificate (common name `name`) into `dir`/`name`.pem and `name`.key.
    #[must_use]
    pub fn client(&self, dir: &Path, name: &str) -> CertFiles {
        self.issue(dir, name, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(
        &self,
        dir: &Path,
        name: &str,
        alt_names: Vec<String>,
        usage: ExtendedKeyUsagePurpose,
    ) -> CertFiles {
        let mut params = CertificateParams::new(alt_names).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let files = CertFiles {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
        };
        write_private(&files.cert, cert.pem().as_bytes()).unwrap();
        write_private(&files.key, key.serialize_pem().as_bytes()).unwrap();
        files
    }
}
