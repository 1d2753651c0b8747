//! Writing the server config: the reference file for a new config ([`render_default`]) and new
//! `[[user]]` entries ([`add_user`], used by `capyknock keygen`). Users are rendered with
//! `toml_edit` (correct quoting) and appended after everything already in the file, so the
//! admin's comments and layout stay byte for byte; the result is validated before it is written
//! atomically with mode 0600 ([`crate::private_file`]).

use std::path::{Path, PathBuf};

use toml_edit::{Array, ArrayOfTables, DocumentMut, Item, Table, value};

use super::{ConfigError, KIND, Settings, parse};
use crate::{
    conf::{self, Problem},
    private_file::{self, DirRule},
    protocol::users::User,
};

/// The reference configuration, contrib/server.example.toml: complete, every key commented with
/// its default, no users.
pub const EXAMPLE: &str = include_str!("../../../../contrib/server.example.toml");

/// The lines of [`EXAMPLE`] that [`render_default`] rewrites.
const KNOCK_PORTS_LINE: &str = "knock_ports = [62201]";
const STATE_DIR_LINE: &str = "state_dir = \"/var/lib/capyknock\"";
const CONTROL_SOCKET_LINE: &str = "control_socket = \"/run/capyknock/control.sock\"";

/// A complete commented configuration with no users, listening on `knock_port`, with this
/// platform's default state directory and control socket (the example's are Linux paths,
/// which the Windows daemon refuses as not absolute).
#[must_use]
pub fn render_default(knock_port: u16) -> String {
    render_default_with(
        knock_port,
        &super::default_state_dir().to_string_lossy(),
        super::DEFAULT_CONTROL_SOCKET,
    )
}

/// [`render_default`] with the given paths; one that differs from the example's is written as
/// a TOML literal string (no escapes: a Windows path keeps its backslashes).
fn render_default_with(knock_port: u16, state_dir: &str, control_socket: &str) -> String {
    let mut text = EXAMPLE.replacen(
        KNOCK_PORTS_LINE,
        &format!("knock_ports = [{knock_port}]"),
        1,
    );
    for (line, key, value) in [
        (STATE_DIR_LINE, "state_dir", state_dir),
        (CONTROL_SOCKET_LINE, "control_socket", control_socket),
    ] {
        if !line.contains(&format!("\"{value}\"")) {
            text = text.replacen(line, &format!("{key} = '{value}'"), 1);
        }
    }
    text
}

/// The `[[user]]` block for `user`, with a leading blank line and a comment naming it. Holds
/// the user's secrets: write it only to the 0600 config file ([`add_user`] does).
#[must_use]
pub fn render_user(user: &User) -> String {
    let mut t = Table::new();
    t.decor_mut().set_prefix(format!(
        "\n# {}, added by capyknock keygen.\n",
        user.nickname.replace(['\n', '\r'], " ")
    ));
    t.insert("id", value(user.id.to_string()));
    t.insert("nickname", value(user.nickname.as_str()));
    t.insert("key", value(user.key.to_base64_secret()));
    t.insert("totp_secret", value(user.totp.to_base32_secret()));
    t.insert("totp_mode", value(user.totp_mode.as_str()));
    let mut ports = Array::new();
    for spec in &user.ports {
        ports.push(spec.to_string());
    }
    t.insert("ports", value(ports));
    t.insert(
        "access",
        value(humantime::format_duration(user.access).to_string()),
    );
    t.insert("allow_ip", value(user.allow_ip.as_str()));
    let mut users = ArrayOfTables::new();
    users.push(t);
    let mut doc = DocumentMut::new();
    doc.insert("user", Item::ArrayOfTables(users));
    doc.to_string()
}

/// Why a user could not be added to a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum AddUserError {
    /// The existing file (or the result) is not a valid configuration, or not private.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Writing failed.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Appends `user` to the configuration at `path`, or creates a complete commented configuration
/// (knock port `knock_port`) holding it when `path` does not exist (its directory, if new, with
/// mode 0700). The result is validated before it is written (a duplicate id or nickname is
/// refused), and written atomically with mode 0600. A running daemon picks it up on
/// `capyknock reload`.
pub fn add_user(path: &Path, user: &User, knock_port: u16) -> Result<Settings, AddUserError> {
    let text = match conf::read(&KIND, path).map_err(ConfigError::from)? {
        Some(text) => {
            // Never build on top of a broken file.
            parse(path, &text)?;
            text
        }
        None => render_default(knock_port),
    };
    let updated = append_user(path, &text, user)?;
    let settings = parse(path, &updated)?;
    private_file::ensure_dir(private_file::dir_of(path), KIND.what, DirRule::NoReplace)
        .map_err(ConfigError::from)?;
    private_file::write_atomic(path, updated.as_bytes()).map_err(|source| AddUserError::Write {
        path: path.to_owned(),
        source,
    })?;
    Ok(settings)
}

/// `text` with `user` appended. `toml_edit` checks that the users are `[[user]]` tables (an
/// inline `user = [...]` cannot be appended to); the new text goes after everything already
/// there, so the rest of the file stays byte for byte.
fn append_user(path: &Path, text: &str, user: &User) -> Result<String, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        path: path.to_owned(),
        problems: vec![Problem {
            line: None,
            message,
        }],
    };
    let existing: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| invalid(e.to_string()))?;
    match existing.get("user") {
        None | Some(Item::ArrayOfTables(_)) => {}
        Some(_) => {
            return Err(invalid(
                "users must be written as [[user]] tables for keygen to add one: rewrite them \
                 that way (docs/CONFIG.md)"
                    .into(),
            ));
        }
    }
    let mut out = text.to_owned();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&render_user(user));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        ports::PortSpec,
        protocol::{
            keys::{TotpSecret, UserKey},
            users::{AllowIp, TotpMode},
        },
    };

    fn new_user(nick: &str, id: &str) -> User {
        User {
            id: id.parse().unwrap(),
            nickname: nick.into(),
            key: UserKey::from_bytes(core::array::from_fn(|i| i as u8)),
            totp: TotpSecret::from_base32("AAAQEAYEAUDAOCAJBIFQYDIOB4IBCEQT").unwrap(),
            totp_mode: TotpMode::Derived,
            ports: vec![PortSpec::tcp(22), PortSpec::tcp(443)],
            access: Duration::from_mins(10),
            allow_ip: AllowIp::RequireMatch,
        }
    }

    fn p(text: &str) -> Settings {
        parse(Path::new("/etc/capyknock/server.toml"), text).unwrap()
    }

    #[test]
    fn rendered_user_reads_as_documented() {
        let text = render_user(&new_user("bob", "ff112233445566778899aabbccddeeff"));
        assert_eq!(
            text,
            "\n# bob, added by capyknock keygen.\n[[user]]\nid = \
             \"ff112233445566778899aabbccddeeff\"\nnickname = \"bob\"\nkey = \
             \"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\"\ntotp_secret = \
             \"AAAQEAYEAUDAOCAJBIFQYDIOB4IBCEQT\"\ntotp_mode = \"derived\"\nports = [\"tcp/22\", \
             \"tcp/443\"]\naccess = \"10m\"\nallow_ip = \"require-match\"\n"
        );
    }

    #[test]
    fn debug_hides_secrets() {
        let dbg = format!("{:?}", new_user("bob", "ff112233445566778899aabbccddeeff"));
        assert!(
            !dbg.contains("AAECAwQF") && !dbg.contains("AAAQEAYE"),
            "{dbg}"
        );
    }

    #[test]
    fn rendered_default_and_user_round_trip() {
        let text = render_default(40000);
        let s = p(&text);
        assert_eq!(s.knock_ports, vec![40000]);
        let text = format!(
            "{text}{}",
            render_user(&new_user("bob", "ff112233445566778899aabbccddeeff"))
        );
        let s = p(&text);
        let u = &s.users[0];
        assert_eq!(u.nickname, "bob");
        assert_eq!(u.id.to_string(), "ff112233445566778899aabbccddeeff");
        assert_eq!(u.totp_mode, TotpMode::Derived);
        assert_eq!(u.allow_ip, AllowIp::RequireMatch);
        assert_eq!(u.key, new_user("x", "ff112233445566778899aabbccddeeff").key);
        assert_eq!(u.access, Duration::from_mins(10));
        assert_eq!(u.ports, vec![PortSpec::tcp(22), PortSpec::tcp(443)]);
    }

    #[cfg(unix)]
    #[test]
    fn add_user_creates_then_appends_privately() {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/server.toml");
        let s = add_user(
            &path,
            &new_user("bob", "ff112233445566778899aabbccddeeff"),
            50000,
        )
        .unwrap();
        assert_eq!(s.knock_ports, vec![50000]);
        assert_eq!(mode(&path), 0o600);
        // A directory keygen makes is private too (issue 14: it was 0755).
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        let s = add_user(
            &path,
            &new_user("carol", "ee112233445566778899aabbccddeeff"),
            1,
        )
        .unwrap();
        assert_eq!(s.knock_ports, vec![50000]);
        assert_eq!(s.users.len(), 2);
        assert_eq!(super::super::load(&path).unwrap().users.len(), 2);
        // A duplicate is refused and the file is left as it was.
        let before = std::fs::read_to_string(&path).unwrap();
        assert!(
            add_user(
                &path,
                &new_user("bob", "dd112233445566778899aabbccddeeff"),
                1
            )
            .is_err()
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
        // Group-readable files are refused with the chmod to run.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = add_user(
            &path,
            &new_user("dave", "cc112233445566778899aabbccddeeff"),
            1,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(&format!("chmod 600 {}", path.display())),
            "{err}"
        );
    }

    #[test]
    fn add_user_keeps_the_existing_text_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.toml");
        // Odd but valid layout: comments, a user table before [firewall], no final newline.
        let original = format!(
            "# my notes\n[server]\nknock_ports = [ 4000 ]   # odd spacing\n{}\n[firewall]\n\
             backend = 'none' # literal string",
            render_user(&new_user("amy", "aa112233445566778899aabbccddeeff"))
        );
        private_file::write_atomic(&path, original.as_bytes()).unwrap();
        let s = add_user(
            &path,
            &new_user("bob", "ff112233445566778899aabbccddeeff"),
            1,
        )
        .unwrap();
        assert_eq!(s.users.len(), 2);
        let after = std::fs::read_to_string(&path).unwrap();
        assert!(after.starts_with(&original), "{after}");
        assert!(
            after.ends_with(&render_user(&new_user(
                "bob",
                "ff112233445566778899aabbccddeeff"
            ))),
            "{after}"
        );
        // Users written inline cannot be appended to: refused, file untouched.
        let inline = "user = []\n";
        private_file::write_atomic(&path, inline.as_bytes()).unwrap();
        let err = add_user(
            &path,
            &new_user("bob", "ff112233445566778899aabbccddeeff"),
            1,
        )
        .unwrap_err();
        assert!(err.to_string().contains("[[user]] tables"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), inline);
    }

    /// Regression (Windows): `keygen` made a new server config with the example's Linux paths,
    /// which the Windows daemon refuses.
    #[test]
    fn the_default_config_takes_the_platforms_paths() {
        let linux = render_default_with(62201, "/var/lib/capyknock", "/run/capyknock/control.sock");
        assert_eq!(linux, EXAMPLE);
        let text = render_default_with(
            1234,
            r"C:\ProgramData\capyknock\state",
            r"\\.\pipe\capyknock",
        );
        let doc: toml_edit::DocumentMut = text.parse().unwrap();
        let server = &doc["server"];
        assert_eq!(
            server["state_dir"].as_str(),
            Some(r"C:\ProgramData\capyknock\state")
        );
        assert_eq!(
            server["control_socket"].as_str(),
            Some(r"\\.\pipe\capyknock")
        );
        assert_eq!(
            server["knock_ports"].as_array().map(toml_edit::Array::len),
            Some(1)
        );
        assert!(!text.contains("/var/lib/capyknock\""));
    }
}
