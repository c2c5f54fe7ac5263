//! Installing and removing the capture rules with `iptables-restore` and `iptables-save` (and
//! their ip6tables twins), in the network namespace of the calling thread.
//!
//! Each family's change is one `iptables-restore --noflush` transaction per table: rules that a
//! previous run left are removed in the same transaction that installs the new ones, so a pod
//! never runs with half a rule set, and running `apply` twice gives the same rules as once.

use std::collections::BTreeMap;
use std::env;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::config::Config;
use crate::error::Error;
use crate::host;
use crate::rules::{self, CHAIN_PREFIX, Family, RestoreScript, Rule, Table, is_builtin_chain};

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The families rules were installed for.
    pub families: Vec<Family>,
    /// True when rules of an earlier run were found and replaced.
    pub replaced: bool,
}

/// What [`cleanup`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cleaned {
    /// The chains deleted, with their family and table.
    pub chains: Vec<(Family, Table, String)>,
    /// How many rules in built-in chains (jumps into ours, interface exclusions) were deleted.
    pub hooks: usize,
}

/// Installs the capture rules of `config`: IPv4 always, IPv6 when `config.ipv6` (adding the
/// `::6` passthrough source to `lo`). Rules of an earlier run are replaced atomically.
pub fn apply(config: &Config) -> Result<Applied, Error> {
    let rendered = rules::render(config)?;
    host::require_net_admin()?;
    let mut applied = Applied {
        families: Vec::new(),
        replaced: false,
    };
    let scripts = [
        (Family::V4, Some(rendered.ipv4)),
        (Family::V6, rendered.ipv6),
    ];
    for (family, script) in scripts {
        let Some(mut script) = script else { continue };
        let saved = Saved::parse(&save(family)?);
        let (stale, _) = saved.cleanup_script(&owned_hooks(config, family));
        applied.replaced |= !stale.is_empty();
        script.prepend(stale);
        restore(family, &script)?;
        applied.families.push(family);
    }
    if config.ipv6 {
        host::add_ipv6_passthrough_address()?;
    }
    Ok(applied)
}

/// Removes every `ISTIO_*` chain and every jump into one, for IPv4 and (where the kernel has it)
/// IPv6, plus the non-jump rules `config` puts in built-in chains (interface exclusions).
/// Running it with nothing installed does nothing and succeeds.
pub fn cleanup(config: &Config) -> Result<Cleaned, Error> {
    host::require_net_admin()?;
    let mut cleaned = Cleaned::default();
    let families = if host::ipv6_available() {
        vec![Family::V4, Family::V6]
    } else {
        vec![Family::V4]
    };
    for family in families {
        let saved = Saved::parse(&save(family)?);
        let (script, hooks) = saved.cleanup_script(&owned_hooks(config, family));
        if script.is_empty() {
            continue;
        }
        restore(family, &script)?;
        cleaned.hooks += hooks;
        for (table, saved_table) in &saved.tables {
            for chain in &saved_table.chains {
                cleaned.chains.push((family, *table, chain.clone()));
            }
        }
    }
    Ok(cleaned)
}

/// Checks that capture rules are installed in this network namespace (by a CNI plugin, which
/// `istio-validation`'s `--run-validation --skip-rule-apply` relies on): the IPv4 nat table
/// has the `ISTIO_OUTPUT` chain that every capture config installs.
pub fn check_installed() -> Result<(), Error> {
    const CHAIN: &str = "ISTIO_OUTPUT";
    let saved = Saved::parse(&save(Family::V4)?);
    let present = saved
        .tables
        .get(&Table::Nat)
        .is_some_and(|t| t.chains.iter().any(|c| c == CHAIN));
    if present {
        Ok(())
    } else {
        Err(Error::NotCaptured {
            family: Family::V4,
            chain: CHAIN,
        })
    }
}

/// The rules `config` adds to built-in chains that do not jump into an `ISTIO_*` chain, as
/// iptables-save prints them: cleanup cannot recognise these by their target alone.
fn owned_hooks(config: &Config, family: Family) -> Vec<(Table, String)> {
    let Ok(set) = rules::rules(config, family) else {
        // A config we cannot render (TPROXY) still gets its ISTIO_* chains removed.
        return Vec::new();
    };
    set.rules
        .iter()
        .filter(|rule| is_builtin_chain(rule.chain) && !jumps_to_ours(rule))
        .map(|rule| (rule.table, normalize(&rule.saved_form())))
        .collect()
}

fn jumps_to_ours(rule: &Rule) -> bool {
    rule.jump_target()
        .is_some_and(|target| target.starts_with(CHAIN_PREFIX))
}

fn normalize(line: &str) -> String {
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The capture-relevant part of iptables-save output: per table, our chains and the rules of
/// the built-in chains.
#[derive(Debug, Default)]
struct Saved {
    tables: BTreeMap<Table, SavedTable>,
}

#[derive(Debug, Default)]
struct SavedTable {
    /// `ISTIO_*` chains, in the order declared.
    chains: Vec<String>,
    /// Rules of built-in chains, as printed (`-A OUTPUT -j ISTIO_OUTPUT`).
    hooks: Vec<String>,
}

impl Saved {
    fn parse(text: &str) -> Saved {
        let mut saved = Saved::default();
        let mut current: Option<Table> = None;
        for line in text.lines().map(str::trim) {
            if let Some(name) = line.strip_prefix('*') {
                current = Table::from_name(name.trim());
                continue;
            }
            let Some(table) = current else { continue };
            if let Some(decl) = line.strip_prefix(':') {
                let chain = decl.split_whitespace().next().unwrap_or_default();
                if chain.starts_with(CHAIN_PREFIX) {
                    saved
                        .tables
                        .entry(table)
                        .or_default()
                        .chains
                        .push(chain.to_string());
                }
            } else if let Some(rule) = line.strip_prefix("-A ") {
                let chain = rule.split_whitespace().next().unwrap_or_default();
                if is_builtin_chain(chain) {
                    saved
                        .tables
                        .entry(table)
                        .or_default()
                        .hooks
                        .push(normalize(line));
                }
            }
        }
        saved
    }

    /// A script that deletes our hooks from built-in chains, then flushes and deletes our chains
    /// (all flushed before any is deleted, since they jump to each other). Also returns how many
    /// hooks it deletes.
    fn cleanup_script(&self, owned: &[(Table, String)]) -> (RestoreScript, usize) {
        let mut script = RestoreScript::default();
        let mut hooks = 0;
        for (table, saved) in &self.tables {
            for hook in &saved.hooks {
                let ours = saved_jump_target(hook).is_some_and(|t| t.starts_with(CHAIN_PREFIX))
                    || owned.iter().any(|(t, line)| t == table && line == hook);
                if ours {
                    // "-A CHAIN spec" -> "-D CHAIN spec"
                    script.push(*table, format!("-D {}", &hook[3..]));
                    hooks += 1;
                }
            }
            for chain in &saved.chains {
                script.push(*table, format!("-F {chain}"));
            }
            for chain in &saved.chains {
                script.push(*table, format!("-X {chain}"));
            }
        }
        (script, hooks)
    }
}

fn saved_jump_target(line: &str) -> Option<&str> {
    let words: Vec<&str> = line.split_whitespace().collect();
    words
        .windows(2)
        .rev()
        .find(|pair| pair[0] == "-j" || pair[0] == "-g")
        .map(|pair| pair[1])
}

/// Finds `program` in `PATH`, as istio-iptables does.
fn locate(program: &'static str) -> Result<PathBuf, Error> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .ok_or(Error::NotInstalled { program })
}

/// The whole rule set of `family`, as iptables-save prints it.
pub(crate) fn save(family: Family) -> Result<String, Error> {
    let program = family.save_program();
    let output = Command::new(locate(program)?)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::io(format!("run {program}"), e))?;
    if !output.status.success() {
        return Err(failure(program, &output.stderr, ""));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Loads `script` with `iptables-restore --noflush` (or ip6tables-restore).
pub(crate) fn restore(family: Family, script: &RestoreScript) -> Result<(), Error> {
    let program = family.restore_program();
    let input = script.to_string();
    let mut child = Command::new(locate(program)?)
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io(format!("run {program}"), e))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A write error means the program exited early; its status and stderr say why.
        let _ = stdin.write_all(input.as_bytes());
    }
    let output = child
        .wait_with_output()
        .map_err(|e| Error::io(format!("wait for {program}"), e))?;
    if !output.status.success() {
        return Err(failure(program, &output.stderr, &input));
    }
    Ok(())
}

/// Turns a failed run into an error: permission problems apart, and for a rejected rule the
/// line of `input` the program names.
fn failure(program: &'static str, stderr: &[u8], input: &str) -> Error {
    let stderr = String::from_utf8_lossy(stderr).trim().to_string();
    if stderr.contains("Permission denied") || stderr.contains("must be root") {
        let first = stderr.lines().next().unwrap_or_default();
        return Error::PermissionDenied {
            detail: format!(" ({program}: {first})"),
        };
    }
    let at = failed_line(&stderr)
        .and_then(|n| Some((n, input.lines().nth(n.checked_sub(1)?)?)))
        .map(|(n, text)| format!("\n  at line {n}: {text}"))
        .unwrap_or_default();
    Error::Rejected {
        program,
        stderr,
        at,
    }
}

/// The input line iptables-restore blames: `line N failed` or `Error occurred at line: N`.
fn failed_line(stderr: &str) -> Option<usize> {
    for marker in ["Error occurred at line: ", "line "] {
        if let Some(rest) = stderr.split(marker).nth(1) {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if let Ok(n) = digits.parse() {
                return Some(n);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVED: &str = "\
# Generated by iptables-save v1.8.9 (nf_tables)
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:ISTIO_INBOUND - [0:0]
:ISTIO_OUTPUT - [0:0]
:KUBE-SERVICES - [0:0]
-A PREROUTING -i eth9 -j RETURN
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A OUTPUT -j KUBE-SERVICES
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN
-A ISTIO_OUTPUT -j RETURN
COMMIT
";

    #[test]
    fn cleanup_removes_our_hooks_and_chains_only() {
        let saved = Saved::parse(SAVED);
        let owned = vec![(Table::Nat, "-A PREROUTING -i eth9 -j RETURN".to_string())];
        let (script, hooks) = saved.cleanup_script(&owned);
        assert_eq!(hooks, 3);
        assert_eq!(
            script.to_string(),
            "*nat\n\
             -D PREROUTING -i eth9 -j RETURN\n\
             -D PREROUTING -p tcp -j ISTIO_INBOUND\n\
             -D OUTPUT -j ISTIO_OUTPUT\n\
             -F ISTIO_INBOUND\n\
             -F ISTIO_OUTPUT\n\
             -X ISTIO_INBOUND\n\
             -X ISTIO_OUTPUT\n\
             COMMIT\n"
        );
    }

    #[test]
    fn cleanup_of_a_clean_table_is_empty() {
        let saved = Saved::parse("*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j KUBE-X\nCOMMIT\n");
        assert!(saved.cleanup_script(&[]).0.is_empty());
    }

    #[test]
    fn owned_hooks_are_the_interface_exclusions() {
        let config = Config {
            exclude_interfaces: "eth9".parse().unwrap(),
            kube_virt_interfaces: "vm0".parse().unwrap(),
            ..Config::default()
        };
        let hooks: Vec<String> = owned_hooks(&config, Family::V4)
            .into_iter()
            .map(|(_, line)| line)
            .collect();
        assert_eq!(
            hooks,
            [
                "-A PREROUTING -i eth9 -j RETURN",
                "-A OUTPUT -o eth9 -j RETURN",
                "-A PREROUTING -i vm0 -j RETURN"
            ]
        );
    }

    #[test]
    fn failures_name_the_line() {
        let input = "*nat\n-N ISTIO_X\n-A ISTIO_X -m foo -j RETURN\nCOMMIT\n";
        let err = failure(
            "iptables-restore",
            b"iptables-restore v1.8.9 (nf_tables): Couldn't load match `foo'\n\nError occurred at line: 3\n",
            input,
        );
        let msg = err.to_string();
        assert!(msg.contains("Couldn't load match"), "{msg}");
        assert!(
            msg.ends_with("at line 3: -A ISTIO_X -m foo -j RETURN"),
            "{msg}"
        );

        let err = failure(
            "iptables-restore",
            b"iptables-restore: line 2 failed: No chain",
            input,
        );
        assert!(err.to_string().ends_with("at line 2: -N ISTIO_X"), "{err}");
    }

    #[test]
    fn permission_problems_say_what_to_do() {
        let err = failure(
            "iptables-restore",
            b"iptables-restore v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)",
            "",
        );
        assert!(matches!(err, Error::PermissionDenied { .. }));
        assert!(err.to_string().contains("CAP_NET_ADMIN"), "{err}");
    }

    #[test]
    fn a_missing_program_says_to_install_iptables() {
        let err = Error::NotInstalled {
            program: "iptables-restore",
        };
        assert_eq!(
            err.to_string(),
            "iptables-restore not found in PATH: install the iptables package \
             (Debian/Ubuntu: apt-get install iptables)"
        );
    }
}
