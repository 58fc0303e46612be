//! Bearer secrets: enrollment tokens (exchanged once or a few times for an agent certificate)
//! and API tokens (a name and a role for the HTTP API).
//!
//! On-disk layout: `<data_dir>/tokens.json`, mode 0600, `{"version": 1, "tokens": [...]}`,
//! one entry per token with its id, kind, creation time and the SHA-256 of its secret; an
//! enrollment token also has its expiry and remaining uses, an API token its name and role.
//! Secrets are shown once, at creation, and never stored: a leaked file gives no token.
//!
//! Invariants: every change (create, consume, remove) is a read-modify-write under an
//! exclusive flock with an atomic rewrite (see [`json_file`]), so one use of an enrollment
//! token is consumed exactly once even with concurrent callers in several processes (the
//! CLI and the server). API token checks read an in-memory copy that is reloaded when the
//! file's stamp changes, so a token created or removed by the CLI takes effect at the next
//! request without a restart. A corrupt file is an error for every call, never an empty
//! token set that a rewrite would make permanent. The file is bounded ([`MAX_TOKENS`]).

pub mod json_file;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use self::json_file::{JsonFile, JsonFileError, Stamp};
use crate::tls::sha256_hex;

/// Prefix of every enrollment secret.
pub const ENROLL_PREFIX: &str = "cmdb-enroll-";
/// Prefix of every API secret.
pub const API_PREFIX: &str = "cmdb-api-";
/// Most tokens the file holds; dead enrollment tokens are pruned to make room.
pub const MAX_TOKENS: usize = 10_000;
/// Most uses one enrollment token may have.
pub const MAX_USES: u32 = 100_000;
/// Longest life of an enrollment token: a fleet rollout, not a standing credential.
pub const MAX_ENROLL_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Longest secret looked at; anything longer cannot be ours.
const MAX_SECRET_LEN: usize = 128;
const MAX_NAME_LEN: usize = 64;
const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;
const FILE_NAME: &str = "tokens.json";
const FORMAT_VERSION: u32 = 1;

/// An API role (DESIGN.md, "Access").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Reads everything.
    Viewer,
    /// Reads, and runs operational actions.
    Operator,
    /// Approves changes and baselines.
    ChangeManager,
    /// Reads, and runs audits.
    Auditor,
    /// Everything.
    Admin,
}

impl Role {
    /// Every role, least privileged first.
    pub const ALL: [Role; 5] = [
        Role::Viewer,
        Role::Operator,
        Role::ChangeManager,
        Role::Auditor,
        Role::Admin,
    ];

    /// The role's name as users type it ("change-manager").
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::ChangeManager => "change-manager",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not one of [`Role::ALL`].
#[derive(Debug, thiserror::Error)]
#[error("unknown role {0:?} (expected viewer, operator, change-manager, auditor or admin)")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Role, UnknownRole> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_string()))
    }
}

/// Who an API token belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiPrincipal {
    /// The name given at creation.
    pub name: String,
    /// What it may do.
    pub role: Role,
}

/// The kind of a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenKind {
    /// Exchanged for an agent certificate.
    Enrollment,
    /// Authenticates HTTP API calls.
    Api,
}

/// A token as listed: everything but the secret (which is not stored).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TokenInfo {
    /// Stable id ("tok-…"), for removal.
    pub id: String,
    /// Enrollment or API.
    pub kind: TokenKind,
    /// When it was made.
    #[serde(serialize_with = "ser_time")]
    pub created_at: SystemTime,
    /// Enrollment tokens: when it stops working.
    #[serde(serialize_with = "ser_opt_time")]
    pub expires_at: Option<SystemTime>,
    /// Enrollment tokens: uses granted.
    pub uses_total: Option<u32>,
    /// Enrollment tokens: uses left.
    pub uses_left: Option<u32>,
    /// API tokens: the name.
    pub name: Option<String>,
    /// API tokens: the role.
    pub role: Option<Role>,
}

fn ser_time<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_seconds(*t))
}

fn ser_opt_time<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => ser_time(t, s),
        None => s.serialize_none(),
    }
}

/// Why a token operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token file could not be read or written.
    #[error(transparent)]
    File(#[from] JsonFileError),
    /// The data directory could not be created.
    #[error("cannot create {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// No token has this secret.
    #[error("unknown token")]
    Unknown,
    /// The enrollment token's lifetime is over.
    #[error("token expired")]
    Expired,
    /// The enrollment token has no uses left.
    #[error("token used up")]
    UsedUp,
    /// Uses must be 1 ..= [`MAX_USES`].
    #[error("uses must be between 1 and {MAX_USES}, not {0}")]
    InvalidUses(u32),
    /// The TTL must be positive and at most [`MAX_ENROLL_TTL`].
    #[error("ttl must be positive and at most 365 days, not {0:?}")]
    InvalidTtl(Duration),
    /// API token names are 1–64 characters of `A-Za-z0-9._@-`.
    #[error("invalid token name {0:?} (1-64 characters of A-Z a-z 0-9 . _ @ -)")]
    InvalidName(String),
    /// The file holds [`MAX_TOKENS`] live tokens.
    #[error("the token file already holds {MAX_TOKENS} live tokens; remove some first")]
    TooMany,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct TokenFile {
    #[serde(default)]
    version: u32,
    #[serde(default)]
    tokens: Vec<Entry>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
enum Entry {
    Enrollment {
        id: String,
        sha256: String,
        created_at: u64,
        expires_at: u64,
        uses_total: u32,
        uses_left: u32,
    },
    Api {
        id: String,
        sha256: String,
        created_at: u64,
        name: String,
        role: Role,
    },
}

impl Entry {
    fn id(&self) -> &str {
        match self {
            Entry::Enrollment { id, .. } | Entry::Api { id, .. } => id,
        }
    }

    /// An enrollment token that can never succeed again.
    fn is_dead(&self, now: u64) -> bool {
        match self {
            Entry::Enrollment {
                expires_at,
                uses_left,
                ..
            } => *uses_left == 0 || now >= *expires_at,
            Entry::Api { .. } => false,
        }
    }

    fn info(&self) -> TokenInfo {
        match self {
            Entry::Enrollment {
                id,
                created_at,
                expires_at,
                uses_total,
                uses_left,
                ..
            } => TokenInfo {
                id: id.clone(),
                kind: TokenKind::Enrollment,
                created_at: from_unix(*created_at),
                expires_at: Some(from_unix(*expires_at)),
                uses_total: Some(*uses_total),
                uses_left: Some(*uses_left),
                name: None,
                role: None,
            },
            Entry::Api {
                id,
                created_at,
                name,
                role,
                ..
            } => TokenInfo {
                id: id.clone(),
                kind: TokenKind::Api,
                created_at: from_unix(*created_at),
                expires_at: None,
                uses_total: None,
                uses_left: None,
                name: Some(name.clone()),
                role: Some(*role),
            },
        }
    }
}

#[derive(Default)]
struct ApiCache {
    /// `None` until loaded once; then the stamp of the version loaded (inner `None`: no file).
    loaded: Option<Option<Stamp>>,
    by_hash: HashMap<String, ApiPrincipal>,
}

/// The token file of one data directory. Cheap to share (`Arc`) between request handlers.
pub struct Tokens {
    file: JsonFile,
    api: Mutex<ApiCache>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("path", &self.file.path())
            .finish_non_exhaustive()
    }
}

// === impl Tokens ===

impl Tokens {
    /// Opens (creating the directory if needed) and checks `<data_dir>/tokens.json`; a
    /// missing file is an empty token set.
    pub fn open(data_dir: &Path) -> Result<Tokens, TokenError> {
        std::fs::create_dir_all(data_dir).map_err(|source| TokenError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let tokens = Tokens {
            file: JsonFile::new(data_dir.join(FILE_NAME), MAX_FILE_BYTES),
            api: Mutex::new(ApiCache::default()),
        };
        tokens.reload_api_cache_if_changed()?;
        Ok(tokens)
    }

    /// Makes an enrollment token good for `uses` enrollments until `now + ttl`. Returns the
    /// secret ("cmdb-enroll-<32 hex>"), which is not stored and cannot be shown again.
    pub fn create_enrollment(
        &self,
        uses: u32,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<String, TokenError> {
        if uses == 0 || uses > MAX_USES {
            return Err(TokenError::InvalidUses(uses));
        }
        if ttl.is_zero() || ttl > MAX_ENROLL_TTL {
            return Err(TokenError::InvalidTtl(ttl));
        }
        let secret = format!("{ENROLL_PREFIX}{}", random_hex::<16>());
        let now_s = unix(now);
        let entry = Entry::Enrollment {
            id: new_id(),
            sha256: sha256_hex(secret.as_bytes()),
            created_at: now_s,
            expires_at: now_s.saturating_add(ttl.as_secs().max(1)),
            uses_total: uses,
            uses_left: uses,
        };
        self.insert(entry, now_s)?;
        Ok(secret)
    }

    /// Consumes one use of an enrollment token. Exactly one concurrent caller gets the last
    /// use; the others see [`TokenError::UsedUp`].
    pub fn consume_enrollment(&self, secret: &str, now: SystemTime) -> Result<(), TokenError> {
        if !well_formed(secret, ENROLL_PREFIX) {
            return Err(TokenError::Unknown);
        }
        let hash = sha256_hex(secret.as_bytes());
        let now_s = unix(now);
        self.file.update(|doc: &mut TokenFile| {
            let entry = doc
                .tokens
                .iter_mut()
                .find(|e| matches!(e, Entry::Enrollment { sha256, .. } if *sha256 == hash));
            match entry {
                Some(Entry::Enrollment {
                    expires_at,
                    uses_left,
                    ..
                }) => {
                    if now_s >= *expires_at {
                        Err(TokenError::Expired)
                    } else if *uses_left == 0 {
                        Err(TokenError::UsedUp)
                    } else {
                        *uses_left -= 1;
                        Ok(((), true))
                    }
                }
                _ => Err(TokenError::Unknown),
            }
        })
    }

    /// Makes an API token for `name` with `role`. Returns the secret ("cmdb-api-<32 hex>"),
    /// which is not stored and cannot be shown again.
    pub fn create_api_token(&self, name: &str, role: Role) -> Result<String, TokenError> {
        if !valid_name(name) {
            return Err(TokenError::InvalidName(name.to_string()));
        }
        let secret = format!("{API_PREFIX}{}", random_hex::<16>());
        let now_s = unix(SystemTime::now());
        let entry = Entry::Api {
            id: new_id(),
            sha256: sha256_hex(secret.as_bytes()),
            created_at: now_s,
            name: name.to_string(),
            role,
        };
        self.insert(entry, now_s)?;
        Ok(secret)
    }

    /// The principal of an API secret, `None` when no API token has it. Served from memory;
    /// the file is re-read only when it changed.
    pub fn verify_api_token(&self, secret: &str) -> Result<Option<ApiPrincipal>, TokenError> {
        if !well_formed(secret, API_PREFIX) {
            return Ok(None);
        }
        self.reload_api_cache_if_changed()?;
        let hash = sha256_hex(secret.as_bytes());
        let cache = self.api.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(cache.by_hash.get(&hash).cloned())
    }

    /// Every token, without secrets, in creation order.
    pub fn list(&self) -> Result<Vec<TokenInfo>, TokenError> {
        let (doc, _) = self.file.read::<TokenFile>()?;
        Ok(doc.tokens.iter().map(Entry::info).collect())
    }

    /// Removes the token with this id; `false` when there is none.
    pub fn remove(&self, id: &str) -> Result<bool, TokenError> {
        self.file.update(|doc: &mut TokenFile| {
            let before = doc.tokens.len();
            doc.tokens.retain(|e| e.id() != id);
            let removed = doc.tokens.len() != before;
            Ok::<_, TokenError>((removed, removed))
        })
    }

    fn insert(&self, entry: Entry, now_s: u64) -> Result<(), TokenError> {
        self.file.update(|doc: &mut TokenFile| {
            if doc.tokens.len() >= MAX_TOKENS {
                // Room is made only from tokens that can never work again.
                doc.tokens.retain(|e| !e.is_dead(now_s));
            }
            if doc.tokens.len() >= MAX_TOKENS {
                return Err(TokenError::TooMany);
            }
            doc.version = FORMAT_VERSION;
            doc.tokens.push(entry);
            Ok(((), true))
        })
    }

    fn reload_api_cache_if_changed(&self) -> Result<(), TokenError> {
        let stamp = self.file.stamp()?;
        let mut cache = self.api.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.loaded == Some(stamp) {
            return Ok(());
        }
        let (doc, read_stamp) = self.file.read::<TokenFile>()?;
        cache.by_hash = doc
            .tokens
            .into_iter()
            .filter_map(|e| match e {
                Entry::Api {
                    sha256, name, role, ..
                } => Some((sha256, ApiPrincipal { name, role })),
                Entry::Enrollment { .. } => None,
            })
            .collect();
        // The stamp of the version actually read, so a change between stat and read is
        // picked up at the next call.
        cache.loaded = Some(read_stamp);
        Ok(())
    }
}

fn well_formed(secret: &str, prefix: &str) -> bool {
    secret.len() <= MAX_SECRET_LEN && secret.starts_with(prefix)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
}

fn random_hex<const N: usize>() -> String {
    // rand's thread RNG is a CSPRNG seeded from the OS.
    hex::encode(rand::random::<[u8; N]>())
}

fn new_id() -> String {
    format!("tok-{}", random_hex::<6>())
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn from_unix(s: u64) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_secs(s))
        .unwrap_or(UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn enrollment_token_lifecycle() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Tokens::open(dir.path()).unwrap();
        let secret = tokens.create_enrollment(2, DAY, t(1_000)).unwrap();
        assert!(secret.starts_with(ENROLL_PREFIX));
        assert_eq!(secret.len(), ENROLL_PREFIX.len() + 32);
        tokens.consume_enrollment(&secret, t(1_001)).unwrap();
        tokens.consume_enrollment(&secret, t(1_002)).unwrap();
        assert!(matches!(
            tokens.consume_enrollment(&secret, t(1_003)),
            Err(TokenError::UsedUp)
        ));
        let other = tokens.create_enrollment(5, DAY, t(1_000)).unwrap();
        assert!(matches!(
            tokens.consume_enrollment(&other, t(1_000 + 86_400)),
            Err(TokenError::Expired)
        ));
        assert!(matches!(
            tokens.consume_enrollment("cmdb-enroll-00", t(1_000)),
            Err(TokenError::Unknown)
        ));
        // An API secret is not an enrollment secret.
        let api = tokens.create_api_token("ops", Role::Admin).unwrap();
        assert!(matches!(
            tokens.consume_enrollment(&api, t(1_000)),
            Err(TokenError::Unknown)
        ));
    }

    #[test]
    fn secrets_are_never_stored() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Tokens::open(dir.path()).unwrap();
        let e = tokens.create_enrollment(1, DAY, SystemTime::now()).unwrap();
        let a = tokens.create_api_token("ci-bot", Role::Viewer).unwrap();
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert!(!text.contains(&e) && !text.contains(&a));
        assert!(!text.contains(&e[ENROLL_PREFIX.len()..]));
        assert!(text.contains(&sha256_hex(a.as_bytes())));
        let list = tokens.list().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].kind, TokenKind::Enrollment);
        assert_eq!(list[1].role, Some(Role::Viewer));
        let json = serde_json::to_string(&list).unwrap();
        assert!(!json.contains(&a));
    }

    #[test]
    fn api_tokens_verify_and_follow_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let server = Tokens::open(dir.path()).unwrap();
        assert_eq!(server.verify_api_token("cmdb-api-nope").unwrap(), None);
        // Another process (the CLI) creates a token: the server sees it without a restart.
        let cli = Tokens::open(dir.path()).unwrap();
        let secret = cli.create_api_token("alice", Role::ChangeManager).unwrap();
        assert_eq!(
            server.verify_api_token(&secret).unwrap(),
            Some(ApiPrincipal {
                name: "alice".into(),
                role: Role::ChangeManager
            })
        );
        assert_eq!(server.verify_api_token("Bearer x").unwrap(), None);
        let id = cli.list().unwrap()[0].id.clone();
        assert!(cli.remove(&id).unwrap());
        assert!(!cli.remove(&id).unwrap());
        assert_eq!(server.verify_api_token(&secret).unwrap(), None);
    }

    #[test]
    fn bad_arguments_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Tokens::open(dir.path()).unwrap();
        let now = SystemTime::now();
        assert!(matches!(
            tokens.create_enrollment(0, DAY, now),
            Err(TokenError::InvalidUses(0))
        ));
        assert!(matches!(
            tokens.create_enrollment(1, Duration::ZERO, now),
            Err(TokenError::InvalidTtl(_))
        ));
        assert!(matches!(
            tokens.create_enrollment(1, MAX_ENROLL_TTL + DAY, now),
            Err(TokenError::InvalidTtl(_))
        ));
        for name in ["", "has space", &"x".repeat(65), "émile"] {
            assert!(matches!(
                tokens.create_api_token(name, Role::Admin),
                Err(TokenError::InvalidName(_))
            ));
        }
    }

    #[test]
    fn corrupt_file_is_an_error_not_an_empty_set() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Tokens::open(dir.path()).unwrap();
        let secret = tokens.create_api_token("ops", Role::Admin).unwrap();
        std::fs::write(dir.path().join(FILE_NAME), b"{\"tokens\": [").unwrap();
        assert!(tokens.verify_api_token(&secret).is_err());
        assert!(tokens.create_api_token("x", Role::Admin).is_err());
        assert!(Tokens::open(dir.path()).is_err());
    }

    #[test]
    fn concurrent_consumers_get_exactly_the_granted_uses() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Tokens::open(dir.path()).unwrap();
        let secret = tokens.create_enrollment(7, DAY, SystemTime::now()).unwrap();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let dir = dir.path().to_path_buf();
                let secret = secret.clone();
                std::thread::spawn(move || {
                    // Separate instances, as separate processes would have.
                    let mine = Tokens::open(&dir).unwrap();
                    (0..5)
                        .filter(|_| mine.consume_enrollment(&secret, SystemTime::now()).is_ok())
                        .count()
                })
            })
            .collect();
        let granted: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(granted, 7);
    }

    #[test]
    fn roles_round_trip() {
        for r in Role::ALL {
            assert_eq!(r.to_string().parse::<Role>().unwrap(), r);
            assert_eq!(
                serde_json::to_string(&r).unwrap(),
                format!("\"{}\"", r.as_str())
            );
        }
        assert!("root".parse::<Role>().is_err());
    }

    #[derive(Clone, Debug)]
    enum Op {
        Create { uses: u32, ttl: u64 },
        Consume { which: usize, at: u64 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u32..4, 1u64..50).prop_map(|(uses, ttl)| Op::Create { uses, ttl }),
            (0usize..6, 0u64..80).prop_map(|(which, at)| Op::Consume { which, at }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Model check: the file-backed store behaves like a map of (expiry, uses left).
        #[test]
        fn enrollment_tokens_match_a_simple_model(ops in proptest::collection::vec(op(), 1..25)) {
            let dir = tempfile::tempdir().unwrap();
            let tokens = Tokens::open(dir.path()).unwrap();
            // (secret, expires_at, uses_left)
            let mut model: Vec<(String, u64, u32)> = Vec::new();
            for op in ops {
                match op {
                    Op::Create { uses, ttl } => {
                        let s = tokens.create_enrollment(uses, Duration::from_secs(ttl), t(10)).unwrap();
                        model.push((s, 10 + ttl, uses));
                    }
                    Op::Consume { which, at } => {
                        let got = match model.get_mut(which) {
                            None => tokens.consume_enrollment("cmdb-enroll-unknown", t(at)),
                            Some((s, _, _)) => tokens.consume_enrollment(s, t(at)),
                        };
                        match model.get_mut(which) {
                            None => prop_assert!(matches!(got, Err(TokenError::Unknown))),
                            Some((_, exp, _)) if at >= *exp => prop_assert!(matches!(got, Err(TokenError::Expired))),
                            Some((_, _, 0)) => prop_assert!(matches!(got, Err(TokenError::UsedUp))),
                            Some((_, _, left)) => { prop_assert!(got.is_ok()); *left -= 1; }
                        }
                    }
                }
            }
            let listed: Vec<u32> = tokens.list().unwrap().iter().filter_map(|i| i.uses_left).collect();
            let expected: Vec<u32> = model.iter().map(|m| m.2).collect();
            prop_assert_eq!(listed, expected);
        }

        #[test]
        fn arbitrary_secrets_never_panic(s in ".{0,300}") {
            let dir = tempfile::tempdir().unwrap();
            let tokens = Tokens::open(dir.path()).unwrap();
            prop_assert!(tokens.consume_enrollment(&s, SystemTime::now()).is_err());
            prop_assert_eq!(tokens.verify_api_token(&s).unwrap(), None);
        }
    }
}
