//! Named network namespaces (`ip netns`) that delete themselves on drop, even when a test panics
//! or a task is interrupted, with everything in them (veths, XDP programs, nftables tables,
//! sockets); veth pairs between them and their addresses; running code or programs inside one.
//!
//! ```text
//!   [ns A] a_if 10.77.S.1/24, fd00:77:S::1/64  <---->  b_if 10.77.S.2/24, fd00:77:S::2/64 [ns B]
//! ```
//!
//! ([`connect`]; [`veth`] takes any names and addresses.) Nothing here touches the machine's own
//! namespace: links are created straight into the namespaces named.

use std::{
    ffi::OsStr,
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::AsFd as _,
    path::PathBuf,
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread::JoinHandle,
    time::Duration,
};

use nix::{
    sched::CloneFlags,
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::{Error, Result, process};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace, deleted when dropped.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates namespace `name` (`/run/netns/NAME`) with its loopback up.
    pub fn new(name: &str) -> Result<Self> {
        process::run(Command::new("ip").args(["netns", "add", name]))?;
        let ns = Self {
            name: name.to_owned(),
        };
        ns.link_up("lo")?;
        Ok(ns)
    }

    /// Creates `ck-<tag>-<pid>-<n>`, a name no other namespace of this process or another has.
    pub fn unique(tag: &str) -> Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Self::new(&format!("ck-{tag}-{}-{n}", std::process::id()))
    }

    /// The namespace's name, as `ip netns` knows it.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`.
    #[must_use]
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// The namespace file, to [`enter`] it on a thread of one's own.
    pub fn file(&self) -> Result<File> {
        File::open(self.path()).map_err(|e| Error::io(format!("open namespace {}", self.name), e))
    }

    /// Runs `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        process::run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// Runs `ip -n NAME -batch -` with `lines` (one `ip` command each) on stdin: thousands of
    /// addresses in one process.
    pub fn ip_batch(&self, lines: &str) -> Result<()> {
        let mut cmd = Command::new("ip");
        cmd.args(["-n", &self.name, "-batch", "-"]);
        let out = process::run_with_stdin(&mut cmd, lines)?;
        if !out.status.success() {
            return Err(Error::Failed {
                command: process::describe(&cmd),
                status: out.status,
                output: process::output_text(&out),
            });
        }
        Ok(())
    }

    /// A command that runs `program` inside the namespace. `nsenter --net` (not `ip netns
    /// exec`) keeps the host's /sys, so bpffs stays reachable for the daemon, and execs
    /// `program` in place, so the child's pid is the program's.
    #[must_use]
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.name))
            .arg("--")
            .arg(program);
        cmd
    }

    /// Sets the sysctl `key` (e.g. `net.ipv6.conf.lo.accept_dad`) in the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        process::run(
            self.command("sysctl")
                .args(["-qw", &format!("{key}={value}")]),
        )?;
        Ok(())
    }

    /// Adds `addr/prefix_len` to `ifname`; IPv6 addresses without duplicate address detection,
    /// so they work at once.
    pub fn add_address(&self, ifname: &str, addr: IpAddr, prefix_len: u8) -> Result<()> {
        let cidr = format!("{addr}/{prefix_len}");
        match addr {
            IpAddr::V4(_) => self.ip(&["addr", "add", &cidr, "dev", ifname])?,
            IpAddr::V6(_) => self.ip(&["addr", "add", &cidr, "dev", ifname, "nodad"])?,
        };
        Ok(())
    }

    /// Sets `ifname` up.
    pub fn link_up(&self, ifname: &str) -> Result<()> {
        self.ip(&["link", "set", ifname, "up"])?;
        Ok(())
    }

    /// Runs `f` on a fresh thread that has entered this namespace, and returns its result.
    /// Sockets and BPF attachments made by `f` belong to the namespace. A panic in `f` goes on
    /// in the caller, message and all.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let file = self.file()?;
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    enter(&file)?;
                    Ok(f())
                })
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// Starts `f` on a thread of its own inside this namespace (for servers, floods and
    /// sniffers that outlive the call); returns once the thread is in the namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<JoinHandle<T>> {
        let file = self.file()?;
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let entered = enter(&file);
            let ok = entered.is_ok();
            let _ = entered_tx.send(entered);
            if !ok {
                // Nothing ran outside the namespace: the caller gets the error and drops this.
                std::panic::resume_unwind(Box::new("namespace not entered"));
            }
            f()
        });
        entered_rx
            .recv()
            .map_err(|_| Error::Other(format!("thread for namespace {} died", self.name)))??;
        Ok(thread)
    }

    /// Sends each of `packets` once, in order, from one UDP socket in the namespace bound to
    /// `from` (`None`: the wildcard address of `to`'s family), any port. Returns how many the
    /// kernel took: a full queue (ENOBUFS) under a flood is not an error.
    pub fn send_udp<P: AsRef<[u8]> + Sync>(
        &self,
        from: Option<IpAddr>,
        to: SocketAddr,
        packets: &[P],
    ) -> Result<usize> {
        let from = from.unwrap_or(match to {
            SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        });
        self.run(|| {
            let socket =
                UdpSocket::bind((from, 0)).map_err(|e| Error::io(format!("bind {from}"), e))?;
            Ok(packets
                .iter()
                .filter(|p| socket.send_to(p.as_ref(), to).is_ok())
                .count())
        })?
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Enters the network namespace behind `file` on the calling thread, for good: only call it on
/// a thread made for the purpose ([`NetNs::run`] and [`NetNs::spawn`] do).
pub fn enter(file: &File) -> Result<()> {
    nix::sched::setns(file.as_fd(), CloneFlags::CLONE_NEWNET)
        .map_err(|e| Error::io("setns (enter a network namespace)", e))
}

/// A veth pair between two namespaces with IPv4 and IPv6 addresses, both ends up.
#[derive(Debug, Clone)]
pub struct Link {
    /// Interface name in the first namespace.
    pub a_if: String,
    /// Interface name in the second namespace.
    pub b_if: String,
    /// IPv4 address of the first end.
    pub a_v4: Ipv4Addr,
    /// IPv4 address of the second end.
    pub b_v4: Ipv4Addr,
    /// IPv6 address of the first end.
    pub a_v6: Ipv6Addr,
    /// IPv6 address of the second end.
    pub b_v6: Ipv6Addr,
}

impl Link {
    /// The first end's address, IPv6 or IPv4.
    #[must_use]
    pub fn a(&self, v6: bool) -> IpAddr {
        family(v6, self.a_v4, self.a_v6)
    }

    /// The second end's address, IPv6 or IPv4.
    #[must_use]
    pub fn b(&self, v6: bool) -> IpAddr {
        family(v6, self.b_v4, self.b_v6)
    }
}

/// `v6` if asked for, else `v4`.
fn family(v6: bool, v4_addr: Ipv4Addr, v6_addr: Ipv6Addr) -> IpAddr {
    if v6 {
        IpAddr::V6(v6_addr)
    } else {
        IpAddr::V4(v4_addr)
    }
}

/// Connects `a` and `b` with a veth pair (`cka<n>`, `ckb<n>`) on subnet number `subnet`:
/// `10.77.<subnet>.0/24` and `fd00:77:<subnet>::/64`, `.1`/`::1` on `a`'s side. IPv6 duplicate
/// address detection is off, so the addresses work at once.
pub fn connect(a: &NetNs, b: &NetNs, subnet: u8) -> Result<Link> {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let link = Link {
        a_if: format!("cka{n}"),
        b_if: format!("ckb{n}"),
        a_v4: Ipv4Addr::new(10, 77, subnet, 1),
        b_v4: Ipv4Addr::new(10, 77, subnet, 2),
        a_v6: Ipv6Addr::new(0xfd00, 0x77, u16::from(subnet), 0, 0, 0, 0, 1),
        b_v6: Ipv6Addr::new(0xfd00, 0x77, u16::from(subnet), 0, 0, 0, 0, 2),
    };
    veth_pair((a, &link.a_if), (b, &link.b_if))?;
    for (ns, ifname, v4, v6) in [
        (a, &link.a_if, link.a_v4, link.a_v6),
        (b, &link.b_if, link.b_v4, link.b_v6),
    ] {
        ns.sysctl(&format!("net.ipv6.conf.{ifname}.accept_dad"), "0")?;
        ns.add_address(ifname, IpAddr::V4(v4), 24)?;
        ns.add_address(ifname, IpAddr::V6(v6), 64)?;
        ns.link_up(ifname)?;
    }
    Ok(link)
}

/// A new namespace `ck-<tag>-…` ([`NetNs::unique`]) joined to `to` by [`connect`] on subnet
/// number `subnet`, `to` on the link's `a` side: a client of a lab's server.
pub fn attach(to: &NetNs, tag: &str, subnet: u8) -> Result<(NetNs, Link)> {
    let ns = NetNs::unique(tag)?;
    let link = connect(to, &ns, subnet)?;
    Ok((ns, link))
}

/// Creates a veth pair, one end named `one.1` in `one.0`, the other `other.1` in `other.0`
/// (the same namespace is fine); no addresses, both down.
pub fn veth_pair(one: (&NetNs, &str), other: (&NetNs, &str)) -> Result<()> {
    process::run(Command::new("ip").args([
        "link",
        "add",
        one.1,
        "netns",
        one.0.name(),
        "type",
        "veth",
        "peer",
        "name",
        other.1,
        "netns",
        other.0.name(),
    ]))?;
    Ok(())
}

/// Connects two namespaces with a veth pair, each end named, with one address of
/// `prefix_len` bits, and up.
pub fn veth(
    one: (&NetNs, &str, IpAddr),
    other: (&NetNs, &str, IpAddr),
    prefix_len: u8,
) -> Result<()> {
    veth_pair((one.0, one.1), (other.0, other.1))?;
    for (ns, ifname, ip) in [one, other] {
        ns.add_address(ifname, ip, prefix_len)?;
        ns.link_up(ifname)?;
    }
    Ok(())
}

/// Deletes namespaces named `<prefix><pid>-*` (and the temporary directory
/// `<temp_prefix><pid>`) whose process is gone (killed with -9, so no `Drop` ran), stopping
/// what still runs inside them (a daemon in its own process group outlives a killed task).
pub fn remove_stale(prefix: &str, temp_prefix: &str) {
    let Ok(list) = process::run(Command::new("ip").args(["netns", "list"])) else {
        return;
    };
    let list = String::from_utf8_lossy(&list.stdout).into_owned();
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) || is_alive(pid) {
            continue;
        }
        let pids = process::run(Command::new("ip").args(["netns", "pids", name]))
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for p in pids.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = kill(Pid::from_raw(p), Signal::SIGTERM);
        }
        if !pids.trim().is_empty() {
            std::thread::sleep(Duration::from_secs(1));
        }
        let _ = Command::new("ip").args(["netns", "del", name]).status();
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("{temp_prefix}{pid}")));
        // An etcd lab's data is named after its namespace (`etcd.rs`).
        let _ = std::fs::remove_dir_all(std::path::Path::new("/dev/shm").join(name));
    }
}

/// Whether process `pid` runs (a zombie does not count: it is dead, only not yet reaped).
#[must_use]
pub fn is_alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state letter follows the command name, which is in parentheses.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_alive_knows_ourselves_and_not_a_free_pid() {
        assert!(is_alive(&std::process::id().to_string()));
        // Above the kernel's largest possible pid_max (2^22).
        assert!(!is_alive("4194305"));
    }

    #[test]
    fn link_addresses_by_family() {
        let link = Link {
            a_if: "a".into(),
            b_if: "b".into(),
            a_v4: Ipv4Addr::new(10, 0, 0, 1),
            b_v4: Ipv4Addr::new(10, 0, 0, 2),
            a_v6: Ipv6Addr::LOCALHOST,
            b_v6: Ipv6Addr::UNSPECIFIED,
        };
        assert_eq!(link.a(false), IpAddr::from([10, 0, 0, 1]));
        assert_eq!(link.b(true), IpAddr::V6(Ipv6Addr::UNSPECIFIED));
    }
}
