//! Windows ACLs, written and read as SDDL (docs/WINDOWS.md):
//!
//! - the control pipe: `\\.\pipe\capyknock` is created with a DACL that admits SYSTEM and the
//!   Administrators group (full access) and, when `control_group` is set, that group (read and
//!   write), and nobody else; remote clients are refused. The Windows counterpart of the Unix
//!   socket's mode 0660 and group ([`PipeSecurity`]);
//! - `%ProgramData%\capyknock` and its state directory: SYSTEM and Administrators only,
//!   inherited by what is created inside ([`protect_dir`]);
//! - the Windows form of "a config readable by others is refused": a config or state directory
//!   whose DACL lets Everyone, Users or Authenticated Users read or write it is refused, with the
//!   `icacls` command that fixes it ([`check_private`], on top of `open_to_others`, a pure
//!   function over the SDDL text in [`super::sddl`]).
//!
//! The only `unsafe` here is the Win32 calls that convert between SDDL and security
//! descriptors, read and set a file's DACL and resolve a group's name to a SID.

use std::{ffi::c_void, io, path::Path};

use tokio::net::windows::named_pipe::{NamedPipeServer, ServerOptions};
use windows::{
    Win32::{
        Foundation::{HLOCAL, LocalFree},
        Security::{
            Authorization::{
                ConvertSecurityDescriptorToStringSecurityDescriptorW, ConvertSidToStringSidW,
                ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1,
            },
            DACL_SECURITY_INFORMATION, GetFileSecurityW, LookupAccountNameW,
            PROTECTED_DACL_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR, PSID, SECURITY_ATTRIBUTES,
            SID_NAME_USE, SetFileSecurityW,
        },
    },
    core::{HSTRING, PWSTR},
};

/// The security descriptor the pipe's instances are created with.
#[derive(Debug)]
pub struct PipeSecurity {
    descriptor: PSECURITY_DESCRIPTOR,
    sddl: String,
}

// SAFETY: the descriptor is allocated once by `ConvertStringSecurityDescriptorToSecurityDescriptorW`,
// only read afterwards (by `CreateNamedPipeW`), and freed once, in `Drop`.
unsafe impl Send for PipeSecurity {}
// SAFETY: as above: shared use only reads the descriptor.
unsafe impl Sync for PipeSecurity {}

/// The DACL in SDDL: protected (no inherited entries), SYSTEM and Administrators with full
/// access, the group (a SID string) with read and write.
#[must_use]
pub fn sddl(group_sid: Option<&str>) -> String {
    let base = "D:P(A;;GA;;;SY)(A;;GA;;;BA)";
    match group_sid {
        Some(sid) => format!("{base}(A;;GRGW;;;{sid})"),
        None => base.to_owned(),
    }
}

impl PipeSecurity {
    /// The descriptor for SYSTEM, Administrators and `group` (a local or domain group name).
    pub fn new(group: Option<&str>) -> io::Result<Self> {
        let sid = group.map(group_sid).transpose()?;
        Self::from_sddl(sddl(sid.as_deref()))
    }

    /// A descriptor from SDDL text.
    fn from_sddl(sddl: String) -> io::Result<Self> {
        let text = HSTRING::from(sddl.as_str());
        let mut descriptor = PSECURITY_DESCRIPTOR::default();
        // SAFETY: `text` is a NUL-terminated wide string that outlives the call; `descriptor`
        // is a valid out pointer; the result is freed with LocalFree in Drop.
        unsafe {
            ConvertStringSecurityDescriptorToSecurityDescriptorW(
                &text,
                SDDL_REVISION_1,
                &raw mut descriptor,
                None,
            )
        }
        .map_err(io::Error::other)?;
        Ok(Self { descriptor, sddl })
    }

    /// The DACL in SDDL, for logs and tests.
    #[must_use]
    pub fn sddl(&self) -> &str {
        &self.sddl
    }

    /// Creates one instance of the pipe `name` with this descriptor. `first`: fail if the pipe
    /// already exists (another daemon serves it).
    pub fn create(&self, name: &str, first: bool) -> io::Result<NamedPipeServer> {
        let mut attrs = SECURITY_ATTRIBUTES {
            nLength: u32::try_from(std::mem::size_of::<SECURITY_ATTRIBUTES>()).unwrap_or(u32::MAX),
            lpSecurityDescriptor: self.descriptor.0,
            bInheritHandle: false.into(),
        };
        let mut options = ServerOptions::new();
        options
            .first_pipe_instance(first)
            .reject_remote_clients(true);
        // SAFETY: `attrs` is a valid SECURITY_ATTRIBUTES whose descriptor lives as long as
        // `self`; CreateNamedPipeW only reads it during the call.
        unsafe {
            options.create_with_security_attributes_raw(name, (&raw mut attrs).cast::<c_void>())
        }
    }
}

impl Drop for PipeSecurity {
    fn drop(&mut self) {
        // SAFETY: allocated by ConvertStringSecurityDescriptorToSecurityDescriptorW with
        // LocalAlloc, freed exactly once here.
        unsafe {
            let _ = LocalFree(Some(HLOCAL(self.descriptor.0)));
        }
    }
}

/// SYSTEM and Administrators only, inherited by every file and directory created inside.
pub const ADMIN_ONLY_DIR: &str = "D:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)";

/// A private file: SYSTEM, Administrators and the file's owner (`OW`, Owner Rights: whoever
/// wrote it keeps access, an elevated admin or a user writing their own client profile), and
/// nobody else.
pub const PRIVATE_FILE: &str = "D:P(A;;FA;;;SY)(A;;FA;;;BA)(A;;FA;;;OW)";

/// Sets `dir`'s DACL to [`ADMIN_ONLY_DIR`] (protected: nothing inherited from the parent).
pub fn protect_dir(dir: &Path) -> io::Result<()> {
    set_protected_dacl(dir, ADMIN_ONLY_DIR)
}

/// Sets `file`'s DACL to [`PRIVATE_FILE`] (protected: nothing inherited from its folder, whose
/// entries may let Users or Everyone read it). `private_file` calls this on every file it
/// writes, before the secret bytes go in.
pub fn protect_file(file: &Path) -> io::Result<()> {
    set_protected_dacl(file, PRIVATE_FILE)
}

fn set_protected_dacl(path: &Path, sddl: &str) -> io::Result<()> {
    let security = PipeSecurity::from_sddl(sddl.to_owned())?;
    let wide = HSTRING::from(path.as_os_str());
    // SAFETY: `wide` is a NUL-terminated path and `security` a valid descriptor; both outlive
    // the call, which copies what it needs.
    unsafe {
        SetFileSecurityW(
            &wide,
            DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
            security.descriptor,
        )
    }
    .ok()
    .map_err(io::Error::other)
}

/// The DACL of `path` as SDDL text (`D:...`).
pub fn dacl_sddl(path: &Path) -> io::Result<String> {
    let wide = HSTRING::from(path.as_os_str());
    let info = DACL_SECURITY_INFORMATION.0;
    let mut needed = 0u32;
    // SAFETY: the sizing call: no buffer, length 0; it writes only `needed`.
    let _ = unsafe { GetFileSecurityW(&wide, info, None, 0, &raw mut needed) };
    if needed == 0 {
        return Err(io::Error::last_os_error());
    }
    // u64 words: aligned for the descriptor's fields.
    let mut buf = vec![0u64; (needed as usize).div_ceil(8)];
    let descriptor = PSECURITY_DESCRIPTOR(buf.as_mut_ptr().cast());
    // SAFETY: `buf` holds at least `needed` bytes and outlives the call.
    unsafe { GetFileSecurityW(&wide, info, Some(descriptor), needed, &raw mut needed) }
        .ok()
        .map_err(io::Error::other)?;
    let mut text = PWSTR::null();
    // SAFETY: `descriptor` is the self-relative descriptor just read; `text` receives a
    // LocalAlloc'd string, freed below after it is copied.
    unsafe {
        ConvertSecurityDescriptorToStringSecurityDescriptorW(
            descriptor,
            SDDL_REVISION_1,
            DACL_SECURITY_INFORMATION,
            &raw mut text,
            None,
        )
    }
    .map_err(io::Error::other)?;
    // SAFETY: `text` is the NUL-terminated string the call returned.
    let out = unsafe { text.to_string() }.map_err(io::Error::other);
    // SAFETY: allocated with LocalAlloc by the call, freed once.
    unsafe {
        let _ = LocalFree(Some(HLOCAL(text.0.cast())));
    }
    out
}

/// Refuses `path` (a config file or the state directory) when its DACL lets Everyone, Users or
/// Authenticated Users read or write it; the message names who and the `icacls` fix.
pub fn check_private(path: &Path, what: &str) -> Result<(), String> {
    let sddl = dacl_sddl(path).map_err(|e| {
        format!(
            "cannot read the permissions of {what} {}: {e}",
            path.display()
        )
    })?;
    match super::sddl::open_to_others(&sddl) {
        None => Ok(()),
        Some(who) => Err(format!(
            "{what} {} can be read or changed by {who}: it holds secret keys or replay state and \
             must be for SYSTEM and Administrators only; run (as Administrator) `{}`",
            path.display(),
            super::sddl::icacls_fix(&path.display().to_string(), path.is_dir())
        )),
    }
}

/// The SID of the account or group `name`, as an `S-1-...` string.
fn group_sid(name: &str) -> io::Result<String> {
    let wide = HSTRING::from(name);
    let mut sid_len = 0u32;
    let mut domain_len = 0u32;
    let mut kind = SID_NAME_USE::default();
    // SAFETY: the sizing call: null buffers with zero lengths; it only writes the lengths.
    let _ = unsafe {
        LookupAccountNameW(
            None,
            &wide,
            None,
            &raw mut sid_len,
            None,
            &raw mut domain_len,
            &raw mut kind,
        )
    };
    if sid_len == 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("control_group {name:?}: no such group on this machine or domain"),
        ));
    }
    let mut sid = vec![0u8; sid_len as usize];
    let mut domain = vec![0u16; domain_len.max(1) as usize];
    // SAFETY: both buffers have the sizes the sizing call returned, and outlive the call.
    unsafe {
        LookupAccountNameW(
            None,
            &wide,
            Some(PSID(sid.as_mut_ptr().cast())),
            &raw mut sid_len,
            Some(PWSTR(domain.as_mut_ptr())),
            &raw mut domain_len,
            &raw mut kind,
        )
    }
    .map_err(|e| io::Error::other(format!("control_group {name:?}: {e}")))?;
    let mut text = PWSTR::null();
    // SAFETY: `sid` holds the SID just written; `text` receives a LocalAlloc'd string, freed
    // below after it is copied.
    unsafe { ConvertSidToStringSidW(PSID(sid.as_mut_ptr().cast()), &raw mut text) }
        .map_err(io::Error::other)?;
    // SAFETY: `text` is the NUL-terminated string ConvertSidToStringSidW returned.
    let out = unsafe { text.to_string() }.map_err(io::Error::other);
    // SAFETY: allocated by ConvertSidToStringSidW with LocalAlloc, freed once.
    unsafe {
        let _ = LocalFree(Some(HLOCAL(text.0.cast())));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sddl_admits_system_administrators_and_the_group_only() {
        assert_eq!(sddl(None), "D:P(A;;GA;;;SY)(A;;GA;;;BA)");
        assert_eq!(
            sddl(Some("S-1-5-21-1-2-3-1001")),
            "D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GRGW;;;S-1-5-21-1-2-3-1001)"
        );
    }

    /// A file written by `private_file` is private even in a folder others may read (under
    /// Wine every folder's DACL lets Everyone in), and the config check accepts it; a file
    /// created plainly there inherits that and is refused.
    #[test]
    fn written_files_get_a_private_dacl_whatever_their_folder_allows() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain.toml");
        std::fs::write(&plain, b"x").unwrap();
        let private = dir.path().join("server.toml");
        crate::private_file::write_atomic(&private, b"[server]\n").unwrap();

        let sddl = dacl_sddl(&private).unwrap();
        assert_eq!(super::super::sddl::open_to_others(&sddl), None, "{sddl}");
        check_private(&private, "config").unwrap();
        // Still readable by us, the owner.
        assert_eq!(std::fs::read(&private).unwrap(), b"[server]\n");

        if super::super::sddl::open_to_others(&dacl_sddl(dir.path()).unwrap()).is_some() {
            let err = check_private(&plain, "config").unwrap_err();
            assert!(err.contains("icacls"), "{err}");
        }
    }
}
