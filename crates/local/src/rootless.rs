//! What `ama up` without root would need from this machine, so the refusal can say exactly
//! what is missing.
//!
//! The rootless mode (not implemented yet) re-executes `ama up` inside
//! `unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET)`. Our own uid alone maps to root there,
//! which is enough for namespaces, veths and iptables, but not for the capture rules: they tell
//! the sidecar's traffic from the app's by its owner, uid 1337 (`ama iptables -u 1337`), and an
//! unprivileged process can map only its own uid. Mapping 1337 too takes the setuid helpers
//! `newuidmap`/`newgidmap` (Debian package `uidmap`) and a range of at least 1338 ids for the
//! user in `/etc/subuid` and `/etc/subgid`. Without them every process in the pods would be the
//! same mapped root, the sidecar's own connections would be captured again, and the mesh would
//! loop; so the mode requires them rather than degrading.

use std::fs;
use std::path::Path;

/// The number of subordinate ids a user needs: 1 .. 1337 inside, besides root.
const IDS_NEEDED: u64 = 1338;

/// What a rootless `ama up` needs and this machine lacks, as phrases; empty when all is there.
pub fn missing() -> Vec<String> {
    let uid = nix::unistd::getuid();
    let user = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string());
    let mut out = Vec::new();
    if !user_namespaces_allowed() {
        out.push(
            "unprivileged user namespaces (sysctl user.max_user_namespaces, \
             kernel.unprivileged_userns_clone)"
                .to_string(),
        );
    }
    let helpers: Vec<&str> = ["newuidmap", "newgidmap"]
        .into_iter()
        .filter(|h| !on_path(h))
        .collect();
    if !helpers.is_empty() {
        out.push(format!("{} (package uidmap)", helpers.join(" and ")));
    }
    let files: Vec<&str> = ["/etc/subuid", "/etc/subgid"]
        .into_iter()
        .filter(|f| {
            let text = fs::read_to_string(f).unwrap_or_default();
            !has_range(&text, &user, &uid.to_string())
        })
        .collect();
    if !files.is_empty() {
        out.push(format!(
            "{IDS_NEEDED}+ ids for {user} in {} (usermod --add-subuids/--add-subgids)",
            files.join(" and ")
        ));
    }
    out
}

fn user_namespaces_allowed() -> bool {
    let read = |p: &str| {
        fs::read_to_string(p)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
    };
    read("/proc/sys/user/max_user_namespaces").is_some_and(|n| n > 0)
        && read("/proc/sys/kernel/unprivileged_userns_clone").is_none_or(|n| n != 0)
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
        || Path::new("/usr/bin").join(program).is_file()
}

/// Whether `text` (the `/etc/subuid` format, `name:start:count`) gives `user` (by name or uid)
/// enough ids.
fn has_range(text: &str, user: &str, uid: &str) -> bool {
    text.lines().any(|line| {
        let mut f = line.trim().split(':');
        let (Some(who), Some(_start), Some(count)) = (f.next(), f.next(), f.next()) else {
            return false;
        };
        (who == user || who == uid) && count.parse::<u64>().is_ok_and(|c| c >= IDS_NEEDED)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subuid_ranges() {
        let text = "alice:100000:65536\n1001:200000:100\n";
        assert!(has_range(text, "alice", "1000"));
        assert!(!has_range(text, "bob", "1001"), "too few ids");
        assert!(!has_range(text, "carol", "1002"));
        assert!(!has_range("garbage", "alice", "1000"));
    }
}
