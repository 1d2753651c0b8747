//! Reading a Windows DACL written as SDDL, with no Windows API: whether it opens a file to
//! everyone on the machine. Pure text, so it is tested on every platform; `win_acl` reads the
//! SDDL of real files on Windows and refuses a config or state directory this finds open.

/// Who, of Everyone, Users and Authenticated Users, an allow entry of the SDDL DACL `sddl`
/// grants read or write access to, if anyone. Deny entries and other trustees are ignored; an
/// absent DACL (`D:NO_ACCESS_CONTROL`, or no `D:` part) is open to everyone.
#[must_use]
pub fn open_to_others(sddl: &str) -> Option<&'static str> {
    const OTHERS: [(&str, &str); 6] = [
        ("WD", "Everyone"),
        ("S-1-1-0", "Everyone"),
        ("BU", "Users"),
        ("S-1-5-32-545", "Users"),
        ("AU", "Authenticated Users"),
        ("S-1-5-11", "Authenticated Users"),
    ];
    let Some(dacl) = sddl.split_once("D:").map(|(_, d)| d) else {
        return Some("Everyone (no access list)");
    };
    if dacl.starts_with("NO_ACCESS_CONTROL") {
        return Some("Everyone (no access list)");
    }
    // Stop at a following S: (SACL) part.
    let dacl = dacl.split(")S:").next().unwrap_or(dacl);
    for ace in dacl.split('(').skip(1) {
        let ace = ace.trim_end_matches(')');
        let fields: Vec<&str> = ace.split(';').collect();
        let (Some(kind), Some(rights), Some(trustee)) =
            (fields.first(), fields.get(2), fields.get(5))
        else {
            continue;
        };
        if *kind != "A" {
            continue;
        }
        let Some((_, who)) = OTHERS.iter().find(|(sid, _)| sid == trustee) else {
            continue;
        };
        if grants_read_or_write(rights) {
            return Some(who);
        }
    }
    None
}

/// Whether SDDL access rights (`FA`, `GR`, `0x120089`, ...) include reading or writing data.
fn grants_read_or_write(rights: &str) -> bool {
    if let Some(hex) = rights
        .strip_prefix("0x")
        .or_else(|| rights.strip_prefix("0X"))
    {
        // FILE_READ_DATA 0x1, FILE_WRITE_DATA 0x2, FILE_APPEND_DATA 0x4, GENERIC_ALL,
        // GENERIC_WRITE, GENERIC_READ (0x1000_0000, 0x4000_0000, 0x8000_0000).
        return u32::from_str_radix(hex, 16).is_ok_and(|m| m & 0xD000_0007 != 0);
    }
    rights.as_bytes().chunks(2).any(|pair| {
        matches!(
            pair,
            b"GA" | b"GR" | b"GW" | b"FA" | b"FR" | b"FW" | b"CC" | b"DC"
        )
    })
}

/// The `icacls` command that makes `path` private to SYSTEM and Administrators: a folder's
/// entries are inherited by what is created in it (`(OI)(CI)`), a file has nothing to pass on
/// (icacls refuses inheritance flags on a file).
#[must_use]
pub fn icacls_fix(path: &str, is_dir: bool) -> String {
    let rights = if is_dir { "(OI)(CI)F" } else { "F" };
    format!("icacls \"{path}\" /inheritance:r /grant:r SYSTEM:{rights} Administrators:{rights}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_icacls_fix_uses_inheritance_flags_only_for_a_folder() {
        assert_eq!(
            icacls_fix(r"C:\ProgramData\capyknock\server.toml", false),
            r#"icacls "C:\ProgramData\capyknock\server.toml" /inheritance:r /grant:r SYSTEM:F Administrators:F"#
        );
        assert_eq!(
            icacls_fix(r"C:\ProgramData\capyknock\state", true),
            r#"icacls "C:\ProgramData\capyknock\state" /inheritance:r /grant:r SYSTEM:(OI)(CI)F Administrators:(OI)(CI)F"#
        );
    }

    #[test]
    fn others_with_read_or_write_are_found() {
        assert_eq!(open_to_others("D:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)"), None);
        assert_eq!(
            open_to_others("D:AI(A;OICIID;FA;;;SY)(A;OICIID;FA;;;BA)(A;OICIID;0x1200a9;;;BU)"),
            Some("Users")
        );
        assert_eq!(open_to_others("D:(A;;FR;;;WD)"), Some("Everyone"));
        assert_eq!(open_to_others("D:(D;;FA;;;WD)(A;;FA;;;SY)"), None);
        assert_eq!(
            open_to_others("D:(A;;0x100000;;;AU)"),
            None,
            "SYNCHRONIZE only"
        );
        assert_eq!(
            open_to_others("D:NO_ACCESS_CONTROL"),
            Some("Everyone (no access list)")
        );
    }
}
