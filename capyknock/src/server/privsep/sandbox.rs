//! Capabilities and seccomp filters for the two processes of privilege separation.
//!
//! Capabilities are per thread in Linux: [`enter_network`] drops them on the calling thread,
//! installs the network filter on every thread at once (`SECCOMP_FILTER_FLAG_TSYNC`, which also
//! sets `no_new_privs` on all of them), and raises a flag; threads that already existed (the
//! tokio workers, the pcap reader) drop theirs at their next wake-up through [`catch_up`], and
//! threads started afterwards inherit nothing. The filters are allow-lists built with
//! `seccompiler` (Firecracker's pure-Rust compiler, so no libseccomp C library is needed); any
//! other system call kills the whole process (`SECCOMP_RET_KILL_PROCESS`).

use std::{
    cell::Cell,
    collections::BTreeMap,
    sync::{
        OnceLock,
        atomic::{AtomicBool, Ordering},
    },
};

pub use caps::{CapSet, Capability, CapsHashSet};
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// Why the sandbox could not be entered.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// Changing capabilities failed.
    #[error("cannot drop capabilities: {0}")]
    Caps(String),
    /// Building or installing a seccomp filter failed.
    #[error("cannot install the seccomp filter: {0}")]
    Seccomp(String),
}

/// Set once the network process has dropped its privileges: threads catch up.
static DROPPED: AtomicBool = AtomicBool::new(false);

/// The capabilities the network process keeps (none, or `CAP_NET_RAW` when pcap capture
/// follows new interfaces); set once, by [`enter_network`].
static KEPT: OnceLock<CapsHashSet> = OnceLock::new();

thread_local! {
    static THREAD_DROPPED: Cell<bool> = const { Cell::new(false) };
}

fn caps_err(e: &caps::errors::CapsError) -> SandboxError {
    SandboxError::Caps(e.to_string())
}

/// Shrinks the bounding set to `keep`, so no later `execve` could regain more. Needs
/// `CAP_SETPCAP`, which a systemd unit with a `CapabilityBoundingSet` may not grant: then the
/// bounding set stays as it is, and `no_new_privs` (set by the seccomp filter, or here) keeps an
/// `execve` from gaining anything beyond the permitted set, which is dropped anyway.
fn shrink_bounding(keep: &CapsHashSet) -> Result<(), SandboxError> {
    if !caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        tracing::debug!("no CAP_SETPCAP: the bounding set stays; no_new_privs covers execve");
        return Ok(());
    }
    for cap in caps::all() {
        if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap).map_err(|e| caps_err(&e))?;
        }
    }
    Ok(())
}

/// Reduces the calling thread's capabilities to `keep`: bounding (when it can, see
/// [`shrink_bounding`]), ambient, inheritable, permitted and effective.
pub fn limit_caps_this_thread(keep: &CapsHashSet) -> Result<(), SandboxError> {
    shrink_bounding(keep)?;
    caps::clear(None, CapSet::Ambient).map_err(|e| caps_err(&e))?;
    caps::clear(None, CapSet::Inheritable).map_err(|e| caps_err(&e))?;
    caps::set(None, CapSet::Effective, keep).map_err(|e| caps_err(&e))?;
    caps::set(None, CapSet::Permitted, keep).map_err(|e| caps_err(&e))?;
    THREAD_DROPPED.with(|d| d.set(true));
    Ok(())
}

/// Keeps only `CAP_NET_ADMIN` (the firewall helper), also in the bounding set when it can, so
/// programs the exec backend runs get no more.
pub fn keep_only_net_admin() -> Result<(), SandboxError> {
    let only: CapsHashSet = std::iter::once(Capability::CAP_NET_ADMIN).collect();
    limit_caps_this_thread(&only)
}

/// Run by every runtime and capture thread when it wakes up: drops its capabilities once the
/// process has entered the sandbox. Cheap (one atomic load) otherwise.
pub fn catch_up() {
    if DROPPED.load(Ordering::Acquire) && !THREAD_DROPPED.with(Cell::get) {
        let keep = KEPT.get().cloned().unwrap_or_default();
        if let Err(err) = limit_caps_this_thread(&keep) {
            tracing::error!(error = %err, "a thread could not drop its capabilities");
            // Do not retry on every wake-up.
            THREAD_DROPPED.with(|d| d.set(true));
        }
    }
}

/// The network process enters its sandbox: no capability but `keep` on this thread (others
/// follow, see [`catch_up`]), the network filter on all threads (which sets `no_new_privs`).
pub fn enter_network(keep: CapsHashSet) -> Result<(), SandboxError> {
    let keep = KEPT.get_or_init(|| keep);
    limit_caps_this_thread(keep)?;
    DROPPED.store(true, Ordering::Release);
    let filter = network_filter()?;
    seccompiler::apply_filter_all_threads(&filter).map_err(|e| SandboxError::Seccomp(e.to_string()))
}

/// The helper enters its sandbox (single-threaded): only `CAP_NET_ADMIN`, and the helper filter
/// unless `seccomp` is false (the exec backend runs arbitrary programs, which inherit the
/// filter).
pub fn enter_helper(seccomp: bool) -> Result<(), SandboxError> {
    keep_only_net_admin()?;
    if seccomp {
        let filter = helper_filter()?;
        seccompiler::apply_filter(&filter).map_err(|e| SandboxError::Seccomp(e.to_string()))?;
    } else {
        // The filter would set it; without one, still no privilege gain through exec.
        set_no_new_privs()?;
    }
    Ok(())
}

fn set_no_new_privs() -> Result<(), SandboxError> {
    nix::sys::prctl::set_no_new_privs().map_err(|e| SandboxError::Caps(e.to_string()))
}

/// System calls everything needs: memory, threads, time, signals, files already open.
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_lseek,
    libc::SYS_close,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_fcntl,
    libc::SYS_ioctl,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_futex,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettimeofday,
    libc::SYS_getrandom,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_exit,
    // A signal (SIGHUP, SIGTERM) that interrupts a sleep or timed wait restarts it through
    // this call: without it a reload would kill the daemon.
    libc::SYS_restart_syscall,
    libc::SYS_exit_group,
    libc::SYS_tgkill,
    libc::SYS_prctl,
    libc::SYS_capget,
    libc::SYS_capset,
    libc::SYS_uname,
    libc::SYS_prlimit64,
];

/// What the network process needs besides [`COMMON`]: the tokio reactor, sockets already bound
/// (knocks, control, `sd_notify`'s datagram), the BPF maps and ring buffer, the state directory.
const NETWORK: &[i64] = &[
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_ppoll,
    libc::SYS_pselect6,
    libc::SYS_eventfd2,
    libc::SYS_pipe2,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_socket,
    libc::SYS_socketpair,
    libc::SYS_connect,
    libc::SYS_accept4,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_shutdown,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
    libc::SYS_sendmmsg,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_recvmmsg,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_bpf,
    libc::SYS_openat,
    libc::SYS_getdents64,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_unlinkat,
    libc::SYS_mkdirat,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_fchown,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_readlinkat,
    libc::SYS_getcwd,
    libc::SYS_fstatfs,
    libc::SYS_statfs,
    libc::SYS_sysinfo,
    libc::SYS_getresuid,
    libc::SYS_getresgid,
    libc::SYS_getgroups,
    libc::SYS_wait4,
    libc::SYS_close_range,
    // `realtime_priority`: the core and the worker, already at SCHED_FIFO, add
    // SCHED_RESET_ON_FORK, which needs no privilege. Switching to SCHED_FIFO needs
    // CAP_SYS_NICE, which this process no longer has, or the RLIMIT_RTPRIO the service
    // manager gave (`server::realtime`).
    libc::SYS_sched_setscheduler,
    libc::SYS_membarrier,
];

/// What the helper needs besides [`COMMON`]: netlink sockets to nftables and its socket to the
/// daemon.
const HELPER: &[i64] = &[
    libc::SYS_socket,
    libc::SYS_bind,
    libc::SYS_getsockname,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_ppoll,
    libc::SYS_openat,
];

#[cfg(target_arch = "x86_64")]
const ARCH_SPECIFIC: &[i64] = &[
    libc::SYS_open,
    libc::SYS_stat,
    libc::SYS_lstat,
    libc::SYS_poll,
    libc::SYS_epoll_wait,
    libc::SYS_dup2,
    libc::SYS_rename,
    libc::SYS_unlink,
    libc::SYS_mkdir,
    libc::SYS_access,
    libc::SYS_readlink,
    libc::SYS_arch_prctl,
    libc::SYS_getrlimit,
];
#[cfg(not(target_arch = "x86_64"))]
const ARCH_SPECIFIC: &[i64] = &[];

fn build(lists: &[&[i64]]) -> Result<BpfProgram, SandboxError> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| SandboxError::Seccomp(format!("unsupported architecture: {e}")))?;
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> = lists
        .iter()
        .flat_map(|l| l.iter())
        .map(|nr| (*nr, Vec::new()))
        .collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        arch,
    )
    .map_err(|e| SandboxError::Seccomp(e.to_string()))?;
    BpfProgram::try_from(filter).map_err(|e| SandboxError::Seccomp(e.to_string()))
}

/// The network process's filter.
pub fn network_filter() -> Result<BpfProgram, SandboxError> {
    build(&[COMMON, NETWORK, ARCH_SPECIFIC])
}

/// The helper's filter.
pub fn helper_filter() -> Result<BpfProgram, SandboxError> {
    build(&[COMMON, HELPER, ARCH_SPECIFIC])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile() {
        assert!(!network_filter().unwrap().is_empty());
        assert!(!helper_filter().unwrap().is_empty());
    }

    /// Runs in a child copy of this test binary (seccomp cannot be undone): applies the network
    /// filter, then calls `chroot`, which it does not allow. The process must die of SIGSYS.
    #[test]
    fn a_forbidden_syscall_kills_the_process() {
        use std::os::unix::process::ExitStatusExt;
        const CHILD: &str = "CAPYKNOCK_TEST_SECCOMP_CHILD";
        if std::env::var_os(CHILD).is_some() {
            let filter = network_filter().unwrap();
            seccompiler::apply_filter_all_threads(&filter).unwrap();
            // Allowed calls still work under the filter.
            let _ = std::fs::metadata("/");
            let _ = std::os::unix::fs::chroot("/");
            // Not reached: the kernel kills the process.
            std::process::exit(0);
        }
        let exe = std::env::current_exe().unwrap();
        let status = std::process::Command::new(exe)
            .args([
                "--exact",
                "server::privsep::sandbox::tests::a_forbidden_syscall_kills_the_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .status()
            .unwrap();
        assert_eq!(
            status.signal(),
            Some(libc::SIGSYS),
            "the child was not killed by seccomp: {status:?}"
        );
    }
}
