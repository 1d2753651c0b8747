//! Gives back the memory start-up used and no longer needs.
//!
//! Start-up parses the configuration, the eBPF object and its maps, and opens the firewall:
//! allocations of several MiB that are freed again before the first knock. glibc's allocator keeps
//! freed memory inside its heaps for later use and returns only what sits at the top, so without
//! help the daemon's resident size stays near its start-up peak. `malloc_trim(0)` returns every
//! free page of every heap to the kernel; called once, when start-up is done.
//!
//! Start-up also runs code the daemon never runs again (argument and config parsing, the eBPF
//! loader, the first firewall batch, the etcd client's set-up), and every page of the binary it
//! touched stays mapped, with the kernel's fault-around mapping 64 KiB around each one: about
//! 5.7 MiB of the executable's code and 1.5 MiB of its read-only data. Once start-up is done,
//! `madvise(MADV_PAGEOUT)` on the executable's read-only mappings hands those clean pages back;
//! the ones the daemon goes on to use come back at their first use, as minor faults (no disk
//! read while the file is in the page cache). Pages shared with another process (the
//! privilege-separated firewall helper maps the same binary) are left alone by the kernel.

#![allow(unsafe_code)]

/// Returns the allocator's free pages to the kernel, and the pages of the executable that
/// start-up touched (glibc on Linux; nothing elsewhere).
pub fn release_startup_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes a padding size and only reorganises the allocator's own
        // free lists; it has no pointer arguments and is thread-safe in glibc.
        let released = unsafe { libc::malloc_trim(0) };
        let paged_out = page_out_executable();
        tracing::debug!(
            released = released != 0,
            executable_kib = paged_out / 1024,
            "start-up memory returned to the kernel"
        );
    }
}

/// Asks the kernel to reclaim the pages of the executable's read-only mappings (code and
/// constants; never a writable one). Returns how many bytes of mappings it asked for.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn page_out_executable() -> usize {
    let (Ok(exe), Ok(maps)) = (
        std::fs::read_link("/proc/self/exe"),
        std::fs::read_to_string("/proc/self/maps"),
    ) else {
        return 0;
    };
    let Some(exe) = exe.to_str() else {
        return 0;
    };
    let mut asked = 0;
    for (start, len) in maps
        .lines()
        .filter_map(|line| read_only_mapping_of(line, exe))
    {
        // SAFETY: MADV_PAGEOUT only changes where the pages of this clean, read-only, file-backed
        // mapping live (the kernel reads them back from the file on the next access); it never
        // changes their contents or the mapping, so no pointer into it becomes invalid.
        let rc = unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_PAGEOUT) };
        if rc == 0 {
            asked += len;
        }
    }
    asked
}

/// The start and length of the mapping in `line` of `/proc/self/maps` if it maps file `path`
/// without write permission: `"55d0c0a00000-55d0c0b00000 r-xp 00001000 fd:01 1234 /usr/bin/x"`.
#[cfg(any(test, all(target_os = "linux", target_env = "gnu")))]
fn read_only_mapping_of(line: &str, path: &str) -> Option<(usize, usize)> {
    let mut fields = line.splitn(6, ' ');
    let range = fields.next()?;
    let perms = fields.next()?;
    let mapped = fields.nth(3)?.trim_start();
    if mapped != path || perms.contains('w') || !perms.starts_with('r') {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    Some((start, end.checked_sub(start).filter(|len| *len > 0)?))
}

#[cfg(test)]
mod tests {
    use super::read_only_mapping_of;

    #[test]
    fn only_read_only_mappings_of_the_executable() {
        let exe = "/usr/sbin/capyknock";
        let line = |perms: &str, path: &str| {
            format!("55d0c0a00000-55d0c0b00000 {perms} 00001000 fd:01 1234      {path}")
        };
        assert_eq!(
            read_only_mapping_of(&line("r-xp", exe), exe),
            Some((0x55d0_c0a0_0000, 0x10_0000))
        );
        assert!(read_only_mapping_of(&line("r--p", exe), exe).is_some());
        // Writable (relocated data), another file, anonymous memory.
        assert_eq!(read_only_mapping_of(&line("rw-p", exe), exe), None);
        assert_eq!(
            read_only_mapping_of(&line("r-xp", "/usr/lib/libc.so.6"), exe),
            None
        );
        assert_eq!(
            read_only_mapping_of(&line("r-xp", "/usr/sbin/capyknock2"), exe),
            None
        );
        assert_eq!(read_only_mapping_of(&line("---p", exe), exe), None);
        assert_eq!(
            read_only_mapping_of("7ffd-7ffe rw-p 0 00:00 0 [stack]", exe),
            None
        );
        assert_eq!(read_only_mapping_of("garbage", exe), None);
        assert_eq!(
            read_only_mapping_of(&line("r-xp", exe).replacen('5', "z", 1), exe),
            None
        );
    }
}
