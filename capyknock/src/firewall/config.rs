//! The `[firewall]` section of the server config and the `--firewall` flag: which backend, the
//! nftables table, and the exec backend's argv templates (parsed and checked when the config is
//! read, so a typo in a placeholder stops the daemon at start, not at the first knock).

use std::{fmt, str::FromStr, time::Duration};

use serde::{Deserialize, Serialize};

use super::exec::{Template, Var};

/// Which firewall backend to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FirewallKind {
    /// nftables on Linux, Windows Firewall on Windows, exec elsewhere (needs `[firewall.exec]`).
    #[default]
    Auto,
    /// nftables through netlink (Linux).
    Nftables,
    /// Windows Firewall through its COM API (Windows).
    Windows,
    /// Programs run from argv templates (`[firewall.exec]`).
    Exec,
    /// Change nothing; log what would be done.
    None,
}

impl FirewallKind {
    /// Every value, in the spelling of the config and the CLI.
    pub const NAMES: [&'static str; 5] = ["auto", "nftables", "windows", "exec", "none"];

    /// Config/CLI spelling.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            FirewallKind::Auto => "auto",
            FirewallKind::Nftables => "nftables",
            FirewallKind::Windows => "windows",
            FirewallKind::Exec => "exec",
            FirewallKind::None => "none",
        }
    }

    /// What `auto` means on this platform: nftables on Linux, Windows Firewall on Windows,
    /// exec elsewhere.
    #[must_use]
    pub fn resolve(self) -> FirewallKind {
        match self {
            FirewallKind::Auto if cfg!(target_os = "linux") => FirewallKind::Nftables,
            FirewallKind::Auto if cfg!(windows) => FirewallKind::Windows,
            FirewallKind::Auto => FirewallKind::Exec,
            other => other,
        }
    }
}

impl fmt::Display for FirewallKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown `--firewall` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown firewall backend {input:?}: expected one of auto, nftables, windows, exec, none")]
pub struct FirewallKindError {
    input: String,
}

impl FromStr for FirewallKind {
    type Err = FirewallKindError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(FirewallKind::Auto),
            "nftables" => Ok(FirewallKind::Nftables),
            "windows" => Ok(FirewallKind::Windows),
            "exec" => Ok(FirewallKind::Exec),
            "none" => Ok(FirewallKind::None),
            _ => Err(FirewallKindError {
                input: s.to_owned(),
            }),
        }
    }
}

/// Default nftables table name.
pub const DEFAULT_TABLE: &str = "capyknock";

/// `[firewall]` in the server config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FirewallConfig {
    /// Backend. Default `auto`. The `--firewall` flag overrides it.
    pub backend: FirewallKind,
    /// nftables: name of our table in the `inet` family. Default `capyknock`. Letters, digits,
    /// `_` and `-`, at most 32 characters (we only ever touch this one table).
    pub table: String,
    /// nftables: priority of our input chain. Default 0 (`filter`). Our chain only drops, so it
    /// can sit anywhere after conntrack (-200).
    pub priority: i32,
    /// Windows: keep a grant's rule after it expires while a connection from the address to
    /// the port is still established (checked on every repair tick). Default `true`, as the
    /// original tool did; nftables needs no such option because its conntrack rule keeps
    /// established connections alive by itself.
    pub keep_established: bool,
    /// `[firewall.exec]`: argv templates for the exec backend. Default: none.
    pub exec: Option<ExecConfig>,
}

impl Default for FirewallConfig {
    fn default() -> Self {
        Self {
            backend: FirewallKind::Auto,
            table: DEFAULT_TABLE.to_owned(),
            priority: 0,
            keep_established: true,
            exec: None,
        }
    }
}

/// Why the `[firewall]` section is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The table name is not a safe nftables identifier.
    #[error(
        "[firewall] table = {0:?}: use 1-32 letters, digits, '_' or '-', starting with a letter"
    )]
    BadTable(String),
    /// A ban command without an unban command, or the other way round.
    #[error("[firewall.exec]: give both `ban` and `unban`, or neither")]
    BanWithoutUnban,
    /// A timeout of zero or over a minute.
    #[error("[firewall.exec] timeout = {0:?}: use a value between 100ms and 60s")]
    BadTimeout(Duration),
    /// `knock_drop`/`knock_undrop` with a placeholder other than `{port}` and `{proto}`.
    #[error(
        "[firewall.exec] {0}: only {{port}} and {{proto}} mean something for the knock port; remove the other placeholders"
    )]
    KnockDropVars(&'static str),
    /// `knock_undrop` without `knock_drop`.
    #[error("[firewall.exec] knock_undrop needs knock_drop")]
    KnockUndropAlone,
}

impl FirewallConfig {
    /// Checks what serde cannot: the table name and the exec section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_table_name(&self.table)?;
        if let Some(exec) = &self.exec {
            exec.validate()?;
        }
        Ok(())
    }

    /// Reads the `[firewall]` section of a whole config file's text (the `contrib/exec`
    /// examples, tests), then validates it. A file without the section gives the defaults.
    pub fn from_config_text(text: &str) -> Result<Self, FromTomlError> {
        let doc: toml::Table = toml::from_str(text).map_err(FromTomlError::Parse)?;
        match doc.get("firewall") {
            None => Self::from_toml(toml::Table::new()),
            Some(toml::Value::Table(section)) => Self::from_toml(section.clone()),
            Some(_) => Err(FromTomlError::NotATable),
        }
    }

    /// Reads the `[firewall]` table as the server config hands it over, then validates it.
    pub fn from_toml(table: toml::Table) -> Result<Self, FromTomlError> {
        let config: FirewallConfig = table.try_into().map_err(FromTomlError::Parse)?;
        config.validate().map_err(FromTomlError::Invalid)?;
        Ok(config)
    }
}

/// Why [`FirewallConfig::from_toml`] failed.
#[derive(Debug, thiserror::Error)]
pub enum FromTomlError {
    /// Wrong keys or value types.
    #[error("[firewall]")]
    Parse(#[source] toml::de::Error),
    /// Values that parse but cannot work.
    #[error("[firewall]")]
    Invalid(#[source] ConfigError),
    /// `firewall = ...` is not a table.
    #[error("`firewall` must be a table: write [firewall] on its own line")]
    NotATable,
}

/// Checks an nftables table name: 1-32 of `[A-Za-z0-9_-]`, starting with a letter.
pub fn validate_table_name(name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::BadTable(name.to_owned()))
    }
}

/// `[firewall.exec]`: programs to run, as argv templates (never a shell string). See
/// docs/FIREWALL.md for the placeholders and worked examples.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecConfig {
    /// Opens one grant; run again for a repeat knock, so it must be idempotent (refresh).
    pub open: Template,
    /// Closes one grant, when it expires or is revoked.
    pub close: Template,
    /// Bans one address. Optional: without it a ban closes the address's grants and refuses
    /// new ones.
    #[serde(default)]
    pub ban: Option<Template>,
    /// Lifts a ban; required when `ban` is given.
    #[serde(default)]
    pub unban: Option<Template>,
    /// Makes UDP to one knock port (`{port}`, `{proto}` = `udp`) dropped, so the host never
    /// answers a knock (ICMP port unreachable) nor hands it to a socket. Run at start and after
    /// a repair for every knock port, so it must be idempotent. Only `{port}` and `{proto}`
    /// may appear. Without it (and without `knock_drop_in_ruleset`), the daemon warns at start
    /// that nothing makes sure the knock port is dropped.
    #[serde(default)]
    pub knock_drop: Option<Template>,
    /// Undoes `knock_drop` for `capyknock firewall remove`. Optional.
    #[serde(default)]
    pub knock_undrop: Option<Template>,
    /// The admin's statement that the firewall's own ruleset drops UDP to the knock ports (pf,
    /// a static iptables rule): silences the start-up warning when there is no `knock_drop`.
    #[serde(default)]
    pub knock_drop_in_ruleset: bool,
    /// Longest a command may run before it is killed. Default 5 s.
    #[serde(default = "default_exec_timeout", with = "duration_str")]
    pub timeout: Duration,
}

fn default_exec_timeout() -> Duration {
    Duration::from_secs(5)
}

impl ExecConfig {
    /// Checks the ban/unban pair and the timeout.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.ban.is_some() != self.unban.is_some() {
            return Err(ConfigError::BanWithoutUnban);
        }
        if self.timeout < Duration::from_millis(100) || self.timeout > Duration::from_mins(1) {
            return Err(ConfigError::BadTimeout(self.timeout));
        }
        for (key, template) in [
            ("knock_drop", &self.knock_drop),
            ("knock_undrop", &self.knock_undrop),
        ] {
            if template
                .as_ref()
                .is_some_and(|t| t.vars().any(|v| !matches!(v, Var::Port | Var::Proto)))
            {
                return Err(ConfigError::KnockDropVars(key));
            }
        }
        if self.knock_undrop.is_some() && self.knock_drop.is_none() {
            return Err(ConfigError::KnockUndropAlone);
        }
        Ok(())
    }
}

/// Durations written `"5s"`, `"500ms"` (humantime) or as a number of seconds.
mod duration_str {
    use std::{fmt, time::Duration};

    use serde::{Deserializer, Serializer, de};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"5s\" or \"500ms\", or a number of seconds")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                Ok(Duration::from_secs(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                u64::try_from(v)
                    .map(Duration::from_secs)
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                humantime::parse_duration(v).map_err(|e| {
                    E::custom(format_args!(
                        "invalid duration {v:?} ({e}): write e.g. \"5s\""
                    ))
                })
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FirewallConfig, FromTomlError> {
        let table: toml::Table = toml::from_str(text).unwrap();
        let fw = table
            .get("firewall")
            .and_then(toml::Value::as_table)
            .cloned()
            .unwrap_or_default();
        FirewallConfig::from_toml(fw)
    }

    #[test]
    fn defaults() {
        let c = parse("").unwrap();
        assert_eq!(c, FirewallConfig::default());
        assert_eq!(c.table, "capyknock");
        assert_eq!(c.backend, FirewallKind::Auto);
    }

    #[test]
    fn full_exec_section() {
        let c = parse(
            r#"
            [firewall]
            backend = "exec"
            [firewall.exec]
            open = ["/usr/sbin/ipset", "-exist", "add", "ck{ipver}", "{addr},{proto}:{port}", "timeout", "{timeout}"]
            close = ["/usr/sbin/ipset", "-exist", "del", "ck{ipver}", "{addr},{proto}:{port}"]
            ban = ["/usr/sbin/ipset", "-exist", "add", "ckban{ipver}", "{addr}"]
            unban = ["/usr/sbin/ipset", "-exist", "del", "ckban{ipver}", "{addr}"]
            timeout = "2s"
            "#,
        )
        .unwrap();
        assert_eq!(c.backend, FirewallKind::Exec);
        let exec = c.exec.unwrap();
        assert_eq!(exec.timeout, Duration::from_secs(2));
        assert!(exec.ban.is_some());
    }

    #[test]
    fn errors_name_the_problem() {
        let err = parse("[firewall]\nbackend = \"iptables\"\n").unwrap_err();
        assert!(
            format!("{:?}", anyhow::Error::from(err)).contains("iptables"),
            "unknown backend named"
        );
        let err = parse("[firewall]\ntabel = \"x\"\n").unwrap_err();
        assert!(matches!(err, FromTomlError::Parse(_)));
        let err = parse("[firewall]\ntable = \"bad name\"\n").unwrap_err();
        assert!(matches!(
            err,
            FromTomlError::Invalid(ConfigError::BadTable(_))
        ));
        let err =
            parse("[firewall.exec]\nopen = [\"a\"]\nclose = [\"b\"]\nban = [\"c\", \"{addr}\"]\n")
                .unwrap_err();
        assert!(matches!(
            err,
            FromTomlError::Invalid(ConfigError::BanWithoutUnban)
        ));
        let err =
            parse("[firewall.exec]\nopen = [\"a\", \"{adr}\"]\nclose = [\"b\"]\n").unwrap_err();
        let msg = format!("{:?}", anyhow::Error::from(err));
        assert!(msg.contains("{adr}"), "{msg}");
        let err = parse("[firewall.exec]\nopen = [\"a\"]\nclose = [\"b\"]\ntimeout = \"0s\"\n")
            .unwrap_err();
        assert!(matches!(
            err,
            FromTomlError::Invalid(ConfigError::BadTimeout(_))
        ));
    }

    /// The worked examples in contrib/exec must stay valid.
    #[test]
    fn contrib_examples_parse() {
        for (name, text) in [
            ("ipset", include_str!("../../../contrib/exec/ipset.toml")),
            (
                "firewalld",
                include_str!("../../../contrib/exec/firewalld.toml"),
            ),
            ("pf", include_str!("../../../contrib/exec/pf.toml")),
        ] {
            let c = FirewallConfig::from_config_text(text)
                .unwrap_or_else(|e| panic!("{name}: {:?}", anyhow::Error::from(e)));
            assert_eq!(c.backend, FirewallKind::Exec, "{name}");
            assert_eq!(
                super::super::stealth_warning(&c, &[62201]),
                None,
                "{name} leaves the knock port undropped"
            );
            let exec = c.exec.unwrap();
            assert!(exec.ban.is_some() && exec.unban.is_some(), "{name}");
        }
        assert!(matches!(
            FirewallConfig::from_config_text("firewall = 1"),
            Err(FromTomlError::NotATable)
        ));
    }

    #[test]
    fn table_names() {
        for good in ["capyknock", "ck_2", "a-b", "A"] {
            validate_table_name(good).unwrap();
        }
        for bad in ["", "1abc", "a b", "a;b", "a\nb", &"x".repeat(33), "ä"] {
            assert!(validate_table_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn kind_round_trips() {
        for name in FirewallKind::NAMES {
            let k: FirewallKind = name.parse().unwrap();
            assert_eq!(k.to_string(), name);
        }
        assert!("Nftables".parse::<FirewallKind>().is_err());
        assert_eq!(FirewallKind::None.resolve(), FirewallKind::None);
        if cfg!(target_os = "linux") {
            assert_eq!(FirewallKind::Auto.resolve(), FirewallKind::Nftables);
        }
    }
}
