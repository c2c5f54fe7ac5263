//! Who is calling: a bearer token in, the caller's namespace and service account out.
//!
//! Istio's agents send `authorization: Bearer <token>` with every call to the CA (and with the
//! ADS stream on 15012). The control plane turns that into a [`Caller`] with a
//! [`TokenAuthenticator`]:
//!
//! - in Kubernetes, the pod's projected service-account token, checked by the API server's
//!   TokenReview ([`crate::token_review`]);
//! - in file mode (`ama up`, no API server), a per-workload token the control plane issues
//!   itself: [`FileTokens`].
//!
//! # File-mode tokens
//!
//! One file per pod, written by [`FileTokens::issue`] (idempotent: an existing token is kept):
//!
//! ```text
//! <state>/tokens/                          directories mode 0711 (no listing; a known path opens)
//! <state>/tokens/<namespace>/<sa>/<pod>    mode 0600: 64 hex characters (256 random bits) + "\n"
//! ```
//!
//! `ama up` hands a sidecar its file as `--token-file` (the proxy sends it as its bearer token),
//! after giving the file to the sidecar's user ([`WorkloadToken::give_to`], uid 1337); deleting
//! the file ([`FileTokens::revoke`]) revokes it. Names are DNS-1123 subdomains, so a
//! path can never leave the directory. The directory is read at start and re-read (at most every
//! [`RESCAN_INTERVAL`]) when an unknown token arrives, so tokens another process issued into the
//! same directory are found.
//!
//! Only SHA-256 digests of tokens are kept in memory; a presented token is hashed and the digest
//! compared in constant time. Tokens never appear in logs, error messages or `Debug` output.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use tonic::metadata::MetadataMap;

/// The largest bearer token accepted (a Kubernetes projected token is about 1 KiB).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
/// How often, at most, [`FileTokens`] re-reads its directory on an unknown token.
pub const RESCAN_INTERVAL: Duration = Duration::from_millis(250);
/// Directory of the file-mode tokens under the state directory.
pub const TOKENS_DIR: &str = "tokens";

/// A boxed future, as the authenticator traits return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An authenticated caller: the workload the token was issued to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Caller {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's service account.
    pub service_account: String,
    /// The pod, when the authenticator knows it.
    pub pod: Option<String>,
}

impl Caller {
    /// The caller's SPIFFE id in `trust_domain`: the only id the CA signs for it.
    pub fn spiffe_id(&self, trust_domain: &str) -> Result<identity::SpiffeId, identity::Error> {
        Ok(identity::SpiffeId::new(
            trust_domain,
            self.namespace.as_str(),
            self.service_account.as_str(),
        )?)
    }

    /// What the ADS server checks a proxy's node against (Istio's connection identity check):
    /// the namespace and service account, not the pod.
    pub fn peer_identity(&self) -> xds::ads::PeerIdentity {
        xds::ads::PeerIdentity {
            namespace: self.namespace.clone(),
            service_account: self.service_account.clone(),
        }
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.service_account)?;
        if let Some(pod) = &self.pod {
            write!(f, " (pod {pod})")?;
        }
        Ok(())
    }
}

/// A bearer token as presented. `Debug` never shows it, and there is no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(String);

impl BearerToken {
    /// Wraps a token (surrounding whitespace removed).
    pub fn new(token: impl Into<String>) -> BearerToken {
        let token: String = token.into();
        BearerToken(token.trim().to_string())
    }

    /// Reads `authorization: Bearer <token>` from gRPC metadata (the scheme is matched without
    /// regard to case, as HTTP's are).
    pub fn from_metadata(metadata: &MetadataMap) -> Result<BearerToken, AuthError> {
        let value = metadata
            .get("authorization")
            .ok_or(AuthError::MissingToken)?;
        Self::from_header(value.as_bytes())
    }

    /// Reads a token from an `Authorization` header value.
    pub fn from_header(value: &[u8]) -> Result<BearerToken, AuthError> {
        let value = std::str::from_utf8(value)
            .map_err(|_| AuthError::Malformed("the authorization value is not text"))?;
        let (scheme, token) = value
            .trim()
            .split_once(' ')
            .ok_or(AuthError::Malformed("expected \"Bearer <token>\""))?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Malformed(
                "the authorization scheme is not Bearer",
            ));
        }
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::MissingToken);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed("the bearer token is too long"));
        }
        Ok(BearerToken(token.to_string()))
    }

    /// The token text, to send on (TokenReview) or compare. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken([redacted])")
    }
}

/// Why a caller was not authenticated. Messages never quote the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `authorization` metadata, or an empty token.
    #[error("no bearer token (authorization: Bearer <token>)")]
    MissingToken,
    /// The `authorization` value is not a bearer token.
    #[error("{0}")]
    Malformed(&'static str),
    /// The token is not valid (unknown, expired, wrong audience, not a service account).
    #[error("token rejected: {0}")]
    Rejected(String),
    /// The authenticator could not decide (the API server is unreachable): the caller may
    /// retry.
    #[error("cannot check the token now: {0}")]
    Unavailable(String),
}

impl From<AuthError> for tonic::Status {
    fn from(error: AuthError) -> tonic::Status {
        match error {
            AuthError::Unavailable(_) => tonic::Status::unavailable(error.to_string()),
            _ => tonic::Status::unauthenticated(error.to_string()),
        }
    }
}

/// Maps a bearer token to the workload it belongs to.
///
/// Implementations must compare secrets in constant time and never log them.
pub trait TokenAuthenticator: Send + Sync + fmt::Debug {
    /// Authenticates `token`.
    fn authenticate<'a>(
        &'a self,
        token: &'a BearerToken,
    ) -> BoxFuture<'a, Result<Caller, AuthError>>;
}

/// Why a file-mode token could not be issued, revoked or read.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// A namespace, service account or pod name that cannot be a path component.
    #[error("{what} {name:?}: not a DNS-1123 subdomain (lowercase letters, digits, '-', '.')")]
    InvalidName {
        /// `namespace`, `service account` or `pod`.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// A file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> TokenError + '_ {
    move |source| TokenError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A token [`FileTokens::issue`] wrote: its file and its text. `Debug` hides the text.
#[derive(Clone)]
pub struct WorkloadToken {
    path: PathBuf,
    token: BearerToken,
}

impl WorkloadToken {
    /// The token file, to hand to the sidecar (`--token-file`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The token. Never log it.
    pub fn token(&self) -> &BearerToken {
        &self.token
    }

    /// Makes the sidecar's user (`uid`:`gid`, Istio's 1337) the owner of the token file, so it
    /// can read it (mode stays 0600). Needs the privilege to chown (root).
    pub fn give_to(&self, uid: u32, gid: u32) -> Result<(), TokenError> {
        std::os::unix::fs::chown(&self.path, Some(uid), Some(gid)).map_err(io_error(&self.path))
    }
}

impl fmt::Debug for WorkloadToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadToken")
            .field("path", &self.path)
            .field("token", &"[redacted]")
            .finish()
    }
}

type TokenDigest = [u8; 32];

/// File-mode tokens: per-workload random tokens the control plane issues (see the module docs
/// for the layout). Cheap to share behind an `Arc`; lookups take a read lock.
pub struct FileTokens {
    dir: PathBuf,
    index: RwLock<HashMap<TokenDigest, Caller>>,
    last_scan: Mutex<Instant>,
}

impl FileTokens {
    /// Opens (creating, mode 0711) `<state_dir>/tokens` and reads the tokens in it.
    pub fn open(state_dir: &Path) -> Result<FileTokens, TokenError> {
        let dir = state_dir.join(TOKENS_DIR);
        create_private_dir(&dir)?;
        let tokens = FileTokens {
            index: RwLock::new(scan(&dir)?),
            dir,
            last_scan: Mutex::new(Instant::now()),
        };
        Ok(tokens)
    }

    /// The directory tokens live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of a pod's token: `<dir>/<namespace>/<sa>/<pod>`.
    pub fn path(
        &self,
        namespace: &str,
        service_account: &str,
        pod: &str,
    ) -> Result<PathBuf, TokenError> {
        check_name("namespace", namespace)?;
        check_name("service account", service_account)?;
        check_name("pod", pod)?;
        Ok(self.dir.join(namespace).join(service_account).join(pod))
    }

    /// The token of a pod, made (256 random bits, file mode 0600) if it has none yet. A pod
    /// keeps its token across control-plane restarts; issue again after [`Self::revoke`] for a
    /// new one.
    pub fn issue(
        &self,
        namespace: &str,
        service_account: &str,
        pod: &str,
    ) -> Result<WorkloadToken, TokenError> {
        let path = self.path(namespace, service_account, pod)?;
        let caller = Caller {
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
            pod: Some(pod.to_string()),
        };
        if let Some(token) = read_token(&path)? {
            self.insert(&token, caller);
            return Ok(WorkloadToken { path, token });
        }
        if let Some(parent) = path.parent() {
            create_private_dir(parent)?;
        }
        let token = BearerToken(hex::encode(rand::random::<[u8; 32]>()));
        write_private(&path, &format!("{}\n", token.expose()))?;
        self.insert(&token, caller);
        tracing::info!(namespace, service_account, pod, file = %path.display(), "workload token issued");
        Ok(WorkloadToken { path, token })
    }

    /// Revokes a pod's token: its file is removed and the token no longer authenticates.
    pub fn revoke(
        &self,
        namespace: &str,
        service_account: &str,
        pod: &str,
    ) -> Result<(), TokenError> {
        let path = self.path(namespace, service_account, pod)?;
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(&path)(e)),
        }
        let fresh = scan(&self.dir)?;
        *self.index.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    fn insert(&self, token: &BearerToken, caller: Caller) {
        self.index
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(digest(token.expose()), caller);
    }

    fn lookup(&self, token: &BearerToken) -> Option<Caller> {
        let wanted = digest(token.expose());
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        // The map is keyed by digest, so its probing reveals nothing about the token itself;
        // the final comparison is constant-time all the same.
        index
            .get_key_value(&wanted)
            .filter(|(stored, _)| constant_time_eq(stored.as_slice(), wanted.as_slice()))
            .map(|(_, caller)| caller.clone())
    }

    /// Re-reads the directory unless that was done less than [`RESCAN_INTERVAL`] ago.
    fn rescan_if_due(&self) {
        {
            let mut last = self.last_scan.lock().unwrap_or_else(|e| e.into_inner());
            if last.elapsed() < RESCAN_INTERVAL {
                return;
            }
            *last = Instant::now();
        }
        match scan(&self.dir) {
            Ok(fresh) => *self.index.write().unwrap_or_else(|e| e.into_inner()) = fresh,
            Err(error) => tracing::warn!(%error, "re-reading workload tokens"),
        }
    }
}

impl fmt::Debug for FileTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.index.read().map(|i| i.len()).unwrap_or_default();
        f.debug_struct("FileTokens")
            .field("dir", &self.dir)
            .field("tokens", &count)
            .finish()
    }
}

impl TokenAuthenticator for FileTokens {
    fn authenticate<'a>(
        &'a self,
        token: &'a BearerToken,
    ) -> BoxFuture<'a, Result<Caller, AuthError>> {
        Box::pin(async move {
            if let Some(caller) = self.lookup(token) {
                return Ok(caller);
            }
            self.rescan_if_due();
            self.lookup(token)
                .ok_or_else(|| AuthError::Rejected("unknown workload token".to_string()))
        })
    }
}

fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// Compares without an early exit, so the time taken does not depend on where `a` and `b`
/// differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// A DNS-1123 subdomain: what Kubernetes allows for namespace, service-account and pod names,
/// and a safe path component (no `/`, never `.` or `..`).
fn check_name(what: &'static str, name: &str) -> Result<(), TokenError> {
    let bytes = name.as_bytes();
    let edge = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let valid = !bytes.is_empty()
        && bytes.len() <= 253
        && bytes.first().is_some_and(edge)
        && bytes.last().is_some_and(edge)
        && bytes.iter().all(|b| edge(b) || *b == b'-' || *b == b'.');
    if valid {
        Ok(())
    } else {
        Err(TokenError::InvalidName {
            what,
            name: name.to_string(),
        })
    }
}

/// Reads a token file: `None` when absent or empty.
fn read_token(path: &Path) -> Result<Option<BearerToken>, TokenError> {
    match fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => Ok(None),
        Ok(text) => Ok(Some(BearerToken::new(text))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(path)(e)),
    }
}

/// Every `<ns>/<sa>/<pod>` file under `dir`. Entries with other shapes are skipped (logged).
fn scan(dir: &Path) -> Result<HashMap<TokenDigest, Caller>, TokenError> {
    let mut index = HashMap::new();
    let entries = |path: &Path| -> Result<Vec<(String, PathBuf, bool)>, TokenError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(path).map_err(io_error(path))? {
            let entry = entry.map_err(io_error(path))?;
            let is_dir = entry.file_type().map_err(io_error(&entry.path()))?.is_dir();
            if let Some(name) = entry.file_name().to_str()
                && check_name("entry", name).is_ok()
            {
                out.push((name.to_string(), entry.path(), is_dir));
            }
        }
        Ok(out)
    };
    for (namespace, ns_path, ns_dir) in entries(dir)? {
        if !ns_dir {
            continue;
        }
        for (service_account, sa_path, sa_dir) in entries(&ns_path)? {
            if !sa_dir {
                continue;
            }
            for (pod, pod_path, pod_dir) in entries(&sa_path)? {
                if pod_dir {
                    continue;
                }
                if let Some(token) = read_token(&pod_path)? {
                    index.insert(
                        digest(token.expose()),
                        Caller {
                            namespace: namespace.clone(),
                            service_account: service_account.clone(),
                            pod: Some(pod),
                        },
                    );
                }
            }
        }
    }
    Ok(index)
}

/// Token directories: others may pass through to a file they were given, not list the names.
fn create_private_dir(dir: &Path) -> Result<(), TokenError> {
    use std::os::unix::fs::DirBuilderExt as _;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(dir)
        .map_err(io_error(dir))
}

/// Writes `contents` to `path` with mode 0600, through a temporary file renamed into place, so a
/// reader never sees half a token.
fn write_private(path: &Path, contents: &str) -> Result<(), TokenError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_error(&tmp))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_error(&tmp))?;
    fs::rename(&tmp, path).map_err(io_error(path))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn block_on<T>(f: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn issue_authenticate_revoke() {
        let state = tempfile::tempdir().unwrap();
        let tokens = FileTokens::open(state.path()).unwrap();
        let issued = tokens.issue("default", "httpbin", "httpbin-0").unwrap();
        assert_eq!(
            issued.path(),
            state.path().join("tokens/default/httpbin/httpbin-0")
        );
        let text = fs::read_to_string(issued.path()).unwrap();
        assert_eq!(text.trim().len(), 64);
        assert_eq!(text.trim(), issued.token().expose());
        let mode = fs::metadata(issued.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = fs::metadata(state.path().join("tokens"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o711);

        {
            use std::os::unix::fs::MetadataExt as _;
            let meta = fs::metadata(issued.path()).unwrap();
            issued.give_to(meta.uid(), meta.gid()).unwrap();
        }

        // Idempotent: the same pod keeps its token.
        let again = tokens.issue("default", "httpbin", "httpbin-0").unwrap();
        assert_eq!(again.token(), issued.token());
        let other = tokens.issue("default", "httpbin", "httpbin-1").unwrap();
        assert_ne!(other.token(), issued.token());

        let caller = block_on(tokens.authenticate(issued.token())).unwrap();
        assert_eq!(caller.to_string(), "default/httpbin (pod httpbin-0)");
        let bad = BearerToken::new("0".repeat(64));
        assert!(matches!(
            block_on(tokens.authenticate(&bad)),
            Err(AuthError::Rejected(_))
        ));

        // A second instance (another process) reads what the first wrote.
        let reader = FileTokens::open(state.path()).unwrap();
        assert_eq!(
            block_on(reader.authenticate(issued.token())).unwrap(),
            caller
        );

        tokens.revoke("default", "httpbin", "httpbin-0").unwrap();
        assert!(block_on(tokens.authenticate(issued.token())).is_err());
        assert!(block_on(tokens.authenticate(other.token())).is_ok());
    }

    #[test]
    fn picks_up_tokens_issued_elsewhere() {
        let state = tempfile::tempdir().unwrap();
        let server = FileTokens::open(state.path()).unwrap();
        let issued = FileTokens::open(state.path())
            .unwrap()
            .issue("ns", "sa", "pod")
            .unwrap();
        std::thread::sleep(RESCAN_INTERVAL);
        assert_eq!(
            block_on(server.authenticate(issued.token()))
                .unwrap()
                .namespace,
            "ns"
        );
    }

    #[test]
    fn names_are_path_safe() {
        let state = tempfile::tempdir().unwrap();
        let tokens = FileTokens::open(state.path()).unwrap();
        for bad in ["..", ".", "a/b", "", "-a", "A", "a\0", &"a".repeat(254)] {
            assert!(
                matches!(
                    tokens.issue(bad, "sa", "pod"),
                    Err(TokenError::InvalidName { .. })
                ),
                "{bad:?}"
            );
            assert!(tokens.issue("ns", "sa", bad).is_err(), "{bad:?}");
        }
        assert!(tokens.issue("ns", "sa.x", "pod-1.a").is_ok());
    }

    #[test]
    fn bearer_parsing_and_redaction() {
        let mut md = MetadataMap::new();
        assert_eq!(
            BearerToken::from_metadata(&md),
            Err(AuthError::MissingToken)
        );
        md.insert("authorization", "Basic abc".parse().unwrap());
        assert!(matches!(
            BearerToken::from_metadata(&md),
            Err(AuthError::Malformed(_))
        ));
        md.insert("authorization", "Bearer ".parse().unwrap());
        assert!(BearerToken::from_metadata(&md).is_err());
        md.insert("authorization", "bearer  s3cret-token ".parse().unwrap());
        let token = BearerToken::from_metadata(&md).unwrap();
        assert_eq!(token.expose(), "s3cret-token");
        assert!(!format!("{token:?}").contains("s3cret"));
        let long = format!("Bearer {}", "a".repeat(MAX_TOKEN_LEN + 1));
        assert!(BearerToken::from_header(long.as_bytes()).is_err());
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
