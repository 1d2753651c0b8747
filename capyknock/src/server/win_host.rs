//! What the Windows host tells about itself, for the daemon: where the `ProgramData` folder is,
//! which boot this is, and which addresses the host has.
//!
//! - [`program_data`]: the `ProgramData` folder as the shell knows it (`SHGetKnownFolderPath`
//!   with `FOLDERID_ProgramData`, read from the registry, so an administrator's console and the
//!   service, whose environments may differ, agree), else `%ProgramData%`, else
//!   `C:\ProgramData`. The one home of this path: the default config, state, log and client
//!   folders are all under [`data_dir`].
//! - [`boot_id`]: a random 16-byte id of this boot, kept in a *volatile* registry key
//!   ([`BOOT_KEY`], `REG_OPTION_VOLATILE`): Windows keeps such a key in memory only and drops it
//!   when the system shuts down or loses power, so the id changes exactly when the kernel's
//!   memory (and with it the file cache) did not survive. The replay store's fence uses it as
//!   Linux's `/proc/sys/kernel/random/boot_id` (docs/PROTOCOL.md section 7).
//! - [`addresses`]: every address of every adapter (`GetAdaptersAddresses` through the
//!   `if-addrs` crate), so a ban cannot cut the server off from itself.
//!
//! The only `unsafe` here is the Win32 calls behind the first two.

use std::{net::IpAddr, path::PathBuf};

use windows::{
    Win32::{
        Foundation::ERROR_SUCCESS,
        System::{
            Com::CoTaskMemFree,
            Registry::{
                HKEY, HKEY_LOCAL_MACHINE, KEY_QUERY_VALUE, KEY_SET_VALUE, REG_BINARY,
                REG_OPTION_VOLATILE, REG_VALUE_TYPE, RegCloseKey, RegCreateKeyExW,
                RegQueryValueExW, RegSetValueExW,
            },
        },
        UI::Shell::{FOLDERID_ProgramData, KF_FLAG_DEFAULT, SHGetKnownFolderPath},
    },
    core::{HSTRING, PCWSTR},
};

/// Where `ProgramData` is when neither the shell nor the environment says (a standard install).
pub const FALLBACK_PROGRAM_DATA: &str = r"C:\ProgramData";
/// The volatile registry key (under `HKEY_LOCAL_MACHINE`) holding this boot's id.
pub const BOOT_KEY: &str = r"SOFTWARE\capyknock\Boot";
/// The value in [`BOOT_KEY`] holding the id (16 random bytes).
const BOOT_VALUE: &str = "BootId";

/// The `ProgramData` folder (see the module docs for where it comes from).
#[must_use]
pub fn program_data() -> PathBuf {
    known_program_data()
        .or_else(|| std::env::var_os("ProgramData").map(PathBuf::from))
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| PathBuf::from(FALLBACK_PROGRAM_DATA))
}

/// `capyknock` in the `ProgramData` folder: the default home of the config, the state and the
/// service's logs.
#[must_use]
pub fn data_dir() -> PathBuf {
    program_data().join("capyknock")
}

/// `SHGetKnownFolderPath(FOLDERID_ProgramData)`, `None` if the shell cannot say.
fn known_program_data() -> Option<PathBuf> {
    // SAFETY: the GUID is a static of the windows crate; on success the returned string is
    // allocated by the shell, read once here and freed with CoTaskMemFree as documented.
    unsafe {
        let path = SHGetKnownFolderPath(&FOLDERID_ProgramData, KF_FLAG_DEFAULT, None).ok()?;
        let text = path.to_string();
        CoTaskMemFree(Some(path.0.cast_const().cast()));
        text.ok().filter(|t| !t.is_empty()).map(PathBuf::from)
    }
}

/// An open registry key, closed on drop.
struct Key(HKEY);

impl Drop for Key {
    fn drop(&mut self) {
        // SAFETY: the handle came from RegCreateKeyExW and is closed once, here.
        unsafe {
            let _ = RegCloseKey(self.0);
        }
    }
}

/// This boot's id: read from [`BOOT_KEY`], or made (16 random bytes) and stored there by the
/// first caller of this boot. `None` when the key cannot be opened or written (not an
/// administrator): every start then counts as one after a reboot, which is the safe side.
#[must_use]
pub fn boot_id() -> Option<[u8; 16]> {
    let key = open_boot_key()?;
    if let Some(id) = read_id(&key) {
        return Some(id);
    }
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).ok()?;
    if id == [0; 16] {
        return None;
    }
    // SAFETY: `key` is open with KEY_SET_VALUE; the data is a live 16-byte buffer.
    let set = unsafe {
        RegSetValueExW(
            key.0,
            &HSTRING::from(BOOT_VALUE),
            None,
            REG_BINARY,
            Some(&id),
        )
    };
    if set != ERROR_SUCCESS {
        tracing::debug!(error = ?set, key = BOOT_KEY, "cannot store this boot's id");
        return None;
    }
    // Read back: two daemons racing here (which the control pipe prevents) would both get the
    // value that stayed.
    read_id(&key)
}

/// Opens (creating it volatile if missing) [`BOOT_KEY`]. A key that exists already keeps the
/// volatility it was created with: volatile, since only this function creates it.
fn open_boot_key() -> Option<Key> {
    let mut key = HKEY::default();
    // SAFETY: every pointer is to a live local; the class is null and no security attributes
    // are passed (the key inherits HKLM\SOFTWARE's: administrators write, users read).
    let status = unsafe {
        RegCreateKeyExW(
            HKEY_LOCAL_MACHINE,
            &HSTRING::from(BOOT_KEY),
            None,
            PCWSTR::null(),
            REG_OPTION_VOLATILE,
            KEY_QUERY_VALUE | KEY_SET_VALUE,
            None,
            &raw mut key,
            None,
        )
    };
    if status == ERROR_SUCCESS {
        Some(Key(key))
    } else {
        tracing::debug!(error = ?status, key = BOOT_KEY, "cannot open the boot id's registry key");
        None
    }
}

/// The id in the key, if it holds a 16-byte binary value that is not all zeros.
fn read_id(key: &Key) -> Option<[u8; 16]> {
    let mut id = [0u8; 16];
    let mut len = 16u32;
    let mut kind = REG_VALUE_TYPE::default();
    // SAFETY: the buffer holds `len` bytes; every pointer is to a live local.
    let status = unsafe {
        RegQueryValueExW(
            key.0,
            &HSTRING::from(BOOT_VALUE),
            None,
            Some(&raw mut kind),
            Some(id.as_mut_ptr()),
            Some(&raw mut len),
        )
    };
    (status == ERROR_SUCCESS && kind == REG_BINARY && len == 16 && id != [0; 16]).then_some(id)
}

/// Every address of this host's adapters (loopback, link-local and down adapters included).
/// Empty, with a warning, if they cannot be listed.
#[must_use]
pub fn addresses() -> Vec<IpAddr> {
    match if_addrs::get_if_addrs() {
        Ok(interfaces) => interfaces.iter().map(if_addrs::Interface::ip).collect(),
        Err(err) => {
            tracing::warn!(error = %err, "cannot list this host's addresses");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs under Wine (tests/wine/runner): the shell's answer, an absolute path.
    #[test]
    fn program_data_is_the_shells_absolute_folder() {
        let dir = program_data();
        assert!(dir.is_absolute(), "{}", dir.display());
        assert_eq!(known_program_data().as_deref(), Some(dir.as_path()));
        assert!(data_dir().ends_with("capyknock"));
    }

    /// The id is made once per boot and then read back the same, by this and later processes.
    #[test]
    fn the_boot_id_is_stable_within_a_boot() {
        let first = boot_id().expect("a boot id (the runner is an administrator under Wine)");
        assert_ne!(first, [0; 16]);
        assert_eq!(boot_id(), Some(first));
        let key = open_boot_key().unwrap();
        assert_eq!(read_id(&key), Some(first));
    }

    #[test]
    fn the_hosts_addresses_include_loopback() {
        let all = addresses();
        assert!(
            all.iter().any(IpAddr::is_loopback),
            "no loopback address in {all:?}"
        );
    }
}
