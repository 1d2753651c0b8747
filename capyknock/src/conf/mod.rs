//! What the server config and the client config have in common, written once: reading the file
//! (a private file: [`crate::private_file::read_private`]), collecting every problem with its
//! line ([`Problem`], [`Checker`]), TOML syntax errors in the same words ([`toml_problem`]),
//! every shape error at once rather than serde's first ([`parse_all`]),
//! rendering the list as `FILE:LINE: message` lines ([`render_problems`]), and the validators
//! both sides apply to the same values ([`check_nickname`]).
//!
//! Depends on neither `server` nor `client` (nor capture or firewall), so a client-only build
//! can use it.

mod names;
mod problem;
mod recover;

use std::path::Path;

pub use names::{MAX_NICKNAME_LEN, check_nickname};
pub use problem::{Checker, Problem, line_of, render_problems, toml_problem};
pub use recover::{MAX_SHAPE_PROBLEMS, Parsed, parse_all};

use crate::private_file::{self, PrivateFileError};

/// Which config file a message is about, and where its documentation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    /// How messages name the file: `config`, `client config`.
    pub what: &'static str,
    /// The page that documents every key, e.g. `docs/CONFIG.md`.
    pub docs: &'static str,
    /// Largest file read.
    pub max_bytes: u64,
}

/// Reads the config at `path` (`None` if it does not exist), refusing a file that is not
/// private (mode, owner, directory; the message says the command that fixes it) or larger than
/// `kind.max_bytes`.
pub fn read(kind: &Kind, path: &Path) -> Result<Option<String>, PrivateFileError> {
    private_file::read_private(path, kind.what, kind.max_bytes)
}
