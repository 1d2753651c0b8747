//! The one-time guarantee against the real daemon: a knock that opened something never opens
//! again, whatever is killed when, after a simulated reboot, with a full or read-only state
//! directory, and with the daemon's clock stepped forward and back (docs/PROTOCOL.md section 7).
//! Needs root.
//!
//! ```text
//!   [client] 10.77.S.2 ----- 10.77.S.1 [server: capyknock server, nftables, tcp/22]
//!   [other]  10.77.T.2 ----- 10.77.T.1      (replays come from here too)
//! ```

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use capyknock::protocol::users::User;
use capyknock_testkit::{
    KNOCK_PORT,
    clock::{unix_now, wait_into_step},
    netns::{Link, NetNs, attach},
    wait::wait_until,
};
use capyknock_tests::{
    daemon::{DaemonLab, SERVICE, knock, user},
    firewall::nft,
};

/// A second client namespace, on its own link to the server.
struct Other {
    ns: NetNs,
    link: Link,
}

impl Other {
    fn new(lab: &DaemonLab, subnet: u8) -> Self {
        let (ns, link) = attach(&lab.server, "rgo", subnet).unwrap();
        Self { ns, link }
    }

    /// Starts the daemon with XDP on both server-side interfaces (the lab's and this one's).
    fn start(&self, lab: &mut DaemonLab) {
        let (a, b) = (lab.link.a_if.clone(), self.link.a_if.clone());
        lab.start_with(&["--iface", &a, "--iface", &b]);
    }

    fn send(&self, packet: &[u8]) {
        let to = SocketAddr::new(self.link.a(false), KNOCK_PORT);
        assert_eq!(self.ns.send_udp(None, to, &[packet]).unwrap(), 1);
    }
}

/// Whether nftables holds a grant for `addr` in the server namespace.
fn granted(lab: &DaemonLab, addr: IpAddr) -> bool {
    nft(&lab.server, &["list", "table", "inet", "capyknock"]).contains(&addr.to_string())
}

/// "knock accepted" lines of this daemon run for `nickname`.
fn accepted(lab: &DaemonLab, nickname: &str) -> usize {
    lab.count_log(&["knock accepted", &format!("nickname={nickname} ")])
}

/// Waits until this run's log has a verdict (accepted or rejected) for `nickname`.
fn wait_verdict(lab: &DaemonLab, nickname: &str) {
    let nick = format!("nickname={nickname}");
    let done = wait_until(Duration::from_secs(5), Duration::from_millis(10), || {
        Ok(lab
            .run_log()
            .lines()
            .any(|l| l.contains(&nick) && l.contains("knock ")))
    })
    .unwrap();
    assert!(done, "no verdict for {nickname}:\n{}", lab.run_log());
}

/// A cheap pseudo-random number (the kill points need spread, not quality).
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// 200 cycles: a valid knock, `kill -9` at a random point between the packet's arrival and the
/// firewall commit (and some after it), a restart, and the same packet replayed from the same
/// and from another address. Not one replay may be accepted, and every grant made before a
/// kill stays.
#[test]
fn kill_9_at_any_instant_never_lets_a_knock_open_twice() {
    const CYCLES: u8 = 200;
    let mut lab = DaemonLab::new("rgk");
    let other = Other::new(&lab, 241);
    let users: Vec<User> = (1..=CYCLES).map(|n| user(&format!("u{n}"), n)).collect();
    lab.write_config(&users.iter().collect::<Vec<_>>());
    // udp capture: no XDP to load, so a restart takes a fraction of a second; the replay state
    // does not depend on the capture mode.
    let args = ["--capture", "udp"];
    lab.start_with(&args);
    let client = lab.client_addr(false);
    let mut seed = unix_now() | 1;
    let (mut before_verdict, mut before_grant, mut granted_before_kill) = (0u32, 0u32, 0u32);
    for u in &users {
        // Kill points: mostly within 0-3 ms of the send, where the knock is being verified,
        // recorded and granted; one cycle in five later, when the grant is surely done.
        let delay = if next_random(&mut seed).is_multiple_of(5) {
            Duration::from_millis(20 + next_random(&mut seed) % 30)
        } else {
            Duration::from_micros(next_random(&mut seed) % 3_000)
        };
        let packet = knock(u, &[SERVICE], unix_now());
        lab.send(&packet, false, 1);
        std::thread::sleep(delay);
        lab.kill9();
        let was_accepted = accepted(&lab, &u.nickname) > 0;
        let was_granted = granted(&lab, client);
        match (was_accepted, was_granted) {
            (_, true) => granted_before_kill += 1,
            (true, false) => before_grant += 1,
            (false, false) => before_verdict += 1,
        }

        lab.start_with(&args);
        assert_eq!(
            granted(&lab, client),
            was_granted,
            "{}: a grant made before the kill did not survive the restart",
            u.nickname
        );
        lab.send(&packet, false, 1);
        other.send(&packet);
        // Both replays get a verdict (the first may be this packet's first acceptance, if
        // the kill came before its use was recorded; never both, never after a grant).
        wait_verdict(&lab, &u.nickname);
        std::thread::sleep(Duration::from_millis(30));
        let replays_accepted = accepted(&lab, &u.nickname);
        if was_granted {
            assert_eq!(
                replays_accepted,
                0,
                "{}: granted before the kill, accepted again after it:\n{}",
                u.nickname,
                lab.run_log()
            );
        }
        assert!(
            replays_accepted <= 1,
            "{}: one packet accepted twice after a restart:\n{}",
            u.nickname,
            lab.run_log()
        );
        // Clean slate for the next user: close this grant.
        nft(
            &lab.server,
            &["flush", "set", "inet", "capyknock", "allow4"],
        );
    }
    println!(
        "crash cycles: {CYCLES}; killed before a verdict {before_verdict}, after the verdict \
         and before the grant {before_grant}, after the grant {granted_before_kill}; replays \
         accepted after a grant: 0"
    );
    assert!(granted_before_kill > 0 && before_verdict + before_grant > 0);
}

/// A reboot: daemon killed, the disk holding the replay state as it was before the knock (a
/// power cut lost the record, which is only flushed behind the knock path), runtime directory
/// emptied, nftables table gone, and a new boot id (an `LD_PRELOAD` shim shows the daemon a
/// file instead of `/proc/sys/kernel/random/boot_id`). No captured knock opens again, from any
/// address; fresh knocks are refused until the fence (the saved horizon plus 60 s) and work
/// after it.
#[test]
fn after_a_simulated_reboot_no_captured_knock_opens_and_fresh_ones_work_after_the_fence() {
    let mut lab = DaemonLab::new("rgr");
    let other = Other::new(&lab, 242);
    let (alice, bob) = (user("alice", 1), user("bob", 2));
    lab.write_config(&[&alice, &bob]);
    let shim = build_shim(&lab.file(""), "boot_id");
    let boot_id = lab.file("boot_id");
    std::fs::write(&boot_id, "11111111-2222-3333-4444-555555555555\n").unwrap();
    lab.wrapper = vec![
        "/usr/bin/env".to_owned(),
        format!("LD_PRELOAD={}", shim.display()),
        format!("CAPYKNOCK_BOOT_ID_FILE={}", boot_id.display()),
    ];
    wait_into_step(0, 20);
    other.start(&mut lab);
    // What the disk holds if the knock's record never reaches it: the file at start-up, with
    // this run's horizon already flushed.
    let slots = lab.file("state").join("replay.slots");
    let on_disk = std::fs::read(&slots).unwrap();
    let captured = knock(&alice, &[SERVICE], unix_now());
    lab.send(&captured, false, 1);
    lab.wait_log(&["knock accepted", "nickname=alice"]);
    lab.wait_connect(SERVICE.port, false, true);

    // The reboot.
    lab.kill9();
    let crashed = Instant::now();
    std::fs::write(&slots, &on_disk).unwrap();
    let _ = std::fs::remove_file(lab.socket());
    nft(&lab.server, &["delete", "table", "inet", "capyknock"]);
    std::fs::write(&boot_id, "66666666-7777-8888-9999-aaaaaaaaaaaa\n").unwrap();
    other.start(&mut lab);
    let ready = Instant::now();
    lab.wait_log(&["the machine restarted while the daemon was running"]);

    lab.send(&captured, false, 1);
    other.send(&captured);
    lab.wait_log(&["reason=stale_timestamp", "nickname=alice"]);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(accepted(&lab, "alice"), 0, "{}", lab.run_log());
    assert!(!granted(&lab, lab.client_addr(false)));

    // Fresh knocks: refused while the fence lasts, accepted after it.
    let mut refused = 0;
    let opened = loop {
        lab.send(&knock(&bob, &[SERVICE], unix_now()), false, 1);
        std::thread::sleep(Duration::from_millis(500));
        if accepted(&lab, "bob") > 0 {
            break ready.elapsed();
        }
        refused += 1;
        assert!(
            crashed.elapsed() < Duration::from_secs(90),
            "fresh knocks still refused 90 s after the crash:\n{}",
            lab.run_log()
        );
    };
    lab.wait_connect(SERVICE.port, false, true);
    assert!(refused > 0, "no fence after a reboot that lost a record");
    assert_eq!(accepted(&lab, "alice"), 0, "{}", lab.run_log());
    println!(
        "fence after a simulated reboot: a fresh knock opened {} s after the daemon was ready \
         ({} s after the crash); {refused} fresh knocks refused before",
        opened.as_secs(),
        crashed.elapsed().as_secs()
    );
}

/// A clean stop, then a reboot: nothing can be missing, so no fence; a fresh knock works at
/// once and the knock made before the stop stays refused.
#[test]
fn after_a_clean_stop_and_a_reboot_fresh_knocks_work_at_once() {
    let mut lab = DaemonLab::new("rgs");
    let (alice, bob) = (user("alice", 1), user("bob", 2));
    lab.write_config(&[&alice, &bob]);
    let shim = build_shim(&lab.file(""), "boot_id");
    let boot_id = lab.file("boot_id");
    std::fs::write(&boot_id, "11111111-2222-3333-4444-555555555555\n").unwrap();
    lab.wrapper = vec![
        "/usr/bin/env".to_owned(),
        format!("LD_PRELOAD={}", shim.display()),
        format!("CAPYKNOCK_BOOT_ID_FILE={}", boot_id.display()),
    ];
    wait_into_step(0, 20);
    lab.start();
    let captured = knock(&alice, &[SERVICE], unix_now());
    lab.send(&captured, false, 1);
    lab.wait_log(&["knock accepted", "nickname=alice"]);
    assert!(lab.stop(), "no clean stop:\n{}", lab.log());

    nft(&lab.server, &["delete", "table", "inet", "capyknock"]);
    std::fs::write(&boot_id, "66666666-7777-8888-9999-aaaaaaaaaaaa\n").unwrap();
    lab.start();
    assert!(
        !lab.run_log().contains("the machine restarted"),
        "{}",
        lab.run_log()
    );
    lab.send(&captured, false, 1);
    lab.wait_log(&["reason=replayed_packet", "nickname=alice"]);
    lab.send(&knock(&bob, &[SERVICE], unix_now()), false, 1);
    lab.wait_log(&["knock accepted", "nickname=bob"]);
    assert_eq!(accepted(&lab, "alice"), 0, "{}", lab.run_log());
}

/// A tmpfs mounted on the lab's state directory, unmounted on drop (even when the test fails).
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Self {
        std::fs::create_dir_all(path).unwrap();
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .args(["tmpfs"])
            .arg(path));
        Self {
            path: path.to_owned(),
        }
    }

    /// Fills the file system: writes until ENOSPC.
    fn fill(&self) {
        let mut f = std::fs::File::create(self.path.join("filler")).unwrap();
        let chunk = vec![0x55u8; 64 * 1024];
        loop {
            if std::io::Write::write_all(&mut f, &chunk).is_err() {
                break;
            }
        }
        let _ = f.sync_all();
        // Even a small new file no longer fits.
        assert!(std::fs::write(self.path.join("probe"), vec![1u8; 8192]).is_err());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Regression (one-time guarantee): with the state directory full, a knock was granted with
/// "cannot save the replay state; access still works", and after kill -9 and a restart its
/// replay from another address was accepted. The replay state file is allocated once, so a full
/// disk changes nothing.
#[test]
fn a_full_state_directory_keeps_every_knock_one_time() {
    let mut lab = DaemonLab::new("rgf");
    let other = Other::new(&lab, 243);
    let (alice, bob) = (user("alice", 1), user("bob", 2));
    let tmpfs = Tmpfs::mount(&lab.file("state"), "2m");
    lab.write_config(&[&alice, &bob]);
    wait_into_step(0, 20);
    other.start(&mut lab);
    tmpfs.fill();

    let captured = knock(&alice, &[SERVICE], unix_now());
    lab.send(&captured, false, 1);
    lab.wait_log(&["knock accepted", "nickname=alice"]);
    lab.wait_connect(SERVICE.port, false, true);
    assert!(lab.status().verifier.replay_state_durable);

    lab.kill9();
    other.start(&mut lab);
    other.send(&captured);
    lab.wait_log(&["reason=replayed_packet", "nickname=alice"]);
    assert_eq!(accepted(&lab, "alice"), 0, "{}", lab.run_log());
    // New knocks still work on the full disk.
    lab.send(&knock(&bob, &[SERVICE], unix_now()), false, 1);
    lab.wait_log(&["knock accepted", "nickname=bob"]);
    drop(lab.daemon.take());
    drop(tmpfs);
}

/// An ext4 file system in an image file, mounted (loop) on the lab's state directory with
/// `errors=remount-ro`, unmounted on drop.
struct Ext4 {
    image: PathBuf,
    path: PathBuf,
}

impl Ext4 {
    fn create(image: &Path, path: &Path) -> Self {
        run(Command::new("truncate").args(["-s", "16M"]).arg(image));
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(image));
        let fs = Self {
            image: image.to_owned(),
            path: path.to_owned(),
        };
        fs.mount();
        fs
    }

    fn mount(&self) {
        std::fs::create_dir_all(&self.path).unwrap();
        run(Command::new("mount")
            .args(["-o", "loop,errors=remount-ro"])
            .arg(&self.image)
            .arg(&self.path));
        run(Command::new("chmod").arg("700").arg(&self.path));
    }

    /// What a failing disk does: the kernel turns the file system read-only under open files
    /// (ext4's own error path, through its test hook).
    fn fail(&self) {
        let source = String::from_utf8(
            Command::new("findmnt")
                .args(["-n", "-o", "SOURCE"])
                .arg(&self.path)
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        let dev = Path::new(source.trim()).file_name().unwrap().to_owned();
        let knob = Path::new("/sys/fs/ext4").join(dev).join("trigger_fs_error");
        std::fs::write(&knob, "capyknock test").unwrap();
    }

    /// Unmounts, repairs (fsck), and mounts again read-only (on a writable loop device, so it
    /// can be made writable again).
    fn repair_read_only(&self) {
        run(Command::new("umount").arg(&self.path));
        let _ = Command::new("e2fsck")
            .args(["-f", "-y"])
            .arg(&self.image)
            .output();
        self.mount();
        self.remount("ro");
    }

    fn remount(&self, mode: &str) {
        run(Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(&self.path));
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Regression (one-time guarantee): with the state directory read-only the daemon granted
/// knocks it could not record. Now it fails closed: when the disk turns read-only under it, and
/// when it starts on a read-only directory, knocks are refused (`state_unavailable`, said in
/// the log and in `status`), never granted without a durable record; once writable again,
/// knocks work again without a restart.
#[test]
fn a_read_only_state_directory_fails_closed_and_recovers() {
    let mut lab = DaemonLab::new("rgo");
    let other = Other::new(&lab, 244);
    let (alice, bob, carol) = (user("alice", 1), user("bob", 2), user("carol", 3));
    let disk = Ext4::create(&lab.file("state.img"), &lab.file("state"));
    lab.write_config(&[&alice, &bob, &carol]);
    wait_into_step(0, 25);
    other.start(&mut lab);
    let captured = knock(&alice, &[SERVICE], unix_now());
    lab.send(&captured, false, 1);
    lab.wait_log(&["knock accepted", "nickname=alice"]);

    // The disk fails while the daemon runs.
    disk.fail();
    lab.send(&knock(&bob, &[SERVICE], unix_now()), false, 1);
    lab.wait_log(&["CANNOT SAVE THE REPLAY STATE"]);
    std::thread::sleep(Duration::from_millis(300));
    let status = lab.status();
    assert!(!status.verifier.replay_state_durable, "{status:?}");
    assert!(
        status.grants.iter().all(|g| g.nickname != "bob"),
        "bob granted without a durable record: {status:?}"
    );
    lab.send(&knock(&carol, &[SERVICE], unix_now()), false, 1);
    lab.wait_log(&["reason=state_unavailable", "nickname=carol"]);

    // kill -9; the disk comes back read-only; the daemon starts on it, refuses knocks, and the
    // captured packet (recorded before the failure) stays refused.
    lab.kill9();
    disk.repair_read_only();
    other.start(&mut lab);
    other.send(&captured);
    lab.wait_log(&["nickname=alice", "knock rejected"]);
    assert_eq!(accepted(&lab, "alice"), 0, "{}", lab.run_log());
    assert!(!lab.status().verifier.replay_state_durable);

    // Writable again: within the repair interval knocks work, no restart needed.
    disk.remount("rw");
    let recovered = wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
        Ok(lab.status().verifier.replay_state_durable)
    })
    .unwrap();
    assert!(recovered, "{}", lab.run_log());
    wait_into_step(0, 5);
    lab.send(&knock(&carol, &[SERVICE], unix_now()), false, 1);
    lab.wait_log(&["knock accepted", "nickname=carol"]);
    drop(lab.daemon.take());
    drop(disk);
}

/// Builds the `LD_PRELOAD` shim `tests/shim/NAME.c` into `dir` with the system's C compiler.
fn build_shim(dir: &Path, name: &str) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("shim/{name}.c"));
    let lib = dir.join(format!("{name}.so"));
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&lib)
        .arg(&source)
        .arg("-ldl")
        .output()
        .unwrap_or_else(|e| panic!("cc (needed to build the {name} shim): {e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lib
}

/// Regression (one-time guarantee): with the daemon's clock moved +600 s for a few seconds and
/// back, or -95 s, then a restart, a replay from another address was accepted (the replay state
/// was pruned by wall-clock time). The daemon runs with an `LD_PRELOAD` shim that offsets its wall
/// clock by the seconds written in a file.
#[test]
fn a_clock_stepped_forward_and_back_never_revives_a_knock() {
    let mut lab = DaemonLab::new("rgc");
    let other = Other::new(&lab, 245);
    let alice = user("alice", 1);
    let bob = user("bob", 2);
    lab.write_config(&[&alice, &bob]);
    let shim = build_shim(&lab.file(""), "clock_offset");
    let offset = lab.file("clock-offset");
    let set_offset = |secs: i64| std::fs::write(&offset, secs.to_string()).unwrap();
    set_offset(0);
    lab.wrapper = vec![
        "/usr/bin/env".to_owned(),
        format!("LD_PRELOAD={}", shim.display()),
        format!("CAPYKNOCK_CLOCK_OFFSET_FILE={}", offset.display()),
    ];

    for (nickname, user, step) in [("alice", &alice, 600i64), ("bob", &bob, -95)] {
        // The whole sequence runs within the knock's TOTP window, so that only the replay
        // state can refuse the replay.
        wait_into_step(0, 22);
        other.start(&mut lab);
        let captured = knock(user, &[SERVICE], unix_now());
        lab.send(&captured, false, 1);
        lab.wait_log(&["knock accepted", &format!("nickname={nickname}")]);

        // Step the clock; prove the daemon sees it (a reload stamps its own clock); let the
        // repair ticks run on it; restart on it; step it back; replay.
        set_offset(step);
        let before = unix_now();
        assert!(
            lab.request(&capyknock::server::control::Request::Reload {})
                .ok
        );
        let seen = lab.status().config_loaded_at;
        assert!(
            seen.abs_diff(before.saturating_add_signed(step)) <= 5,
            "the shim did not move the daemon's clock: {seen} vs {before}{step:+}"
        );
        std::thread::sleep(Duration::from_secs(6));
        lab.kill9();
        other.start(&mut lab);
        set_offset(0);
        // The core moves the kernel pre-filter's time step back within a second.
        std::thread::sleep(Duration::from_secs(2));
        other.send(&captured);
        lab.send(&captured, false, 1);
        lab.wait_log(&["knock rejected", &format!("nickname={nickname}")]);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            accepted(&lab, nickname),
            0,
            "replay accepted after a clock step of {step:+} s:\n{}",
            lab.run_log()
        );
        assert!(
            lab.count_log(&["reason=replayed_packet", &format!("nickname={nickname}")]) >= 1,
            "the replay was not refused by the replay state:\n{}",
            lab.run_log()
        );
        lab.kill9();
    }
}
