//! The replay state on disk: one fixed-size record per user, overwritten in place before the
//! firewall opens for the knock it records, and flushed to the disk behind the knock path.
//!
//! `replay.slots` in the state directory is a header record followed by [`CAPACITY`] user
//! records of [`RECORD_LEN`] bytes each. The file is created once at full size (temporary
//! file, fsync, rename, fsync of the directory), so later updates never change its size or
//! its block map. Records are 64-byte aligned, so none straddles a 512-byte sector, and each
//! carries a CRC-32: a record torn by a power cut is detected, never misread.
//!
//! **Write behind, with a horizon.** Recording a use is a `pwrite` of 64 bytes: once it returns,
//! the page cache shows it to every later reader, a daemon restarted after `kill -9` included,
//! so the one-time guarantee across process crashes needs no flush. Only a power cut or a
//! reboot can lose writes the disk has not got yet. For those, the header holds a *horizon*: a
//! server time up to which this run may accept knocks, made durable *before* any knock is
//! accepted past it ([`HORIZON_LEAD`] seconds ahead, kept ahead of the clock every second
//! whether knocks come or not ([`ReplayStore::keep_ahead`]) and flushed by
//! [`super::replay_flusher`], so no knock waits for the disk unless that thread fell behind).
//! A knock accepted at server time `t` carries a timestamp below `t + 60 s` (checks 6 and 9 of
//! docs/PROTOCOL.md), so after a reboot that may have lost writes (the header names another
//! boot and holds a horizon, i.e. the last run did not stop cleanly) every timestamp below
//! `horizon + 60 s` is refused: a fence of at most [`HORIZON_LEAD`] + [`MAX_CLOCK_GAP`] seconds
//! after the crash, most of which the reboot itself uses up. A clean stop flushes everything and
//! clears the horizon, so a reboot after it has no fence; so has a restart in the same boot (the
//! page cache kept every write). Writes or flushes that fail (read-only file system, I/O error)
//! make the daemon refuse new grants until they succeed again. A full disk does not matter: the
//! file's blocks are allocated once, at creation.
//!
//! A missing file is created from a safe start (or from the version 1 `replay.json` of
//! capyknock 0.1, which is migrated and then removed); a damaged one is moved aside under the
//! damaged-file suffix (`.corrupt`, [`crate::private_file::move_aside`]) and replaced by a safe start
//! ([`ReplayState::safe_start`]).

use std::{
    collections::HashMap,
    fs,
    io::{self, Read as _},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use super::{
    replay_flusher::{self, FlushJob},
    state::{LoadOutcome, MAX_FILE_BYTES, keep_corrupt},
};
use crate::private_file::write_atomic;
use crate::protocol::{
    keys::UserId,
    payload::PacketId,
    replay::{self, ReplayState, Used},
};

/// File name in the state directory.
pub const FILE: &str = "replay.slots";
/// The version 1 file (capyknock 0.1), migrated at the first start of this version.
pub const V1_FILE: &str = "replay.json";
/// Length of the header and of each user record.
pub const RECORD_LEN: usize = 64;
/// User records in the file: as many as the replay state keeps ([`replay::CAPACITY`]).
pub const CAPACITY: usize = replay::CAPACITY;
/// Length of the whole file.
pub const FILE_LEN: usize = RECORD_LEN * (1 + CAPACITY);

/// How far ahead of the server's clock the durable horizon is set, in seconds.
pub const HORIZON_LEAD: u64 = 5;
/// The horizon is renewed (in the background) when less than this is left, in seconds.
const HORIZON_RENEW: u64 = 3;
/// The largest distance between a knock's timestamp and the server's clock at which it can be
/// accepted: checks 6 and 9 of docs/PROTOCOL.md keep `timestamp < now + 60 s`, whatever
/// `freshness` says.
pub const MAX_CLOCK_GAP: u64 = 60;
/// Where the kernel tells which boot this is.
#[cfg(target_os = "linux")]
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

const MAGIC: [u8; 4] = *b"CKrs";
const VERSION: u32 = 2;
/// Bytes covered by a record's CRC; the CRC is the last four bytes.
const CRC_AT: usize = RECORD_LEN - 4;

/// Why the replay state could not be made durable.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Creating the file failed.
    #[error("cannot create {path}")]
    Create {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Writing or flushing a record failed.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A state larger than the file (cannot happen: both hold [`CAPACITY`] records).
    #[error("{path} cannot hold more than {CAPACITY} users")]
    Full {
        /// The file.
        path: PathBuf,
    },
}

/// The open file and where each user's record is.
#[derive(Debug)]
pub struct ReplayStore {
    path: PathBuf,
    file: Arc<fs::File>,
    /// Each recorded user's record index and step.
    slots: HashMap<UserId, (usize, u64)>,
    /// Free record indices, highest first (records are handed out lowest first).
    free: Vec<usize>,
    /// The header as written.
    not_before: u64,
    floor_step: u64,
    /// The horizon in the header as written (0: none, after a clean stop).
    horizon: u64,
    boot_id: BootId,
    /// The horizon the disk is known to hold (raised by flushes).
    durable: Arc<AtomicU64>,
    /// Whether a flusher thread takes the flushes off the knock path.
    background: bool,
}

/// The kernel's id of the current boot (`None` where there is none: every start then counts
/// as a new boot).
type BootId = Option<[u8; 16]>;

/// What the header holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    not_before: u64,
    floor_step: u64,
    /// 0 after a clean stop (and in files of earlier builds, which flushed every record).
    horizon: u64,
    /// The boot the horizon was written in (all zeros: unknown).
    boot_id: [u8; 16],
}

impl ReplayStore {
    /// Reads the saved state from `dir`. Never fails: a missing file gives a safe start at
    /// `now_unix` (or the migrated version 1 state), a damaged one is moved aside and gives a
    /// safe start; both are logged. The flag says whether the file on disk can be reused as it
    /// is by [`ReplayStore::open`] (otherwise use [`ReplayStore::create`]).
    /// After a reboot that may have lost writes, the state refuses every timestamp below the
    /// saved horizon plus [`MAX_CLOCK_GAP`] (logged).
    #[must_use]
    pub fn load(dir: &Path, now_unix: u64) -> (ReplayState, LoadOutcome, bool) {
        Self::load_in_boot(dir, now_unix, current_boot_id())
    }

    fn load_in_boot(dir: &Path, now_unix: u64, boot: BootId) -> (ReplayState, LoadOutcome, bool) {
        let path = dir.join(FILE);
        match read_file(&path, boot) {
            Ok(Some((state, fence))) => {
                tracing::info!(path = %path.display(), users = state.len(), "replay state loaded");
                if let Some(until) = fence {
                    tracing::warn!(
                        until = %crate::log_fields::Until(Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(until))),
                        secs_from_now = until.saturating_sub(now_unix),
                        "the machine restarted while the daemon was running (no clean stop): \
                         knocks dated before the fence are refused, so none whose record a power \
                         cut may have lost can be replayed; fresh knocks work after it"
                    );
                }
                (state, LoadOutcome::Loaded, true)
            }
            Ok(None) => {
                if let Some(state) = migrate_v1(dir) {
                    return (state, LoadOutcome::Loaded, false);
                }
                tracing::warn!(
                    path = %path.display(),
                    "no saved replay state (first start, or the file was deleted): knocks made \
                     before now are refused, new knocks work normally"
                );
                (
                    ReplayState::safe_start(now_unix),
                    LoadOutcome::Missing,
                    false,
                )
            }
            Err(reason) => {
                let kept_as = keep_corrupt(&path);
                tracing::warn!(
                    path = %path.display(),
                    %reason,
                    kept_as = %crate::log_fields::OptPath(kept_as.as_deref()),
                    "saved replay state is unusable: starting safe, knocks dated before a minute \
                     from now are refused (one of them could have been accepted before), new \
                     knocks work after that"
                );
                let outcome = LoadOutcome::Corrupt { reason, kept_as };
                // The damage may come from a power cut (a record torn on its way to the disk),
                // so the fence is the reboot's: a knock accepted before it carries a
                // timestamp below the crash time plus the clock gap.
                let not_before = now_unix.saturating_add(MAX_CLOCK_GAP);
                (ReplayState::safe_start(not_before), outcome, false)
            }
        }
    }

    /// Opens the existing file (which [`ReplayStore::load`] found valid) for updates in place,
    /// and makes a first horizon from `now_unix` durable.
    pub fn open(dir: &Path, state: &ReplayState, now_unix: u64) -> Result<Self, StoreError> {
        let path = dir.join(FILE);
        let mut store = Self::open_file(path, state)?;
        // The same layout `load` just read: record i holds the user at i (checked again, in
        // case the file changed in between: on any difference, rewrite the records).
        let bytes = fs::read(&store.path).map_err(|source| StoreError::Create {
            path: store.path.clone(),
            source,
        })?;
        store.free.clear();
        for i in (1..=CAPACITY).rev() {
            let record = bytes
                .get(i * RECORD_LEN..(i + 1) * RECORD_LEN)
                .map_or(Record::Damaged, decode_used);
            match record {
                Record::Used(u) if state.last_used(&u.user) == Some(&u) => {
                    store.slots.insert(u.user, (i, u.step));
                }
                _ => store.free.push(i),
            }
        }
        let missing: Vec<Used> = state
            .iter()
            .filter(|u| !store.slots.contains_key(&u.user))
            .copied()
            .collect();
        for used in &missing {
            let slot = store.take_slot()?;
            store.slots.insert(used.user, (slot, used.step));
            store.write_record(slot, &encode_used(used))?;
        }
        store.begin(now_unix)?;
        Ok(store)
    }

    /// Writes a complete new file holding `state` (atomically: temporary file, fsync, rename,
    /// fsync of the directory), removes a migrated version 1 file, opens it for updates and
    /// makes a first horizon from `now_unix` durable.
    pub fn create(dir: &Path, state: &ReplayState, now_unix: u64) -> Result<Self, StoreError> {
        let path = dir.join(FILE);
        if state.len() > CAPACITY {
            return Err(StoreError::Full { path });
        }
        let mut bytes = vec![0u8; FILE_LEN];
        put_record(
            &mut bytes,
            0,
            &encode_header(&Header {
                not_before: state.not_before(),
                floor_step: state.floor_step(),
                horizon: 0,
                boot_id: [0; 16],
            }),
        );
        let mut slots = HashMap::new();
        for (i, used) in (1..=CAPACITY).zip(state.iter()) {
            put_record(&mut bytes, i, &encode_used(used));
            slots.insert(used.user, (i, used.step));
        }
        write_atomic(&path, &bytes).map_err(|source| StoreError::Create {
            path: path.clone(),
            source,
        })?;
        let v1 = dir.join(V1_FILE);
        if v1.exists() {
            match fs::remove_file(&v1) {
                Ok(()) => {
                    tracing::info!(path = %v1.display(), "version 1 replay state migrated and removed");
                }
                Err(err) => {
                    tracing::warn!(path = %v1.display(), error = %err, "cannot remove the migrated version 1 replay state");
                }
            }
        }
        let mut store = Self::open_file(path, state)?;
        // Records 1..=len are taken, in order.
        store.free = (slots.len() + 1..=CAPACITY).rev().collect();
        store.slots = slots;
        store.begin(now_unix)?;
        Ok(store)
    }

    /// Opens `path` for reads and writes in place, with every record free.
    fn open_file(path: PathBuf, state: &ReplayState) -> Result<Self, StoreError> {
        match fs::OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => Ok(Self::with_file(path, file, state)),
            Err(source) => Err(StoreError::Create { path, source }),
        }
    }

    fn with_file(path: PathBuf, file: fs::File, state: &ReplayState) -> Self {
        Self {
            path,
            file: Arc::new(file),
            slots: HashMap::new(),
            free: (1..=CAPACITY).rev().collect(),
            not_before: state.not_before(),
            floor_step: state.floor_step(),
            horizon: 0,
            boot_id: current_boot_id(),
            durable: Arc::new(AtomicU64::new(0)),
            background: replay_flusher::start(),
        }
    }

    /// The first horizon of this run, durable before anything is accepted (with the state's
    /// fence, which must outlive this run if it crashes too).
    fn begin(&mut self, now_unix: u64) -> Result<(), StoreError> {
        self.horizon = now_unix.saturating_add(HORIZON_LEAD);
        self.write_header()?;
        self.sync()?;
        self.durable.store(self.horizon, Ordering::Release);
        Ok(())
    }

    /// The file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records these uses, verified at server time `verified_at` (seconds): each user's record
    /// is overwritten in place (visible to any later reader at once), and the durable horizon
    /// is checked to cover `verified_at`, flushing here only if it does not (the first knock
    /// after a quiet spell, or a background flush that is late or failed); the disk gets the
    /// records from the background flush. Only when this returns `Ok` may their grants be
    /// applied.
    /// A new user takes a free record; when none is left, the record with the lowest step is
    /// evicted, after the floor has been raised to its step and flushed (as the in-memory
    /// state does, [`ReplayState::record`]).
    pub fn write(&mut self, uses: &[Used], verified_at: u64) -> Result<(), StoreError> {
        if uses.is_empty() {
            return Ok(());
        }
        for used in uses {
            let slot = match self.slots.get(&used.user) {
                Some(&(slot, _)) => slot,
                None => self.take_slot()?,
            };
            self.slots.insert(used.user, (slot, used.step));
            self.write_record(slot, &encode_used(used))?;
        }
        self.cover(verified_at)
    }

    /// Makes sure the durable horizon is past `at` before anything verified at `at` is granted,
    /// renewing the horizon ahead of time.
    fn cover(&mut self, at: u64) -> Result<(), StoreError> {
        self.renew_horizon(at)?;
        if !self.background || self.durable.load(Ordering::Acquire) <= at {
            return self.flush_now();
        }
        self.flush_behind()
    }

    /// Keeps the durable horizon ahead of the clock while no knock comes (the daemon calls it
    /// every second): the first knock after a quiet spell then finds its time covered and
    /// does not wait for the disk. It costs one 64-byte write and one background flush every
    /// `HORIZON_LEAD - HORIZON_RENEW` seconds.
    pub fn keep_ahead(&mut self, now_unix: u64) -> Result<(), StoreError> {
        if !self.renew_horizon(now_unix)? {
            return Ok(());
        }
        if self.background {
            self.flush_behind()
        } else {
            self.flush_now()
        }
    }

    /// Moves the horizon [`HORIZON_LEAD`] seconds past `at` (written, not flushed) when less
    /// than [`HORIZON_RENEW`] is left; whether it did.
    fn renew_horizon(&mut self, at: u64) -> Result<bool, StoreError> {
        if self.horizon >= at.saturating_add(HORIZON_RENEW) {
            return Ok(false);
        }
        self.horizon = at.saturating_add(HORIZON_LEAD);
        self.write_header()?;
        Ok(true)
    }

    /// Flushes here and publishes the horizon as durable.
    fn flush_now(&mut self) -> Result<(), StoreError> {
        self.sync()?;
        self.durable.fetch_max(self.horizon, Ordering::AcqRel);
        Ok(())
    }

    /// Asks the flusher thread to flush what was written (here if it cannot take the job).
    fn flush_behind(&mut self) -> Result<(), StoreError> {
        let job = FlushJob {
            file: Arc::clone(&self.file),
            horizon: self.horizon,
            durable: Arc::clone(&self.durable),
        };
        if replay_flusher::request(job) {
            Ok(())
        } else {
            self.flush_now()
        }
    }

    /// A clean stop: everything flushed, then the horizon cleared (flushed too), so that a
    /// reboot after it needs no fence.
    pub fn close(&mut self) -> Result<(), StoreError> {
        self.sync()?;
        self.horizon = 0;
        self.write_header()?;
        self.sync()
    }

    /// A record for a new user: a free one, or the lowest step's, evicted under a raised floor.
    fn take_slot(&mut self) -> Result<usize, StoreError> {
        if let Some(slot) = self.free.pop() {
            return Ok(slot);
        }
        let (user, slot, step) = self
            .slots
            .iter()
            .map(|(user, &(slot, step))| (*user, slot, step))
            .min_by_key(|&(_, _, step)| step)
            .ok_or_else(|| StoreError::Full {
                path: self.path.clone(),
            })?;
        self.write_fence(self.not_before, self.floor_step.max(step))?;
        self.slots.remove(&user);
        Ok(slot)
    }

    /// Makes the state's fence durable: its `not_before` and its floor.
    pub fn write_fence(&mut self, not_before: u64, floor_step: u64) -> Result<(), StoreError> {
        self.not_before = not_before;
        self.floor_step = floor_step;
        self.write_header()?;
        self.sync()
    }

    fn write_header(&mut self) -> Result<(), StoreError> {
        let header = Header {
            not_before: self.not_before,
            floor_step: self.floor_step,
            horizon: self.horizon,
            boot_id: self.boot_id.unwrap_or_default(),
        };
        self.write_record(0, &encode_header(&header))
    }

    fn write_record(&mut self, index: usize, record: &[u8; RECORD_LEN]) -> Result<(), StoreError> {
        write_all_at(&self.file, record, (index * RECORD_LEN) as u64).map_err(|source| {
            StoreError::Write {
                path: self.path.clone(),
                source,
            }
        })
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        self.file.sync_data().map_err(|source| StoreError::Write {
            path: self.path.clone(),
            source,
        })
    }
}

/// The id of this boot, where the system gives one: Linux's kernel boot id; on Windows a
/// random id kept in a volatile registry key, which does not survive a shutdown or a power
/// cut ([`super::win_host::boot_id`]).
fn current_boot_id() -> BootId {
    #[cfg(target_os = "linux")]
    {
        let text = fs::read_to_string(BOOT_ID).ok()?;
        let hex: String = text.trim().chars().filter(|c| *c != '-').collect();
        let value = u128::from_str_radix(&hex, 16).ok()?;
        (hex.len() == 32 && value != 0).then(|| value.to_be_bytes())
    }
    #[cfg(windows)]
    {
        super::win_host::boot_id()
    }
    #[cfg(not(any(target_os = "linux", windows)))]
    {
        None
    }
}

/// The fence a saved header needs in the boot `boot`: `Some(not_before)` when the run that
/// wrote it did not stop cleanly and the machine may have restarted since (another boot, or
/// either boot unknown), so writes that never reached the disk may be missing.
fn reboot_fence(header: &Header, boot: BootId) -> Option<u64> {
    if header.horizon == 0 {
        return None;
    }
    let same_boot = boot.is_some_and(|b| b == header.boot_id && b != [0; 16]);
    (!same_boot).then(|| header.horizon.saturating_add(MAX_CLOCK_GAP))
}

/// Reads and checks the file: `Ok(None)` if it does not exist, `Err(reason)` if it is damaged;
/// else the state, with the fence [`reboot_fence`] asks for applied (and returned).
type Loaded = (ReplayState, Option<u64>);

fn read_file(path: &Path, boot: BootId) -> Result<Option<Loaded>, String> {
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read it: {e}")),
    };
    let mut bytes = Vec::with_capacity(FILE_LEN);
    file.take(MAX_FILE_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read it: {e}"))?;
    let (mut header, used) = decode_file(&bytes)?;
    let fence = reboot_fence(&header, boot).filter(|&until| until > header.not_before);
    if let Some(until) = fence {
        header.not_before = until;
    }
    Ok(Some((
        ReplayState::from_parts(header.not_before, header.floor_step, used),
        fence,
    )))
}

/// Decodes a whole file: header, then every record; any damage refuses all of it.
fn decode_file(bytes: &[u8]) -> Result<(Header, Vec<Used>), String> {
    if bytes.len() != FILE_LEN {
        return Err(format!("it is {} bytes long, not {FILE_LEN}", bytes.len()));
    }
    let header = bytes
        .get(..RECORD_LEN)
        .and_then(|h| <&[u8; RECORD_LEN]>::try_from(h).ok())
        .ok_or("it has no header")?;
    let header = decode_header(header)?;
    let mut used = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, record) in bytes.chunks_exact(RECORD_LEN).enumerate().skip(1) {
        let record = <&[u8; RECORD_LEN]>::try_from(record).map_err(|_| "short record")?;
        match decode_used(record) {
            Record::Damaged => return Err(format!("record {i} is damaged (CRC mismatch)")),
            Record::Free => {}
            Record::Used(u) => {
                if !seen.insert(u.user) {
                    return Err(format!("record {i} repeats a user"));
                }
                used.push(u);
            }
        }
    }
    Ok((header, used))
}

/// Header layout: magic, version, record length, capacity (4 bytes each), `not_before`,
/// floor step, horizon (8 bytes each, little endian), boot id (16), zeros, CRC-32. Files of
/// earlier builds have zeros where the horizon and boot id are: a clean stop.
fn encode_header(h: &Header) -> [u8; RECORD_LEN] {
    let mut r = [0u8; RECORD_LEN];
    r[..4].copy_from_slice(&MAGIC);
    r[4..8].copy_from_slice(&VERSION.to_le_bytes());
    r[8..12].copy_from_slice(&(RECORD_LEN as u32).to_le_bytes());
    r[12..16].copy_from_slice(&(CAPACITY as u32).to_le_bytes());
    r[16..24].copy_from_slice(&h.not_before.to_le_bytes());
    r[24..32].copy_from_slice(&h.floor_step.to_le_bytes());
    r[32..40].copy_from_slice(&h.horizon.to_le_bytes());
    r[40..56].copy_from_slice(&h.boot_id);
    seal(&mut r);
    r
}

fn decode_header(r: &[u8; RECORD_LEN]) -> Result<Header, String> {
    if !crc_ok(r) {
        return Err("its header is damaged (CRC mismatch)".into());
    }
    let (magic, rest) = r.split_first_chunk::<4>().ok_or("short header")?;
    if *magic != MAGIC {
        return Err("it is not a capyknock replay state file".into());
    }
    let (version, rest) = rest.split_first_chunk::<4>().ok_or("short header")?;
    let (record_len, rest) = rest.split_first_chunk::<4>().ok_or("short header")?;
    let (capacity, rest) = rest.split_first_chunk::<4>().ok_or("short header")?;
    let (not_before, rest) = rest.split_first_chunk::<8>().ok_or("short header")?;
    let (floor_step, rest) = rest.split_first_chunk::<8>().ok_or("short header")?;
    let (horizon, rest) = rest.split_first_chunk::<8>().ok_or("short header")?;
    let (boot_id, _) = rest.split_first_chunk::<16>().ok_or("short header")?;
    let version = u32::from_le_bytes(*version);
    if version != VERSION {
        return Err(format!(
            "it has version {version}, this build reads version {VERSION}"
        ));
    }
    if u32::from_le_bytes(*record_len) as usize != RECORD_LEN
        || u32::from_le_bytes(*capacity) as usize != CAPACITY
    {
        return Err("its layout is not this build's".into());
    }
    Ok(Header {
        not_before: u64::from_le_bytes(*not_before),
        floor_step: u64::from_le_bytes(*floor_step),
        horizon: u64::from_le_bytes(*horizon),
        boot_id: *boot_id,
    })
}

fn encode_used(u: &Used) -> [u8; RECORD_LEN] {
    let mut r = [0u8; RECORD_LEN];
    r[..16].copy_from_slice(&u.user.0);
    r[16..24].copy_from_slice(&u.step.to_le_bytes());
    r[24..40].copy_from_slice(&u.packet_id.0);
    seal(&mut r);
    r
}

/// What a user record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Record {
    /// All zeros: no user.
    Free,
    /// A user's last use.
    Used(Used),
    /// Wrong length or CRC: torn by a power cut, or changed by something else.
    Damaged,
}

fn decode_used(r: &[u8]) -> Record {
    let Ok(r) = <&[u8; RECORD_LEN]>::try_from(r) else {
        return Record::Damaged;
    };
    if r.iter().all(|&b| b == 0) {
        return Record::Free;
    }
    if !crc_ok(r) {
        return Record::Damaged;
    }
    let (user, rest) = r.split_first_chunk::<16>().unwrap_or((&[0; 16], &[]));
    let (step, rest) = rest.split_first_chunk::<8>().unwrap_or((&[0; 8], &[]));
    let Some((packet_id, _)) = rest.split_first_chunk::<16>() else {
        return Record::Damaged;
    };
    Record::Used(Used {
        user: UserId(*user),
        step: u64::from_le_bytes(*step),
        packet_id: PacketId(*packet_id),
    })
}

fn seal(r: &mut [u8; RECORD_LEN]) {
    let (body, crc) = r.split_at_mut(CRC_AT);
    crc.copy_from_slice(&crc32fast::hash(body).to_le_bytes());
}

fn crc_ok(r: &[u8; RECORD_LEN]) -> bool {
    let (body, crc) = r.split_at(CRC_AT);
    crc32fast::hash(body).to_le_bytes() == crc
}

fn put_record(bytes: &mut [u8], index: usize, record: &[u8; RECORD_LEN]) {
    if let Some(dst) = bytes.get_mut(index * RECORD_LEN..(index + 1) * RECORD_LEN) {
        dst.copy_from_slice(record);
    }
}

#[cfg(unix)]
fn write_all_at(file: &fs::File, buf: &[u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
}

#[cfg(windows)]
fn write_all_at(file: &fs::File, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt as _;
    while !buf.is_empty() {
        match file.seek_write(buf, offset) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                buf = buf.get(n..).unwrap_or_default();
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The version 1 file of capyknock 0.1: used (user, step) pairs, packet ids, a start fence.
#[derive(Debug, serde::Deserialize)]
struct V1Snapshot {
    version: u32,
    not_before: u64,
    steps: Vec<V1Step>,
    #[expect(
        dead_code,
        reason = "read to accept the file; every packet's step is in `steps`"
    )]
    packets: Vec<serde::de::IgnoredAny>,
}

#[derive(Debug, serde::Deserialize)]
struct V1Step {
    user: UserId,
    step: u64,
}

/// Reads `replay.json` of capyknock 0.1 into the new state: each user's highest used step
/// (every packet id it lists belongs to a step it also lists, so the steps cover the packets).
/// `None` if there is none or it is unusable (then moved aside, and the start is safe).
fn migrate_v1(dir: &Path) -> Option<ReplayState> {
    let path = dir.join(V1_FILE);
    let bytes = match fs::File::open(&path) {
        Ok(f) => {
            let mut bytes = Vec::new();
            f.take(MAX_FILE_BYTES).read_to_end(&mut bytes).ok()?;
            bytes
        }
        Err(_) => return None,
    };
    let snapshot = serde_json::from_slice::<V1Snapshot>(&bytes)
        .map_err(|e| e.to_string())
        .and_then(|s| {
            if s.version == 1 {
                Ok(s)
            } else {
                Err(format!("version {} is not 1", s.version))
            }
        });
    match snapshot {
        Ok(s) => {
            let used = s.steps.iter().map(|e| Used {
                user: e.user,
                step: e.step,
                // Version 1 did not tie packet ids to users; the steps refuse those packets.
                packet_id: PacketId([0; 16]),
            });
            let state = ReplayState::from_parts(s.not_before, 0, used);
            tracing::info!(path = %path.display(), users = state.len(), "migrating the version 1 replay state");
            Some(state)
        }
        Err(reason) => {
            let kept_as = keep_corrupt(&path);
            tracing::warn!(path = %path.display(), %reason, kept_as = %crate::log_fields::OptPath(kept_as.as_deref()), "version 1 replay state is unusable; starting safe");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn used(user: u8, step: u64, packet: u8) -> Used {
        Used {
            user: UserId([user; 16]),
            step,
            packet_id: PacketId([packet; 16]),
        }
    }

    fn reload(dir: &Path) -> (ReplayState, LoadOutcome, bool) {
        ReplayStore::load(dir, NOW)
    }

    /// `store` as if written in boot A: the same boot for [`reload_in_a`] on every platform
    /// (where the system gives no boot id, every start is one after a possible reboot).
    fn in_boot_a(mut store: ReplayStore) -> ReplayStore {
        store.boot_id = BOOT_A;
        store.write_header().unwrap();
        store
    }

    /// [`reload`] in boot A.
    fn reload_in_a(dir: &Path, now: u64) -> (ReplayState, LoadOutcome, bool) {
        ReplayStore::load_in_boot(dir, now, BOOT_A)
    }

    #[test]
    fn records_written_are_read_back_after_a_restart() {
        let tmp = tempfile::tempdir().unwrap();
        let (state, outcome, reusable) = reload(tmp.path());
        assert_eq!(outcome, LoadOutcome::Missing);
        assert!(!reusable);
        assert_eq!(state.not_before(), NOW);
        let mut store = in_boot_a(ReplayStore::create(tmp.path(), &state, NOW).unwrap());
        assert_eq!(fs::metadata(store.path()).unwrap().len(), FILE_LEN as u64);
        store.write(&[used(1, 10, 1), used(2, 20, 2)], NOW).unwrap();
        store.write(&[used(1, 11, 3)], NOW).unwrap();
        drop(store);

        let (back, outcome, reusable) = reload_in_a(tmp.path(), NOW);
        assert_eq!(outcome, LoadOutcome::Loaded);
        assert!(reusable);
        assert_eq!(back.not_before(), NOW);
        assert_eq!(back.last_used(&UserId([1; 16])), Some(&used(1, 11, 3)));
        assert_eq!(back.last_used(&UserId([2; 16])), Some(&used(2, 20, 2)));
        assert_eq!(back.len(), 2);

        // Reopened in place, it keeps each user's record where it was.
        let mut store = in_boot_a(ReplayStore::open(tmp.path(), &back, NOW).unwrap());
        store.write(&[used(3, 5, 4)], NOW).unwrap();
        drop(store);
        assert_eq!(reload_in_a(tmp.path(), NOW).0.len(), 3);
        // The file never changes size.
        assert_eq!(
            fs::metadata(tmp.path().join(FILE)).unwrap().len(),
            FILE_LEN as u64
        );
    }

    const BOOT_A: BootId = Some([0xa; 16]);
    const BOOT_B: BootId = Some([0xb; 16]);

    /// A store written in boot A at `NOW`, left without a clean stop (a crash).
    fn crashed_store(dir: &Path) -> Vec<u8> {
        let mut store = ReplayStore::create(dir, &ReplayState::safe_start(0), NOW).unwrap();
        store.boot_id = BOOT_A;
        store.write_header().unwrap();
        store.write(&[used(1, 10, 1)], NOW).unwrap();
        drop(store);
        fs::read(dir.join(FILE)).unwrap()
    }

    #[test]
    fn after_a_reboot_without_a_clean_stop_the_horizon_fences_old_timestamps() {
        let tmp = tempfile::tempdir().unwrap();
        crashed_store(tmp.path());
        // Same boot (kill -9 and restart): the page cache kept every write, no fence.
        let (state, _, _) = ReplayStore::load_in_boot(tmp.path(), NOW + 30, BOOT_A);
        assert_eq!(state.not_before(), 0);
        assert_eq!(state.len(), 1);
        // Another boot: the horizon (NOW + lead, made durable first) plus the clock gap.
        let (state, outcome, reusable) = ReplayStore::load_in_boot(tmp.path(), NOW + 30, BOOT_B);
        assert_eq!(outcome, LoadOutcome::Loaded);
        assert!(reusable);
        assert_eq!(state.not_before(), NOW + HORIZON_LEAD + MAX_CLOCK_GAP);
        // An unknown boot counts as another one.
        let (state, _, _) = ReplayStore::load_in_boot(tmp.path(), NOW + 30, None);
        assert_eq!(state.not_before(), NOW + HORIZON_LEAD + MAX_CLOCK_GAP);
    }

    /// On Linux (the kernel's boot id) and Windows (the volatile registry key; this runs
    /// under Wine): a daemon killed and restarted in the same boot gets no fence, as the file
    /// cache kept every write.
    #[cfg(any(target_os = "linux", windows))]
    #[test]
    fn a_restart_in_this_boot_after_a_crash_needs_no_fence() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = ReplayStore::create(tmp.path(), &ReplayState::safe_start(0), NOW).unwrap();
        assert!(store.boot_id.is_some(), "no boot id on this system");
        store.write(&[used(1, 10, 1)], NOW).unwrap();
        // Dropped without `close`: the horizon stays in the header, as after a kill.
        drop(store);
        let (state, outcome, _) = ReplayStore::load(tmp.path(), NOW + 30);
        assert_eq!(outcome, LoadOutcome::Loaded);
        assert_eq!(state.not_before(), 0);
        assert_eq!(state.last_used(&UserId([1; 16])), Some(&used(1, 10, 1)));
    }

    #[test]
    fn the_fence_is_saved_so_a_second_crash_keeps_it() {
        let tmp = tempfile::tempdir().unwrap();
        crashed_store(tmp.path());
        let (state, _, _) = ReplayStore::load_in_boot(tmp.path(), NOW + 30, BOOT_B);
        let fence = state.not_before();
        let mut store = ReplayStore::open(tmp.path(), &state, NOW + 30).unwrap();
        store.boot_id = BOOT_B;
        store.write_header().unwrap();
        drop(store);
        // Killed again in boot B, restarted in boot B: no new fence, the old one stays.
        let (state, _, _) = ReplayStore::load_in_boot(tmp.path(), NOW + 31, BOOT_B);
        assert_eq!(state.not_before(), fence);
    }

    #[test]
    fn a_clean_stop_needs_no_fence_after_a_reboot() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = ReplayStore::create(tmp.path(), &ReplayState::safe_start(0), NOW).unwrap();
        store.boot_id = BOOT_A;
        store.write(&[used(1, 10, 1)], NOW).unwrap();
        store.close().unwrap();
        drop(store);
        let (state, _, _) = ReplayStore::load_in_boot(tmp.path(), NOW + 30, BOOT_B);
        assert_eq!(state.not_before(), 0);
        assert_eq!(state.last_used(&UserId([1; 16])), Some(&used(1, 10, 1)));
    }

    #[test]
    fn files_of_earlier_builds_need_no_fence() {
        // Earlier builds flushed every record before its grant and wrote zeros where the
        // horizon and boot id are now.
        let tmp = tempfile::tempdir().unwrap();
        let mut bytes = crashed_store(tmp.path());
        let header = Header {
            not_before: 7,
            floor_step: 0,
            horizon: 0,
            boot_id: [0; 16],
        };
        put_record(&mut bytes, 0, &encode_header(&header));
        fs::write(tmp.path().join(FILE), &bytes).unwrap();
        let (state, outcome, _) = ReplayStore::load_in_boot(tmp.path(), NOW + 30, BOOT_B);
        assert_eq!(outcome, LoadOutcome::Loaded);
        assert_eq!(state.not_before(), 7);
    }

    #[test]
    fn the_durable_horizon_always_covers_what_is_granted() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = ReplayStore::create(tmp.path(), &ReplayState::safe_start(0), NOW).unwrap();
        let durable = |s: &ReplayStore| s.durable.load(Ordering::Acquire);
        assert_eq!(durable(&store), NOW + HORIZON_LEAD);
        for (i, at) in [NOW, NOW + 1, NOW + 3, NOW + 4, NOW + 30, NOW + 31]
            .into_iter()
            .enumerate()
        {
            store.write(&[used(1, 10 + i as u64, 1)], at).unwrap();
            assert!(durable(&store) > at, "at {at}: durable {}", durable(&store));
            assert!(store.horizon >= at + HORIZON_RENEW, "at {at}: not renewed");
        }
        // After a quiet spell the knock path flushed itself: the horizon is durable at once.
        assert!(durable(&store) >= NOW + 30 + HORIZON_LEAD);
    }

    #[test]
    fn kept_ahead_while_idle_the_first_knock_after_a_quiet_spell_is_already_covered() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = ReplayStore::create(tmp.path(), &ReplayState::safe_start(0), NOW).unwrap();
        let durable = |s: &ReplayStore| s.durable.load(Ordering::Acquire);
        // Not due yet: nothing is written.
        store.keep_ahead(NOW + 1).unwrap();
        assert_eq!(store.horizon, NOW + HORIZON_LEAD);
        // A minute without knocks, the timer ticking every second.
        for t in NOW + 1..=NOW + 60 {
            store.keep_ahead(t).unwrap();
            assert!(store.horizon >= t + HORIZON_RENEW, "at {t}: not renewed");
        }
        // The flush runs behind; once it has, the next knock is covered without a flush of
        // its own (and the durable horizon is what the header on disk says).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while durable(&store) < store.horizon && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(durable(&store), store.horizon);
        assert!(durable(&store) > NOW + 60 + 1);
        let on_disk = fs::read(store.path()).unwrap();
        let header: [u8; RECORD_LEN] = on_disk[..RECORD_LEN].try_into().unwrap();
        assert_eq!(decode_header(&header).unwrap().horizon, store.horizon);
    }

    #[test]
    fn a_torn_record_is_detected_and_the_start_is_safe() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = ReplayStore::create(tmp.path(), &ReplayState::safe_start(0), NOW).unwrap();
        store.write(&[used(1, 10, 1)], NOW).unwrap();
        drop(store);
        let path = tmp.path().join(FILE);
        let mut bytes = fs::read(&path).unwrap();
        // Half of record 1 from a newer write, half from the old one.
        bytes[RECORD_LEN + 20] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let (state, outcome, reusable) = reload(tmp.path());
        assert!(
            matches!(outcome, LoadOutcome::Corrupt { .. }),
            "{outcome:?}"
        );
        assert!(!reusable);
        assert_eq!(state.not_before(), NOW + MAX_CLOCK_GAP);
        assert!(state.is_empty());
        assert!(!path.exists(), "the damaged file is moved aside");
    }

    #[test]
    fn damaged_files_are_refused() {
        let good = {
            let tmp = tempfile::tempdir().unwrap();
            let mut s = ReplayStore::create(tmp.path(), &ReplayState::safe_start(0), NOW).unwrap();
            s.write(&[used(1, 10, 1), used(2, 10, 2)], NOW).unwrap();
            fs::read(tmp.path().join(FILE)).unwrap()
        };
        assert!(decode_file(&good).is_ok());
        assert!(decode_file(&good[..good.len() - 1]).is_err());
        assert!(decode_file(&[]).is_err());
        let mut bad_magic = good.clone();
        bad_magic[0] = b'X';
        assert!(decode_file(&bad_magic).is_err());
        // The same user in two records.
        let mut twice = good.clone();
        twice.copy_within(RECORD_LEN..2 * RECORD_LEN, 2 * RECORD_LEN);
        assert!(decode_file(&twice).unwrap_err().contains("repeats"));
    }

    #[test]
    fn version_1_state_is_migrated_and_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let alice = "01".repeat(16);
        let v1 = format!(
            r#"{{"version":1,"not_before":{nb},"steps":[{{"user":"{alice}","step":7}},{{"user":"{alice}","step":9}}],"packets":[{{"id":"{p}","expires":5}}]}}"#,
            nb = NOW - 5,
            p = "02".repeat(16)
        );
        fs::write(tmp.path().join(V1_FILE), v1).unwrap();
        let (state, outcome, reusable) = reload(tmp.path());
        assert_eq!(outcome, LoadOutcome::Loaded);
        assert!(!reusable);
        assert_eq!(state.not_before(), NOW - 5);
        assert_eq!(state.last_used(&UserId([1; 16])).map(|u| u.step), Some(9));
        ReplayStore::create(tmp.path(), &state, NOW).unwrap();
        assert!(!tmp.path().join(V1_FILE).exists());
        assert_eq!(
            reload(tmp.path())
                .0
                .last_used(&UserId([1; 16]))
                .map(|u| u.step),
            Some(9)
        );
    }

    #[test]
    fn a_full_store_evicts_the_lowest_step_under_a_durable_floor() {
        let tmp = tempfile::tempdir().unwrap();
        let mut state = ReplayState::safe_start(0);
        let mut store = in_boot_a(ReplayStore::create(tmp.path(), &state, NOW).unwrap());
        let all: Vec<Used> = (0..CAPACITY)
            .map(|i| {
                let user = UserId((i as u128 + 1).to_le_bytes());
                state.record(user, 1_000 + i as u64, PacketId([1; 16]))
            })
            .collect();
        store.write(&all, NOW).unwrap();
        // One more user: memory and file both evict the lowest step (user 1, step 1000).
        let extra = state.record(UserId([0xee; 16]), 9_000, PacketId([2; 16]));
        store.write(&[extra], NOW).unwrap();
        drop(store);
        let (back, outcome, _) = reload_in_a(tmp.path(), NOW);
        assert_eq!(outcome, LoadOutcome::Loaded);
        assert_eq!(back, state);
        assert_eq!(back.floor_step(), 1_000);
        assert!(back.last_used(&UserId(1u128.to_le_bytes())).is_none());
    }

    #[test]
    fn a_knock_replayed_after_a_restart_is_refused() {
        use std::net::{IpAddr, Ipv4Addr};

        use crate::{
            ports::PortSpec,
            protocol::{
                keys::{TotpSecret, UserKey},
                packet::{KnockRequest, Randomness, build_knock},
                totp::Totp,
                users::{AllowIp, TotpMode, User, Users},
                verify::{RejectReason, Settings, Verdict, Verifier},
            },
        };
        let user = User {
            id: UserId([1; 16]),
            nickname: "alice".into(),
            key: UserKey::from_bytes([2; 32]),
            totp: TotpSecret::from_bytes([3; 20]),
            totp_mode: TotpMode::Prompt,
            ports: vec![PortSpec::tcp(22)],
            access: std::time::Duration::from_mins(5),
            allow_ip: AllowIp::Source,
        };
        let code = Totp::new(&user.totp).unwrap().code_at(NOW);
        let packet = build_knock(
            &user.id,
            &user.key,
            &code,
            &KnockRequest::default(),
            NOW,
            &Randomness::os().unwrap(),
        )
        .unwrap();
        let users = Users::new(vec![user]).unwrap();
        let src = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
        let other = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1));
        let tmp = tempfile::tempdir().unwrap();

        // First run: granted, its use made durable as the daemon does before the firewall.
        let (replay, _, _) = ReplayStore::load(tmp.path(), NOW - 60);
        let mut store = in_boot_a(ReplayStore::create(tmp.path(), &replay, NOW).unwrap());
        let mut v = Verifier::new(Settings::default(), replay);
        assert!(matches!(
            v.verify(&users, &packet, src, NOW),
            Verdict::Grant(_)
        ));
        store.write(&[v.take_used().unwrap()], NOW).unwrap();
        drop((v, store));

        // Second run (restart): the same packet, from anywhere, is refused, whatever the clock.
        for now in [NOW + 5, NOW - 25, NOW + 29] {
            let (replay, outcome, _) = reload_in_a(tmp.path(), now);
            assert_eq!(outcome, LoadOutcome::Loaded);
            let mut v = Verifier::new(Settings::default(), replay);
            let Verdict::Reject(r) = v.verify(&users, &packet, other, now) else {
                panic!("replay granted after restart at {now}");
            };
            assert_eq!(r.reason, RejectReason::ReplayedPacket);
        }

        // A reboot that lost the record (the disk holds the file as it was before the knock,
        // the header's horizon made durable at start): refused by the fence, from anywhere.
        let before_knock = {
            let dir = tempfile::tempdir().unwrap();
            let (replay, _, _) = ReplayStore::load(dir.path(), NOW - 60);
            let mut store = ReplayStore::create(dir.path(), &replay, NOW - 1).unwrap();
            store.boot_id = Some([0xa; 16]);
            store.write_header().unwrap();
            drop(store);
            fs::read(dir.path().join(FILE)).unwrap()
        };
        let saved = fs::read(tmp.path().join(FILE)).unwrap();
        fs::write(tmp.path().join(FILE), &before_knock).unwrap();
        for now in [NOW + 5, NOW + 29] {
            let (replay, _, _) = ReplayStore::load_in_boot(tmp.path(), now, Some([0xb; 16]));
            assert!(replay.is_empty(), "the record is lost");
            let mut v = Verifier::new(Settings::default(), replay);
            let Verdict::Reject(r) = v.verify(&users, &packet, other, now) else {
                panic!("replay granted after a reboot at {now}");
            };
            assert_eq!(r.reason, RejectReason::StaleTimestamp);
        }
        fs::write(tmp.path().join(FILE), &saved).unwrap();

        // Restart with the state file lost: still refused (safe start).
        fs::remove_file(tmp.path().join(FILE)).unwrap();
        let (replay, outcome, _) = ReplayStore::load(tmp.path(), NOW + 5);
        assert_eq!(outcome, LoadOutcome::Missing);
        let mut v = Verifier::new(Settings::default(), replay);
        let Verdict::Reject(r) = v.verify(&users, &packet, src, NOW + 5) else {
            panic!("replay granted after losing the state");
        };
        assert_eq!(r.reason, RejectReason::StaleTimestamp);
    }
}
