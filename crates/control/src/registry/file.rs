//! The file registry: a directory of the YAML a user would `kubectl apply`, watched.
//!
//! Every `*.yaml`, `*.yml` and `*.json` file under the directory (recursively; names starting
//! with `.` are skipped, as editors' temporary files are) is a YAML stream parsed with
//! [`api::objects::parse_stream`]. The directory is polled (every 200 ms by default) and a file
//! is used again when its content hash changes, which is robust on every file system, for
//! editors that write in place or rename, and for ConfigMap mounts. A file whose metadata (size,
//! modification and change times, inode) is the same as at the last read and was last modified
//! more than [`SETTLE`] ago is not even read, so a poll of thousands of unchanged files costs a
//! `stat` each; a file modified within [`SETTLE`] is read and hashed whatever its metadata says,
//! for file systems with coarse timestamps.
//!
//! - A malformed document is reported once (`file:doc N: Kind ns/name: field: message`) and
//!   left out; the file's other documents still apply. What Ama does not implement of a good
//!   document is logged the same way, at WARN, when the file is read
//!   ([`api::objects::parse`]).
//! - A file whose documents are all malformed keeps the objects it had before (an editor's
//!   half-written save does not take the mesh down); a new file like that adds nothing. Other
//!   files are never affected.
//! - Deleting a file removes its objects.
//!
//! [`FileRegistry::apply`] is `ama apply -f`: it checks a stream and writes its good documents
//! into the directory (`applied/<kind>-<namespace>-<name>.yaml`, one file per object, so
//! applying again replaces), then rescans at once.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use api::objects::{ObjectError, parse_stream};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::ConfigStore;

/// How often the directory is polled by default when it cannot be watched (inotify). A poll
/// costs a `stat` per unchanged file (10k files: about 15 ms of CPU), and it bounds how long a
/// change waits to be seen.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How often a watched directory is scanned all the same, in case an event was lost (inotify's
/// queue overflowed, a change inside a symlinked directory, a network file system).
pub const RESCAN_WHEN_WATCHED: Duration = Duration::from_secs(5);
/// A file modified less than this long ago is read at every poll even if its metadata did not
/// change (coarse timestamps could hide a second write).
pub const SETTLE: Duration = Duration::from_secs(2);
/// Sub-directory that [`FileRegistry::apply`] writes to.
pub const APPLIED_DIR: &str = "applied";

/// Why the registry could not read or write its directory.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The config directory is missing or not a directory.
    #[error("config directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
    /// Nothing in the input could be applied.
    #[error("nothing applied: {}", errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid {
        /// Every problem found.
        errors: Vec<ObjectError>,
    },
}

/// What one scan found.
#[derive(Debug, Default, Clone)]
pub struct ScanReport {
    /// Files read again because their content changed (relative names).
    pub changed: Vec<String>,
    /// Files that went away.
    pub removed: Vec<String>,
    /// Problems in the changed files (already logged).
    pub errors: Vec<ObjectError>,
    /// Files that could not be read (already logged); their objects are kept.
    pub unreadable: Vec<String>,
}

/// The input of [`FileRegistry::apply`].
#[derive(Debug, Clone)]
pub enum ApplySource {
    /// A file to read.
    Path(PathBuf),
    /// Text (`-f -`), with a name for messages.
    Text {
        /// Name in messages (`<stdin>`).
        name: String,
        /// The YAML stream.
        text: String,
    },
}

/// What [`FileRegistry::apply`] did.
#[derive(Debug, Clone, Default)]
pub struct ApplyReport {
    /// `Kind namespace/name` of every object written.
    pub applied: Vec<String>,
    /// Documents left out.
    pub errors: Vec<ObjectError>,
}

#[derive(Debug)]
struct FileState {
    hash: [u8; 32],
    /// The metadata when it was last read.
    stamp: Option<Stamp>,
    errors: Vec<ObjectError>,
    /// Every finding as logged, so that a file written again logs only what is new (`ama up`
    /// rewrites its objects file at every pod change).
    logged: std::collections::BTreeSet<String>,
}

/// What `stat` says of a file: when all of it is unchanged, so is the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    changed: (i64, i64),
    inode: (u64, u64),
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            changed: (meta.ctime(), meta.ctime_nsec()),
            inode: (meta.dev(), meta.ino()),
        }
    }

    /// Whether the file may be skipped: same metadata as `read`, and not modified lately.
    fn settled_as(&self, read: Option<&Stamp>, now: SystemTime) -> bool {
        read == Some(self)
            && self
                .modified
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age >= SETTLE)
    }
}

/// Watches a directory and keeps its objects in a [`ConfigStore`].
#[derive(Debug)]
pub struct FileRegistry {
    dir: PathBuf,
    store: Arc<ConfigStore>,
    files: Mutex<BTreeMap<String, FileState>>,
}

impl FileRegistry {
    /// A registry of `dir` (which must be a directory) writing into `store`. Nothing is read
    /// until [`FileRegistry::scan`] or [`FileRegistry::run`].
    pub fn new(dir: impl Into<PathBuf>, store: Arc<ConfigStore>) -> Result<Self, RegistryError> {
        let dir = dir.into();
        let meta = fs::metadata(&dir).map_err(|source| RegistryError::Dir {
            path: dir.clone(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(RegistryError::Dir {
                path: dir,
                source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
            });
        }
        Ok(FileRegistry {
            dir,
            store,
            files: Mutex::new(BTreeMap::new()),
        })
    }

    /// The watched directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The problems of the documents currently in the directory.
    pub fn errors(&self) -> Vec<ObjectError> {
        self.files
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .flat_map(|f| f.errors.iter().cloned())
            .collect()
    }

    /// Reads the files that changed since the last scan and updates the store. Blocking (file
    /// I/O): call it from a blocking context.
    pub fn scan(&self) -> ScanReport {
        let mut report = ScanReport::default();
        let mut found = BTreeMap::new();
        if let Err(e) = list(&self.dir, &self.dir, &mut found) {
            tracing::warn!("config directory {}: {e}", self.dir.display());
            return report; // keep everything as it was
        }
        let mut files = self.files.lock().unwrap_or_else(PoisonError::into_inner);
        let gone: Vec<String> = files
            .keys()
            .filter(|k| !found.contains_key(*k))
            .cloned()
            .collect();
        for name in gone {
            files.remove(&name);
            self.store.remove(&name);
            tracing::info!("{name}: removed");
            report.removed.push(name);
        }
        let now = SystemTime::now();
        for (name, (path, stamp)) in found {
            if stamp.settled_as(files.get(&name).and_then(|f| f.stamp.as_ref()), now) {
                continue;
            }
            let text = match fs::read(&path) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // raced a delete
                Err(e) => {
                    tracing::warn!("{name}: cannot read: {e}; its objects are kept");
                    report.unreadable.push(name);
                    continue;
                }
            };
            let hash: [u8; 32] = Sha256::digest(&text).into();
            if let Some(f) = files.get_mut(&name)
                && f.hash == hash
            {
                f.stamp = Some(stamp);
                continue;
            }
            let text = String::from_utf8_lossy(&text);
            let parsed = api::objects::parse(&text, &name);
            // Errors (documents left out) and what Ama does not implement of the others.
            let logged: std::collections::BTreeSet<String> =
                parsed.findings.iter().map(ToString::to_string).collect();
            let before = files.get(&name).map(|f| &f.logged);
            let mut done = std::collections::BTreeSet::new();
            for f in &parsed.findings {
                let text = f.to_string();
                if before.is_some_and(|b| b.contains(&text)) || !done.insert(text) {
                    continue;
                }
                log_finding(f);
            }
            let (errors, _): (Vec<_>, Vec<_>) =
                parsed.findings.into_iter().partition(|f| f.is_error());
            let objects = parsed.objects;
            let all_bad = objects.is_empty() && !errors.is_empty();
            if all_bad && let Some(kept) = self.store.get(&name) {
                if !kept.is_empty() {
                    tracing::warn!(
                        "{name}: no document is valid: keeping its previous {} objects",
                        kept.len()
                    );
                }
            } else {
                tracing::info!("{name}: {} objects", objects.len());
                self.store.replace(&name, objects);
            }
            report.errors.extend(errors.iter().cloned());
            files.insert(
                name.clone(),
                FileState {
                    hash,
                    stamp: Some(stamp),
                    errors,
                    logged,
                },
            );
            report.changed.push(name);
        }
        report
    }

    /// Scans at once, then whenever the directory tree changes (inotify), until `shutdown`. A
    /// change is seen as soon as it is made, and an idle directory costs nothing. A watched
    /// directory is also scanned every [`RESCAN_WHEN_WATCHED`], in case an event was lost; one
    /// that cannot be watched is polled every `interval`.
    pub async fn run(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        // One pending wake-up is enough: the scan that follows sees every change before it.
        let (wake, mut woken) = tokio::sync::mpsc::channel::<()>(1);
        let every = match watch(&self.dir, wake) {
            Ok(()) => interval.max(RESCAN_WHEN_WATCHED),
            Err(e) => {
                tracing::warn!(
                    "config directory {}: cannot watch it ({e}); polling it every {} ms instead",
                    self.dir.display(),
                    interval.as_millis()
                );
                interval
            }
        };
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
                Some(()) = woken.recv() => {}
            }
            let this = Arc::clone(&self);
            if let Err(e) = tokio::task::spawn_blocking(move || this.scan()).await {
                tracing::error!("config directory scan failed: {e}");
            }
        }
    }

    /// `ama apply -f`: checks the stream and writes each good document into
    /// `<dir>/applied/`, then rescans. Fails only when no document could be applied or a file
    /// could not be written. Blocking (file I/O).
    pub fn apply(&self, source: ApplySource) -> Result<ApplyReport, RegistryError> {
        let (name, text) = match source {
            ApplySource::Path(path) => {
                let text = fs::read_to_string(&path).map_err(|source| RegistryError::File {
                    path: path.clone(),
                    source,
                })?;
                (path.display().to_string(), text)
            }
            ApplySource::Text { name, text } => (name, text),
        };
        let mut report = ApplyReport::default();
        let out_dir = self.dir.join(APPLIED_DIR);
        for doc in api::yaml::split_documents(&text) {
            let (objects, errors) = parse_stream(doc.text, &name);
            // Errors name document 1 of the one-document stream: renumber to the input's.
            report.errors.extend(errors.into_iter().map(|mut e| {
                e.doc = doc.index;
                e.line += doc.line.saturating_sub(1);
                e
            }));
            let Some(first) = objects.first() else {
                continue;
            };
            let m = first.metadata();
            let file = format!(
                "{}-{}-{}.yaml",
                first.kind().to_ascii_lowercase(),
                if m.namespace.is_empty() {
                    "cluster"
                } else {
                    &m.namespace
                },
                m.name
            );
            fs::create_dir_all(&out_dir).map_err(|source| RegistryError::File {
                path: out_dir.clone(),
                source,
            })?;
            let path = out_dir.join(&file);
            write_atomically(&path, doc.text).map_err(|source| RegistryError::File {
                path: path.clone(),
                source,
            })?;
            report.applied.extend(objects.iter().map(|o| o.display()));
        }
        if report.applied.is_empty() && !report.errors.is_empty() {
            return Err(RegistryError::Invalid {
                errors: report.errors,
            });
        }
        self.scan();
        Ok(report)
    }
}

/// Writes through a temporary file and a rename, so a scan never sees half a file.
fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("apply")
    ));
    fs::write(&tmp, text)?;
    fs::rename(&tmp, path)
}

/// Watches `dir` and every directory under it (those made later too) with inotify, on a thread
/// of its own; each change wakes `wake`. The events themselves do not matter: the scan that
/// follows compares every file's metadata. The thread ends at the first event after `wake`'s
/// receiver is dropped, or when the directory is removed.
///
/// The `inotify` crate directly rather than `notify`: `notify` turns on features of `mio`, which
/// renames every function of tokio and of the crates above it, the sidecar's among them (see
/// `crates/cli/tests/sidecar_order.rs`), for a watch only discovery uses.
fn watch(dir: &Path, wake: tokio::sync::mpsc::Sender<()>) -> io::Result<()> {
    use inotify::{EventMask, Inotify, WatchMask};

    let mask = WatchMask::MODIFY
        | WatchMask::CLOSE_WRITE
        | WatchMask::ATTRIB
        | WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF;
    // Adds a watch on `dir` and on every directory under it, remembering each one's path.
    fn add_tree(
        inotify: &mut Inotify,
        dirs: &mut HashMap<inotify::WatchDescriptor, PathBuf>,
        dir: &Path,
        mask: WatchMask,
    ) -> io::Result<()> {
        let wd = inotify.watches().add(dir, mask)?;
        dirs.insert(wd, dir.to_path_buf());
        for entry in fs::read_dir(dir)?.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                add_tree(inotify, dirs, &entry.path(), mask)?;
            }
        }
        Ok(())
    }

    let mut inotify = Inotify::init()?;
    let mut dirs = HashMap::new();
    add_tree(&mut inotify, &mut dirs, dir, mask)?;
    std::thread::Builder::new()
        .name("config-watch".into())
        .spawn(move || {
            let mut buffer = vec![0u8; 64 * 1024];
            // Ends when `run` has ended (checked at each event) or the directory is gone.
            while !wake.is_closed() && !dirs.is_empty() {
                let mut new_dirs = Vec::new();
                match inotify.read_events_blocking(&mut buffer) {
                    Ok(events) => {
                        for e in events {
                            if e.mask.contains(EventMask::IGNORED) {
                                dirs.remove(&e.wd);
                            }
                            let made_dir = e.mask.contains(EventMask::ISDIR)
                                && e.mask.intersects(EventMask::CREATE | EventMask::MOVED_TO);
                            if let (true, Some(parent), Some(name)) =
                                (made_dir, dirs.get(&e.wd), e.name)
                            {
                                new_dirs.push(parent.join(name));
                            }
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::warn!("config directory watch: {e}; rescans continue");
                        return;
                    }
                }
                for d in new_dirs {
                    if let Err(e) = add_tree(&mut inotify, &mut dirs, &d, mask) {
                        tracing::debug!("{}: not watched: {e}", d.display());
                    }
                }
                // An overflowed queue (IN_Q_OVERFLOW) lands here too: a scan sees everything.
                let _ = wake.try_send(());
            }
        })?;
    Ok(())
}

/// Collects the config files under `dir`, by name relative to `root` (`/`-separated), with
/// their metadata.
fn list(root: &Path, dir: &Path, out: &mut BTreeMap<String, (PathBuf, Stamp)>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        if file_name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        // Follows symlinks; a dangling one is skipped.
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if let Err(e) = list(root, &path, out) {
                tracing::warn!("{}: {e}", path.display());
            }
        } else if meta.is_file()
            && [".yaml", ".yml", ".json"]
                .iter()
                .any(|ext| file_name.ends_with(ext))
        {
            let name = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            out.insert(name, (path, Stamp::of(&meta)));
        }
    }
    Ok(())
}

/// Logs a finding: at ERROR when Ama enforces a security policy more strictly than written
/// (the object is used), at WARN otherwise (a document left out, or a part not implemented).
pub fn log_finding(f: &api::objects::Finding) {
    if f.severity == api::objects::Severity::FailClosed {
        tracing::error!("{f}");
    } else {
        tracing::warn!("{f}");
    }
}
