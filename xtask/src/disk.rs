//! Disk use of the build, for `cargo xtask test`: what `target/` holds and what is left after
//! each step (so a CI run that fills its disk says where), and deleting the outputs that no later
//! step needs (`--reclaim-disk`). Sizes come from `du` and `df`, run with argv.

use std::path::Path;

use crate::cmd::{command, output, workspace_root};

/// `bytes` in GB with one decimal, in integers (no float casts).
fn gb(bytes: u64) -> String {
    const GB: u64 = 1_000_000_000;
    format!("{}.{} GB", bytes / GB, bytes % GB / (GB / 10))
}

/// Prints the size of `target/` and the free space on its file system after the step `name`.
/// Best effort: a missing `du` or `df` prints nothing rather than failing the run.
pub fn report(name: &str) {
    let target = workspace_root().join("target");
    let (Some(used), Some(free)) = (size(&target), free(&target)) else {
        return;
    };
    println!("disk after {name}: target/ {}, {} free", gb(used), gb(free));
}

/// Deletes each workspace-relative path that exists, saying how much it freed.
pub fn reclaim(paths: &[&str]) {
    for rel in paths {
        let path = workspace_root().join(rel);
        if !path.exists() {
            continue;
        }
        let bytes = size(&path).unwrap_or(0);
        match std::fs::remove_dir_all(&path) {
            Ok(()) => println!("reclaimed {}: {rel}", gb(bytes)),
            // Not fatal: the run goes on with less room, and the report says how much is left.
            Err(e) => println!("could not remove {rel}: {e}"),
        }
    }
}

/// Bytes under `path` (`du -sb`), or `None` if it cannot be measured.
fn size(path: &Path) -> Option<u64> {
    let mut du = command("du", &["-sb"]);
    du.arg(path);
    first_number(&output(&mut du)?)
}

/// Bytes free for unprivileged use on the file system holding `path` (`df`).
fn free(path: &Path) -> Option<u64> {
    let mut df = command("df", &["-B1", "--output=avail"]);
    df.arg(path);
    // The first line is the header.
    first_number(output(&mut df)?.lines().nth(1)?)
}

fn first_number(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_number_reads_du_and_df_lines() {
        assert_eq!(first_number("12345\t/work/target\n"), Some(12345));
        assert_eq!(first_number("  987654321"), Some(987_654_321));
        assert_eq!(first_number("Avail"), None);
        assert_eq!(first_number(""), None);
    }

    #[test]
    fn gb_has_one_decimal() {
        assert_eq!(gb(0), "0.0 GB");
        assert_eq!(gb(1_499_999_999), "1.4 GB");
        assert_eq!(gb(31_000_000_000), "31.0 GB");
    }
}
