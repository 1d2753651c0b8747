//! The legitimate users: many keygen'd machine profiles (`--totp-mode derived`), and their knock
//! packets made by the real client before a run starts, so no process starts during the
//! measurement.
//!
//! The protocol accepts each (user, TOTP step) once, so every legit knock uses a user that has
//! not knocked in the current 30 s step ([`Users::take`]). `capyknock knock PROFILE --no-check
//! --save-packet FILE` runs in a sink namespace whose route to the server's address leads
//! nowhere ([`generate`]): the saved bytes are what it would have sent, and the packet does not
//! name its source address, so it can be sent from any.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use capyknock_testkit::{
    clock::{secs_left_in_step, time_step},
    files::write_private,
    netns::NetNs,
    process,
    wait::{check_interrupted, sleep},
};

/// Knock processes run at once while making packets.
const GENERATE_PARALLEL: usize = 16;
/// Parallel keygen chains (each on its own pair of files, merged afterwards).
const KEYGEN_SHARDS: usize = 4;

/// The users, and the step each last knocked in.
#[derive(Debug)]
pub struct Users {
    /// Profile names.
    profiles: Vec<String>,
    /// Step each one last knocked in.
    last_step: Vec<Option<u64>>,
}

/// What [`Users::create`] needs.
#[derive(Debug)]
pub struct UserSetup<'a> {
    /// The capyknock binary.
    pub bin: &'a Path,
    /// Folder for the shard files.
    pub dir: &'a Path,
    /// The server config's text before any user (a complete `[server]` config).
    pub server_header: &'a str,
    /// Where the merged server config goes.
    pub server_config: &'a Path,
    /// Where the merged client config goes.
    pub client_config: &'a Path,
    /// The address in the profiles.
    pub server_addr: Ipv4Addr,
    /// The service port users may open.
    pub service_port: u16,
    /// Access duration of each grant.
    pub access: &'a str,
    /// Number of legit users.
    pub count: usize,
}

impl Users {
    /// Runs `capyknock keygen` for `count` users, in parallel chains
    /// of files merged at the end (keygen appends whole `[[user]]` / `[profile.NAME]` tables
    /// after what is there, so the merge is a concatenation).
    pub fn create(s: &UserSetup<'_>) -> anyhow::Result<Self> {
        const CLIENT_HEADER: &str = "# capyknock load benchmark: machine profiles\n";
        let names: Vec<String> = (1..=s.count).map(|i| format!("u{i:04}")).collect();
        let mut chains: Vec<Vec<String>> = vec![Vec::new(); KEYGEN_SHARDS];
        for (i, n) in names.iter().enumerate() {
            if let Some(c) = chains.get_mut(i % KEYGEN_SHARDS) {
                c.push(n.clone());
            }
        }
        let mut threads = Vec::new();
        for (i, chain) in chains.into_iter().enumerate() {
            let server = s.dir.join(format!("keygen-{i}-server.toml"));
            let client = s.dir.join(format!("keygen-{i}-client.toml"));
            write_private(&server, s.server_header.as_bytes())?;
            write_private(&client, CLIENT_HEADER.as_bytes())?;
            let bin = s.bin.to_owned();
            let (addr, port, access) = (s.server_addr, s.service_port, s.access.to_owned());
            threads.push(std::thread::spawn(move || -> anyhow::Result<_> {
                for name in &chain {
                    check_interrupted()?;
                    process::run(
                        Command::new(&bin)
                            .args(["keygen", "--nickname", name, "--profile", name])
                            .args(["--server", &addr.to_string(), "--ports", &port.to_string()])
                            .args(["--totp-mode", "derived", "--access", &access, "--no-qr"])
                            .arg("--server-config")
                            .arg(&server)
                            .arg("--client-config")
                            .arg(&client)
                            .stdin(Stdio::null()),
                    )?;
                }
                Ok((server, client))
            }));
        }
        let mut server_text = s.server_header.to_owned();
        let mut client_text = CLIENT_HEADER.to_owned();
        for t in threads {
            let (server, client) = t
                .join()
                .map_err(|_| anyhow::anyhow!("keygen thread panicked"))??;
            let one = std::fs::read_to_string(&server)?;
            server_text.push_str(
                one.strip_prefix(s.server_header)
                    .context("keygen rewrote the start of the server config")?,
            );
            let one = std::fs::read_to_string(&client)?;
            client_text.push_str(
                one.strip_prefix(CLIENT_HEADER)
                    .context("keygen rewrote the start of the client config")?,
            );
            let _ = std::fs::remove_file(server);
            let _ = std::fs::remove_file(client);
        }
        write_private(s.server_config, server_text.as_bytes())?;
        write_private(s.client_config, client_text.as_bytes())?;
        Ok(Self {
            last_step: vec![None; names.len()],
            profiles: names,
        })
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.profiles.len()
    }

    /// `n` users that have not knocked in the current step, marked as knocking in it; waits for
    /// the next step when too few are left.
    pub fn take(&mut self, n: usize) -> anyhow::Result<Vec<String>> {
        if n > self.profiles.len() {
            bail!(
                "{n} knocks in one run need {n} users, there are {}",
                self.profiles.len()
            );
        }
        loop {
            let step = time_step();
            let free: Vec<usize> = (0..self.profiles.len())
                .filter(|&i| self.last_step.get(i).copied().flatten() != Some(step))
                .take(n)
                .collect();
            if free.len() == n {
                let mut out = Vec::with_capacity(n);
                for i in free {
                    if let (Some(s), Some(p)) = (self.last_step.get_mut(i), self.profiles.get(i)) {
                        *s = Some(step);
                        out.push(p.clone());
                    }
                }
                return Ok(out);
            }
            let wait = secs_left_in_step();
            println!(
                "    (every user knocked in this TOTP step: waiting {wait} s for the next one)"
            );
            sleep(Duration::from_millis(wait * 1000 + 300))?;
        }
    }

    /// Marks `profiles` as having knocked in `step`: their packets, made by [`generate`] after
    /// [`Self::take`], carry the code of the step the knock process ran in, which is the next
    /// one when a step ended meanwhile (without this, the next run's knocks of those users in
    /// that step were refused as `replayed_totp`).
    pub fn mark(&mut self, profiles: &[String], step: u64) {
        for name in profiles {
            if let Some(i) = self.profiles.iter().position(|p| p == name)
                && let Some(s) = self.last_step.get_mut(i)
            {
                *s = Some(s.map_or(step, |last| last.max(step)));
            }
        }
    }
}

/// Makes one knock packet per profile with the real client in the sink namespace `sink`.
pub fn generate(
    bin: &Path,
    sink: &NetNs,
    client_config: &Path,
    dir: &Path,
    profiles: &[String],
) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut out = Vec::with_capacity(profiles.len());
    let mut running: std::collections::VecDeque<(PathBuf, Child, String)> =
        std::collections::VecDeque::new();
    let finish = |(file, mut child, profile): (PathBuf, Child, String)| -> anyhow::Result<Vec<u8>> {
        let status = child.wait().context("waiting for capyknock knock")?;
        if !status.success() {
            bail!("capyknock knock {profile} --no-check --save-packet failed ({status})");
        }
        let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        let _ = std::fs::remove_file(&file);
        Ok(bytes)
    };
    for (i, profile) in profiles.iter().enumerate() {
        check_interrupted()?;
        if running.len() >= GENERATE_PARALLEL
            && let Some(r) = running.pop_front()
        {
            out.push(finish(r)?);
        }
        let file = dir.join(format!("knock-{i}.bin"));
        let _ = std::fs::remove_file(&file);
        let child = sink
            .command(bin)
            .args(["knock", profile, "--no-check", "-q", "--client-config"])
            .arg(client_config)
            .arg("--save-packet")
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start capyknock knock")?;
        running.push_back((file, child, profile.clone()));
    }
    while let Some(r) = running.pop_front() {
        out.push(finish(r)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(n: usize) -> Users {
        Users {
            profiles: (1..=n).map(|i| format!("u{i:04}")).collect(),
            last_step: vec![None; n],
        }
    }

    #[test]
    fn taken_users_are_not_taken_again_in_the_step_their_packets_carry() {
        let mut u = users(3);
        let taken = u.take(2).unwrap();
        assert_eq!(taken, ["u0001", "u0002"]);
        let step = time_step();
        // The packets were made after the step ended: they carry the next one.
        u.mark(&taken, step + 1);
        assert_eq!(u.last_step, [Some(step + 1), Some(step + 1), None]);
        // Marking never moves a user back.
        u.mark(&taken[..1], step);
        assert_eq!(u.last_step[0], Some(step + 1));
        assert!(u.take(4).is_err(), "more than there are");
    }
}
