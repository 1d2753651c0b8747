//! The server config a lab starts from (XDP capture, the nftables backend, state and control
//! socket inside the lab's directory; `capyknock keygen` or the test appends the users), and
//! reading what `keygen` prints (the `otpauth://` URI and its secret).

use std::{fmt::Write as _, path::Path};

/// The `[server]` and `[firewall]` tables of a lab's server config.
#[derive(Debug, Clone, Copy)]
pub struct ServerToml<'a> {
    /// A first line (without `# `), saying whose config this is.
    pub comment: Option<&'a str>,
    /// The UDP knock port.
    pub knock_port: u16,
    /// The interfaces XDP attaches to.
    pub interfaces: &'a [&'a str],
    /// The state directory (never /var/lib in a lab).
    pub state_dir: &'a Path,
    /// The control socket (never /run in a lab).
    pub control_socket: &'a Path,
    /// `default_access`, if set.
    pub default_access: Option<&'a str>,
    /// More `[server]` lines, each ending in a newline.
    pub extra: &'a str,
}

impl ServerToml<'_> {
    /// The TOML text.
    #[must_use]
    pub fn render(&self) -> String {
        let mut text = String::new();
        if let Some(comment) = self.comment {
            let _ = writeln!(text, "# {comment}");
        }
        let interfaces = self
            .interfaces
            .iter()
            .map(|i| format!("\"{i}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = write!(
            text,
            "[server]\nknock_ports = [{}]\ninterfaces = [{interfaces}]\ncapture = \"xdp\"\n\
             state_dir = \"{}\"\ncontrol_socket = \"{}\"\n",
            self.knock_port,
            self.state_dir.display(),
            self.control_socket.display(),
        );
        if let Some(access) = self.default_access {
            let _ = writeln!(text, "default_access = \"{access}\"");
        }
        text.push_str(self.extra);
        text.push_str("\n[firewall]\nbackend = \"nftables\"\n");
        text
    }
}

/// The `otpauth://` line of `capyknock keygen`'s output.
#[must_use]
pub fn otpauth_uri(keygen_stdout: &str) -> Option<&str> {
    keygen_stdout.lines().find(|l| l.starts_with("otpauth://"))
}

/// The base32 `secret=` of an `otpauth://` URI (what an authenticator app reads from the QR
/// code).
#[must_use]
pub fn otpauth_secret(uri: &str) -> Option<&str> {
    uri.split_once('?')?
        .1
        .split('&')
        .find_map(|kv| kv.strip_prefix("secret="))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_config_text() {
        let text = ServerToml {
            comment: Some("a lab"),
            knock_port: 62201,
            interfaces: &["srv-c", "srv-a"],
            state_dir: Path::new("/tmp/lab/state"),
            control_socket: Path::new("/tmp/lab/control.sock"),
            default_access: Some("5m"),
            extra: "control_group = \"users\"\n",
        }
        .render();
        assert_eq!(
            text,
            "# a lab\n[server]\nknock_ports = [62201]\ninterfaces = [\"srv-c\", \"srv-a\"]\n\
             capture = \"xdp\"\nstate_dir = \"/tmp/lab/state\"\n\
             control_socket = \"/tmp/lab/control.sock\"\ndefault_access = \"5m\"\n\
             control_group = \"users\"\n\n[firewall]\nbackend = \"nftables\"\n"
        );
    }

    #[test]
    fn keygen_output() {
        let out = "user alice created\notpauth://totp/capyknock:alice?secret=ABCD234&issuer=x\n";
        let uri = otpauth_uri(out).unwrap();
        assert_eq!(otpauth_secret(uri), Some("ABCD234"));
        assert_eq!(otpauth_uri("nothing"), None);
        assert_eq!(otpauth_secret("otpauth://totp/x?issuer=y"), None);
    }
}
