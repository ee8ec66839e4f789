//! `--web.config.file`: TLS and authentication for every endpoint, in the exporter-toolkit
//! format that Prometheus exporters share, plus bearer tokens (synwatch's addition):
//!
//! ```yaml
//! tls_server_config: {cert_file: /etc/synwatch/tls.crt, key_file: /etc/synwatch/tls.key}
//! basic_auth_users: {alice: "$2y$10$..."}   # bcrypt hashes, as exporter-toolkit
//! bearer_tokens: ["..."]                     # either kind of credential passes
//! ```
//!
//! Unknown keys are errors, and every error names `file:line:column`.
//!
//! Checking a password costs a bcrypt verification (tens of milliseconds at cost 10), so:
//! verified pairs are cached under a keyed hash (neither the password nor a plain hash of it is
//! kept), at most [`AUTH_CACHE_ENTRIES`] of them; at most [`CONCURRENT_BCRYPT`] verifications run
//! at once and a request beyond that is refused with 429 instead of queueing CPU work; and an
//! unknown user name still costs one verification against a dummy hash, so that response times
//! do not tell which users exist (exporter-toolkit does the same). Bearer tokens are compared as
//! SHA-256 digests in constant time, against every configured token.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use parking_lot::Mutex;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use siphasher::sip128::{Hasher128, SipHasher13};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

/// Verified (user, password) pairs remembered at most; the cache is cleared when full.
pub const AUTH_CACHE_ENTRIES: usize = 1024;

/// bcrypt verifications running at once at most.
pub const CONCURRENT_BCRYPT: usize = 2;

/// A rejected web config file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}:{line}:{column}: {message}")]
pub struct WebConfigError {
    /// The file name.
    pub origin: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebConfig {
    tls_server_config: Option<RawTls>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
    #[serde(default)]
    bearer_tokens: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: PathBuf,
    key_file: PathBuf,
}

/// What the web config file sets up: the TLS acceptor (if any) and the authenticator.
pub struct WebSecurity {
    /// Terminates TLS on every connection when set.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Checks credentials on every request when any are configured.
    pub authenticator: Option<Arc<Authenticator>>,
}

impl fmt::Debug for WebSecurity {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("WebSecurity")
            .field("tls", &self.tls.is_some())
            .field("authenticator", &self.authenticator)
            .finish()
    }
}

impl WebSecurity {
    /// No TLS, no authentication (no web config file).
    pub fn none() -> WebSecurity {
        WebSecurity { tls: None, authenticator: None }
    }

    /// Loads a web config file: parses it, checks every hash, reads the certificate and key.
    pub fn load(path: &Path) -> Result<WebSecurity, WebConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| WebConfigError {
            origin: origin.clone(),
            line: 1,
            column: 1,
            message: error.to_string(),
        })?;
        WebSecurity::parse(&text, &origin, path.parent().unwrap_or(Path::new(".")))
    }

    /// Parses web config text; relative certificate paths are taken from `base`.
    pub fn parse(text: &str, origin: &str, base: &Path) -> Result<WebSecurity, WebConfigError> {
        let at = |line: usize, column: usize, message: String| WebConfigError {
            origin: origin.to_string(),
            line,
            column,
            message,
        };
        let raw: RawWebConfig = if text.trim().is_empty() {
            RawWebConfig { tls_server_config: None, basic_auth_users: BTreeMap::new(), bearer_tokens: Vec::new() }
        } else {
            serde_saphyr::from_str(text).map_err(|error| {
                let (line, column) =
                    error.location().map_or((1, 1), |location| (location.line() as usize, location.column() as usize));
                let message = error.without_snippet().to_string();
                let message = match message.find(" at line ") {
                    Some(cut) => message[..cut].to_string(),
                    None => message,
                };
                at(line, column, message)
            })?
        };
        let position_of = |needle: &str| {
            text.lines()
                .enumerate()
                .find_map(|(number, line)| line.find(needle).map(|column| (number + 1, column + 1)))
                .unwrap_or((1, 1))
        };
        for (user, hash) in &raw.basic_auth_users {
            if hash.parse::<bcrypt::HashParts>().is_err() {
                let (line, column) = position_of(user);
                return Err(at(line, column, format!("basic_auth_users.{user}: not a bcrypt hash (expected $2y$...)")));
            }
        }
        for token in &raw.bearer_tokens {
            if token.len() < 16 {
                let (line, column) = position_of("bearer_tokens");
                return Err(at(line, column, "bearer_tokens: each token needs at least 16 characters".into()));
            }
        }
        let tls = match raw.tls_server_config {
            None => None,
            Some(files) => {
                let (line, column) = position_of("tls_server_config");
                let acceptor = tls_acceptor(&base.join(&files.cert_file), &base.join(&files.key_file))
                    .map_err(|message| at(line, column, format!("tls_server_config: {message}")))?;
                Some(acceptor)
            }
        };
        let authenticator = if raw.basic_auth_users.is_empty() && raw.bearer_tokens.is_empty() {
            None
        } else {
            Some(Arc::new(Authenticator::new(raw.basic_auth_users, &raw.bearer_tokens)))
        };
        Ok(WebSecurity { tls, authenticator })
    }
}

fn tls_acceptor(cert_file: &Path, key_file: &Path) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certificates| certificates.collect::<Result<_, _>>())
        .map_err(|error| format!("cannot read certificates from {}: {error}", cert_file.display()))?;
    if certificates.is_empty() {
        return Err(format!("no certificate in {}", cert_file.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|error| format!("cannot read a private key from {}: {error}", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .with_no_client_auth()
        .with_single_cert(certificates, key)
        .map_err(|error| format!("the certificate and key do not go together: {error}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// The verdict on a request's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthVerdict {
    /// Credentials are good.
    Allowed,
    /// Missing or wrong credentials (401), with the reason.
    Denied(&'static str),
    /// Too many password checks in progress (429).
    Busy,
}

/// Checks `Authorization` headers (see the module documentation).
pub struct Authenticator {
    users: HashMap<String, String>,
    /// A hash of a random password at the users' cost, verified against for unknown users.
    dummy_hash: String,
    token_digests: Vec<[u8; 32]>,
    cache_key: (u64, u64),
    cache: Mutex<HashMap<u128, bool>>,
    bcrypt_slots: Arc<Semaphore>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Authenticator")
            .field("users", &self.users.len())
            .field("tokens", &self.token_digests.len())
            .finish()
    }
}

impl Authenticator {
    /// An authenticator for these bcrypt-hashed users and these tokens.
    pub fn new(users: BTreeMap<String, String>, tokens: &[String]) -> Authenticator {
        let mut key = [0u8; 16];
        // Without randomness the cache key is merely predictable; the cache still only holds
        // keyed hashes of pairs that were verified by bcrypt.
        let _ = getrandom::fill(&mut key);
        let cost =
            users.values().find_map(|hash| hash.parse::<bcrypt::HashParts>().ok()).map_or(10, |parts| parts.get_cost());
        let dummy_hash = bcrypt::hash(hex_of(&key), cost).map(|hash| hash.to_string()).unwrap_or_default();
        Authenticator {
            dummy_hash,
            users: users.into_iter().collect(),
            token_digests: tokens.iter().map(|token| Sha256::digest(token.as_bytes()).into()).collect(),
            cache_key: (
                u64::from_le_bytes(key[..8].try_into().expect("8 bytes")),
                u64::from_le_bytes(key[8..].try_into().expect("8 bytes")),
            ),
            cache: Mutex::new(HashMap::new()),
            bcrypt_slots: Arc::new(Semaphore::new(CONCURRENT_BCRYPT)),
        }
    }

    /// Whether basic auth is configured (for the `WWW-Authenticate` challenge).
    pub fn has_users(&self) -> bool {
        !self.users.is_empty()
    }

    fn token_matches(&self, token: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Every token is compared, whatever matched before: the time does not depend on which.
        let mut matched = subtle::Choice::from(0);
        for known in &self.token_digests {
            matched |= known.ct_eq(&digest);
        }
        matched.into()
    }

    fn cache_entry(&self, user: &str, password: &str) -> u128 {
        let mut hasher = SipHasher13::new_with_keys(self.cache_key.0, self.cache_key.1);
        std::hash::Hasher::write(&mut hasher, user.as_bytes());
        std::hash::Hasher::write(&mut hasher, &[0xff]);
        std::hash::Hasher::write(&mut hasher, password.as_bytes());
        hasher.finish128().as_u128()
    }

    /// Checks one `Authorization` header value (`None`: the header is missing). A cache miss on
    /// basic auth runs bcrypt on tokio's blocking pool.
    pub async fn check(self: &Arc<Self>, header: Option<&[u8]>) -> AuthVerdict {
        let Some(header) = header else {
            return AuthVerdict::Denied("credentials are required");
        };
        let Ok(header) = std::str::from_utf8(header) else {
            return AuthVerdict::Denied("the Authorization header is not text");
        };
        let (scheme, value) = header.split_once(' ').unwrap_or((header, ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            return if !self.token_digests.is_empty() && self.token_matches(value.trim()) {
                AuthVerdict::Allowed
            } else {
                AuthVerdict::Denied("the bearer token is not valid")
            };
        }
        if !scheme.eq_ignore_ascii_case("basic") || self.users.is_empty() {
            return AuthVerdict::Denied("unsupported authorization scheme");
        }
        let Some((user, password)) = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|pair| pair.split_once(':').map(|(user, password)| (user.to_string(), password.to_string())))
        else {
            return AuthVerdict::Denied("the basic credentials are malformed");
        };
        let entry = self.cache_entry(&user, &password);
        if let Some(&allowed) = self.cache.lock().get(&entry) {
            return if allowed { AuthVerdict::Allowed } else { AuthVerdict::Denied("wrong user name or password") };
        }
        let Ok(slot) = Arc::clone(&self.bcrypt_slots).try_acquire_owned() else {
            return AuthVerdict::Busy;
        };
        let this = Arc::clone(self);
        let verified = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let (hash, known) = match this.users.get(&user) {
                Some(hash) => (hash.as_str(), true),
                None => (this.dummy_hash.as_str(), false),
            };
            let allowed = bcrypt::verify(&password, hash).unwrap_or(false) && known;
            let mut cache = this.cache.lock();
            if cache.len() >= AUTH_CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(entry, allowed);
            allowed
        })
        .await
        .unwrap_or(false);
        if verified { AuthVerdict::Allowed } else { AuthVerdict::Denied("wrong user name or password") }
    }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    fn basic(user: &str, password: &str) -> String {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
    }

    #[test]
    fn bad_web_configs_are_rejected_with_their_position() {
        let base = Path::new("/nonexistent");
        let cases = [
            ("tls_server_config: {cert_file: a.crt}\n", "web.yml:1:21", "key_file"),
            ("basic_auth_users:\n  alice: plain-text\n", "web.yml:2:3", "not a bcrypt hash"),
            ("bearer_tokens: [short]\n", "web.yml:1:1", "16 characters"),
            ("basic_auth_user: {}\n", "web.yml:1:1", "unknown field"),
            ("tls_server_config: {cert_file: a.crt, key_file: a.key}\n", "web.yml:1:1", "cannot read certificates"),
        ];
        for (text, position, reason) in cases {
            let error = WebSecurity::parse(text, "web.yml", base).unwrap_err().to_string();
            assert!(error.starts_with(position) && error.contains(reason), "{text:?}: {error}");
        }
    }

    #[test]
    fn basic_auth_and_bearer_tokens_are_checked() {
        let hash = bcrypt::hash("correct horse", 4).unwrap();
        let text = format!("basic_auth_users: {{alice: \"{hash}\"}}\nbearer_tokens: [\"0123456789abcdef-token\"]\n");
        let security = WebSecurity::parse(&text, "web.yml", Path::new(".")).unwrap();
        let authenticator = security.authenticator.unwrap();
        runtime().block_on(async {
            let check = |header: Option<String>| {
                let authenticator = Arc::clone(&authenticator);
                async move { authenticator.check(header.as_deref().map(str::as_bytes)).await }
            };
            assert_eq!(check(Some(basic("alice", "correct horse"))).await, AuthVerdict::Allowed);
            // Twice: the second answer comes from the cache and must agree.
            assert_eq!(check(Some(basic("alice", "correct horse"))).await, AuthVerdict::Allowed);
            assert!(matches!(check(Some(basic("alice", "wrong"))).await, AuthVerdict::Denied(_)));
            assert!(matches!(check(Some(basic("mallory", "correct horse"))).await, AuthVerdict::Denied(_)));
            assert!(matches!(check(None).await, AuthVerdict::Denied(_)));
            assert!(matches!(check(Some("Basic !!!".into())).await, AuthVerdict::Denied(_)));
            assert_eq!(check(Some("Bearer 0123456789abcdef-token".into())).await, AuthVerdict::Allowed);
            assert!(matches!(check(Some("Bearer 0123456789abcdef-tokex".into())).await, AuthVerdict::Denied(_)));
            assert!(matches!(check(Some("Digest x".into())).await, AuthVerdict::Denied(_)));
        });
    }
}
