//! Named network namespaces (`ip netns`) that delete themselves on drop, even when a test panics.

use std::{
    fs::File,
    os::fd::AsFd as _,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace created for one test; deleted (with everything in it: veths, XDP
/// programs, nftables tables) when dropped.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `ck-<tag>-<pid>-<n>` with loopback up.
    #[must_use]
    pub fn new(tag: &str) -> Self {
        crate::require_root();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("ck-{tag}-{}-{n}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name, as `ip netns` knows it.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip ARGS` inside the namespace; panics on failure.
    pub fn ip(&self, args: &[&str]) -> Output {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// A command that runs `program` inside the namespace (via `ip netns exec`).
    #[must_use]
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `f` on a fresh thread that has entered this namespace, and returns its result.
    /// Sockets and BPF attachments made by `f` belong to the namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                    nix_setns(&file);
                    f()
                })
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Enters the network namespace behind `file` on the calling thread.
fn nix_setns(file: &File) {
    use std::os::fd::AsRawFd as _;
    // SAFETY: the fd is a valid open namespace file for the duration of the call; setns only
    // changes the calling thread's network namespace.
    let rc = unsafe { libc::setns(file.as_fd().as_raw_fd(), libc::CLONE_NEWNET) };
    assert!(rc == 0, "setns: {}", std::io::Error::last_os_error());
}

/// A veth pair between two namespaces with IPv4 and IPv6 addresses, both ends up.
#[derive(Debug, Clone)]
pub struct Link {
    /// Interface name in the first namespace.
    pub a_if: String,
    /// Interface name in the second namespace.
    pub b_if: String,
    /// IPv4 address of the first end.
    pub a_v4: std::net::Ipv4Addr,
    /// IPv4 address of the second end.
    pub b_v4: std::net::Ipv4Addr,
    /// IPv6 address of the first end.
    pub a_v6: std::net::Ipv6Addr,
    /// IPv6 address of the second end.
    pub b_v6: std::net::Ipv6Addr,
}

/// Connects `a` and `b` with a veth pair on subnet number `subnet` (`10.77.<subnet>.0/24` and
/// `fd00:77:<subnet>::/64`). IPv6 duplicate address detection is off so addresses work at once.
#[must_use]
pub fn connect(a: &NetNs, b: &NetNs, subnet: u8) -> Link {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let a_if = format!("cka{n}");
    let b_if = format!("ckb{n}");
    run(Command::new("ip").args([
        "link", "add", &a_if, "netns", &a.name, "type", "veth", "peer", "name", &b_if, "netns",
        &b.name,
    ]));
    let link = Link {
        a_v4: std::net::Ipv4Addr::new(10, 77, subnet, 1),
        b_v4: std::net::Ipv4Addr::new(10, 77, subnet, 2),
        a_v6: std::net::Ipv6Addr::new(0xfd00, 0x77, u16::from(subnet), 0, 0, 0, 0, 1),
        b_v6: std::net::Ipv6Addr::new(0xfd00, 0x77, u16::from(subnet), 0, 0, 0, 0, 2),
        a_if,
        b_if,
    };
    for (ns, ifname, v4, v6) in [
        (a, &link.a_if, link.a_v4, link.a_v6),
        (b, &link.b_if, link.b_v4, link.b_v6),
    ] {
        run(ns
            .command("sysctl")
            .args(["-qw", &format!("net.ipv6.conf.{ifname}.accept_dad=0")]));
        ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", ifname]);
        ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", ifname, "nodad"]);
        ns.ip(&["link", "set", ifname, "up"]);
    }
    link
}

/// Runs a command, panicking with its output when it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
