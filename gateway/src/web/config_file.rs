//! `--web.config.file`: the exporter-toolkit `web-config.yml` that pushgateway users
//! already have: TLS (`tls_server_config`), basic authentication (`basic_auth_users`,
//! bcrypt hashes) and extra response headers (`http_server_config.headers`).
//!
//! [`load`] turns the file into [`WebSettings`], checking everything up front (files
//! readable, keys matching, hashes well-formed), so a bad file is a clear error at
//! start and is never half-applied on reload. Relative paths are read from the file's
//! directory, as exporter-toolkit does. TLS is rustls: TLS 1.2 and 1.3 only (a
//! `min_version` of TLS10/TLS11 still gets 1.2 at least, with a warning), and
//! `cipher_suites`/`curve_preferences` pick from rustls's suites and groups by their
//! Go/IANA names. `client_allowed_sans` admits a verified client certificate only if one
//! of its SANs (DNS name, e-mail address, IP address, URI) equals a listed value, as
//! exporter-toolkit compares them; unlike Go it is refused where it could not restrict
//! anything (no CA verifies the certificate, so any client could claim any SAN) and
//! makes a certificate mandatory (Go fails such connections only by accident).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use axum::http::{HeaderName, HeaderValue};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use serde::Deserialize;
use tokio_rustls::TlsAcceptor;

/// Headers exporter-toolkit lets a web config set, and nothing else.
const ALLOWED_HEADERS: [&str; 5] = [
    "Strict-Transport-Security",
    "X-Content-Type-Options",
    "X-Frame-Options",
    "X-XSS-Protection",
    "Content-Security-Policy",
];

/// Why a web config file cannot be used. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    /// The file (or a file it names) could not be read.
    #[error("web config {file}: cannot read {path}: {source}")]
    Read {
        /// The web config file.
        file: PathBuf,
        /// The file that could not be read.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The YAML does not parse or has unknown keys.
    #[error("web config {file}: {reason}")]
    Syntax {
        /// The web config file.
        file: PathBuf,
        /// What the YAML parser said.
        reason: String,
    },
    /// A setting has a value that cannot be used.
    #[error("web config {file}: {reason}")]
    Invalid {
        /// The web config file.
        file: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebConfig {
    #[serde(default)]
    tls_server_config: Option<RawTls>,
    #[serde(default)]
    http_server_config: Option<RawHttp>,
    #[serde(default)]
    basic_auth_users: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    #[serde(default)]
    cert_file: Option<String>,
    #[serde(default)]
    key_file: Option<String>,
    #[serde(default)]
    cert: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    client_auth_type: Option<String>,
    #[serde(default)]
    client_ca_file: Option<String>,
    #[serde(default)]
    client_ca: Option<String>,
    #[serde(default)]
    client_allowed_sans: Option<Vec<String>>,
    #[serde(default)]
    min_version: Option<String>,
    #[serde(default)]
    max_version: Option<String>,
    #[serde(default)]
    cipher_suites: Option<Vec<String>>,
    #[serde(default)]
    curve_preferences: Option<Vec<String>>,
    #[serde(default)]
    prefer_server_cipher_suites: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    /// Accepted for compatibility: dropgate speaks HTTP/1.1 only.
    #[serde(default)]
    http2: Option<bool>,
    #[serde(default)]
    headers: Option<BTreeMap<String, String>>,
}

/// What a web config file says, ready to use. Without a file: no TLS, no users, no
/// extra headers ([`WebSettings::default`]).
#[derive(Clone, Default)]
pub struct WebSettings {
    /// TLS for every connection, when configured.
    pub tls: Option<TlsAcceptor>,
    /// User name → bcrypt hash; empty: no authentication.
    pub users: BTreeMap<String, String>,
    /// Headers added to every response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl std::fmt::Debug for WebSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSettings")
            .field("tls", &self.tls.is_some())
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .field("headers", &self.headers)
            .finish()
    }
}

/// What the files a web config depends on look like now; a change means "reload".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint(Vec<(PathBuf, Option<(SystemTime, u64)>)>);

/// Loads and checks `file`; also returns the fingerprint of every file it read.
pub fn load(file: &Path) -> Result<(WebSettings, Fingerprint), WebConfigError> {
    let mut stamps = Vec::new();
    let text = stamped_read(file, &mut stamps).map_err(|source| WebConfigError::Read {
        file: file.to_path_buf(),
        path: file.to_path_buf(),
        source,
    })?;
    let settings = settings_from(&text, file, &mut stamps)?;
    Ok((settings, Fingerprint(stamps)))
}

/// Parses and checks `text` as the web config `file` (files it names are read
/// relative to `file`'s folder); what [`load`] does after reading the file. The fuzz
/// target of the web config calls it directly.
pub fn parse(text: &[u8], file: &Path) -> Result<WebSettings, WebConfigError> {
    settings_from(text, file, &mut Vec::new())
}

fn settings_from(
    text: &[u8],
    file: &Path,
    stamps: &mut Vec<(PathBuf, Stamp)>,
) -> Result<WebSettings, WebConfigError> {
    let raw: RawWebConfig = if text.trim_ascii().is_empty() {
        RawWebConfig::default()
    } else {
        serde_saphyr::from_slice(text).map_err(|error| WebConfigError::Syntax {
            file: file.to_path_buf(),
            // One line for logs, without the file's lines (they may hold hashes).
            reason: error.render_with_options(serde_saphyr::render_options! {
                formatter: &serde_saphyr::UserMessageFormatter,
                snippets: serde_saphyr::SnippetMode::Off,
            }),
        })?
    };
    let dir = file.parent().unwrap_or(Path::new("."));
    let invalid = |reason: String| WebConfigError::Invalid {
        file: file.to_path_buf(),
        reason,
    };

    let users = raw.basic_auth_users.unwrap_or_default();
    for (user, hash) in &users {
        check_bcrypt_hash(user, hash).map_err(invalid)?;
    }

    let mut headers = Vec::new();
    let http = raw.http_server_config.unwrap_or_default();
    if http.http2 == Some(true) {
        tracing::debug!("http_server_config.http2: dropgate serves HTTP/1.1 only");
    }
    for (name, value) in &http.headers.unwrap_or_default() {
        headers.push(check_header(name, value).map_err(invalid)?);
    }

    let tls = match raw.tls_server_config {
        Some(tls) if tls_configured(&tls) => {
            let config = tls_config(&tls, dir, stamps).map_err(|error| match error {
                TlsSetupError::Read { path, source } => WebConfigError::Read {
                    file: file.to_path_buf(),
                    path,
                    source,
                },
                TlsSetupError::Invalid(reason) => invalid(reason),
            })?;
            Some(TlsAcceptor::from(Arc::new(config)))
        }
        _ => None,
    };
    Ok(WebSettings {
        tls,
        users,
        headers,
    })
}

/// bcrypt costs above this are logged at load: each step doubles what a check of a
/// wrong password (or of a right one not yet cached) costs.
const BCRYPT_COST_WARN: u32 = 12;
/// bcrypt costs above this are refused: one check would take seconds of a core, so a
/// few wrong passwords a second would starve the gateway (31 takes days).
const BCRYPT_COST_MAX: u32 = 14;
/// The costs bcrypt itself defines; outside them no password ever matches.
const BCRYPT_COSTS: std::ops::RangeInclusive<u32> = 4..=31;
/// How to make a good hash, for every refusal.
const MAKE_A_HASH: &str = "create one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`";

/// A user's bcrypt hash is well formed and its cost one the gateway can afford.
fn check_bcrypt_hash(user: &str, hash: &str) -> Result<(), String> {
    let Ok(parts) = hash.parse::<bcrypt::HashParts>() else {
        return Err(format!(
            "basic_auth_users: the hash of {user:?} is not a bcrypt hash; {MAKE_A_HASH}"
        ));
    };
    let cost = parts.get_cost();
    if !BCRYPT_COSTS.contains(&cost) {
        return Err(format!(
            "basic_auth_users: the bcrypt cost {cost} of user {user:?} is outside bcrypt's valid {}-{}, so no password could ever match; {MAKE_A_HASH}",
            BCRYPT_COSTS.start(),
            BCRYPT_COSTS.end()
        ));
    }
    if cost > BCRYPT_COST_MAX {
        return Err(format!(
            "basic_auth_users: the bcrypt cost {cost} of user {user:?} is above {BCRYPT_COST_MAX}: every check of a wrong password would take seconds to hours of CPU, so a few requests could stall the gateway; use a cost of 10 to 12, {MAKE_A_HASH}"
        ));
    }
    if cost > BCRYPT_COST_WARN {
        tracing::warn!(
            user,
            cost,
            "basic_auth_users: a bcrypt cost above {BCRYPT_COST_WARN} makes every check of a wrong password slow; 10 to 12 is usual"
        );
    }
    Ok(())
}

type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Reads `path`, noting how it looked *before* the read: a change during the read
/// then shows as a change at the next look.
fn stamped_read(path: &Path, stamps: &mut Vec<(PathBuf, Stamp)>) -> io::Result<Vec<u8>> {
    use std::io::Read as _;

    stamps.push((path.to_path_buf(), stamp(path)));
    // A config or PEM file is a few KiB; a path to a device or a huge file must not
    // take the gateway's memory (`/dev/zero` never ends).
    let mut text = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut text)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "larger than {} MiB; a web config, certificate or key is a few KiB",
                MAX_FILE_BYTES >> 20
            ),
        ));
    }
    Ok(text)
}

/// The most read of the web config or any file it names.
const MAX_FILE_BYTES: u64 = 4 << 20;

impl Fingerprint {
    /// The same files, looked at again.
    #[must_use]
    pub fn refreshed(&self) -> Self {
        Self(
            self.0
                .iter()
                .map(|(path, _)| (path.clone(), stamp(path)))
                .collect(),
        )
    }
}

/// Re-reads `file` whenever it or a file it names changes (looking every `every`),
/// and publishes the new settings on `sender`; an invalid file is logged and the
/// previous settings stay. Runs until `sender` has no receivers left.
pub async fn watch(
    file: PathBuf,
    mut seen: Fingerprint,
    sender: tokio::sync::watch::Sender<Arc<WebSettings>>,
    every: std::time::Duration,
) {
    loop {
        tokio::time::sleep(every).await;
        if sender.is_closed() {
            return;
        }
        let now = seen.refreshed();
        if now == seen {
            continue;
        }
        let path = file.clone();
        let loaded = tokio::task::spawn_blocking(move || load(&path)).await;
        match loaded {
            Ok(Ok((settings, fingerprint))) => {
                tracing::info!(file = %file.display(), ?settings, "web config reloaded");
                sender.send_replace(Arc::new(settings));
                seen = fingerprint;
            }
            Ok(Err(error)) => {
                tracing::error!(%error, "web config not reloaded; the previous one stays in force");
                seen = now;
            }
            Err(join) => tracing::error!(%join, "web config reload failed"),
        }
    }
}

fn check_header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let Some(canonical) = ALLOWED_HEADERS
        .iter()
        .find(|allowed| allowed.eq_ignore_ascii_case(name))
    else {
        return Err(format!(
            "http_server_config.headers: {name:?} cannot be configured; allowed: {}",
            ALLOWED_HEADERS.join(", ")
        ));
    };
    let lower = value.to_ascii_lowercase();
    let ok = match *canonical {
        "X-Content-Type-Options" => lower == "nosniff",
        "X-Frame-Options" => lower == "deny" || lower == "sameorigin",
        _ => true,
    };
    if !ok {
        return Err(format!(
            "http_server_config.headers: invalid value {value:?} for {canonical}"
        ));
    }
    let header_value = HeaderValue::from_str(value)
        .map_err(|_| format!("http_server_config.headers: {canonical} has an invalid value"))?;
    let header_name = HeaderName::from_bytes(canonical.to_ascii_lowercase().as_bytes())
        .map_err(|_| format!("http_server_config.headers: {canonical} is not a header name"))?;
    Ok((header_name, header_value))
}

/// exporter-toolkit's rule: TLS is off when none of the certificate and client
/// settings is given.
fn tls_configured(tls: &RawTls) -> bool {
    let given = |value: &Option<String>| value.as_deref().is_some_and(|v| !v.is_empty());
    given(&tls.cert_file)
        || given(&tls.key_file)
        || given(&tls.cert)
        || given(&tls.key)
        || given(&tls.client_ca_file)
        || given(&tls.client_ca)
        || given(&tls.client_auth_type)
}

enum TlsSetupError {
    Read { path: PathBuf, source: io::Error },
    Invalid(String),
}

impl From<String> for TlsSetupError {
    fn from(reason: String) -> Self {
        Self::Invalid(reason)
    }
}

/// exporter-toolkit's `client_auth_type` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientAuth {
    NoClientCert,
    RequestClientCert,
    RequireAnyClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

fn tls_config(
    tls: &RawTls,
    dir: &Path,
    stamps: &mut Vec<(PathBuf, Stamp)>,
) -> Result<ServerConfig, TlsSetupError> {
    let allowed_sans = tls.client_allowed_sans.clone().unwrap_or_default();
    if tls.prefer_server_cipher_suites.is_some() {
        tracing::debug!("tls_server_config.prefer_server_cipher_suites is ignored, as in Go");
    }
    let client_auth = match tls.client_auth_type.as_deref().unwrap_or("") {
        "" | "NoClientCert" => ClientAuth::NoClientCert,
        "RequestClientCert" => ClientAuth::RequestClientCert,
        "RequireAnyClientCert" => ClientAuth::RequireAnyClientCert,
        "VerifyClientCertIfGiven" => ClientAuth::VerifyClientCertIfGiven,
        "RequireAndVerifyClientCert" => ClientAuth::RequireAndVerifyClientCert,
        other => {
            return Err(format!("tls_server_config.client_auth_type {other:?} is invalid; use NoClientCert, RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert").into());
        }
    };
    if !allowed_sans.is_empty()
        && !matches!(
            client_auth,
            ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert
        )
    {
        return Err(format!("tls_server_config.client_allowed_sans needs a verified client certificate, but client_auth_type is {client_auth:?}; set client_auth_type: RequireAndVerifyClientCert with client_ca_file, or remove client_allowed_sans").into());
    }
    let mut pem = |inline: Option<&String>, file: Option<&String>, what: &str| {
        pem_source(inline, file, dir, what, stamps)
    };
    let cert_pem = pem(tls.cert.as_ref(), tls.cert_file.as_ref(), "cert_file")?
        .ok_or_else(|| "tls_server_config: missing cert_file".to_owned())?;
    let key_pem = pem(tls.key.as_ref(), tls.key_file.as_ref(), "key_file")?
        .ok_or_else(|| "tls_server_config: missing key_file".to_owned())?;
    let ca_pem = pem(
        tls.client_ca.as_ref(),
        tls.client_ca_file.as_ref(),
        "client_ca_file",
    )?;

    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|error| format!("tls_server_config.cert_file: not a PEM certificate: {error}"))?;
    if certs.is_empty() {
        return Err("tls_server_config.cert_file: no certificate in the file"
            .to_owned()
            .into());
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|error| format!("tls_server_config.key_file: not a PEM private key: {error}"))?;

    let provider = Arc::new(provider(tls)?);
    let versions = versions(tls)?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&versions)
        .map_err(|error| format!("tls_server_config: {error}"))?;
    let builder = match (client_auth, ca_pem) {
        (ClientAuth::NoClientCert, Some(_)) => {
            return Err("tls_server_config: client_ca_file is set but client_auth_type is NoClientCert; set client_auth_type (e.g. RequireAndVerifyClientCert) or remove client_ca_file".to_owned().into());
        }
        (ClientAuth::NoClientCert, None) => builder.with_no_client_auth(),
        (ClientAuth::RequestClientCert | ClientAuth::RequireAnyClientCert, _) => builder
            .with_client_cert_verifier(Arc::new(AnyClientCert {
                mandatory: client_auth == ClientAuth::RequireAnyClientCert,
                provider: Arc::clone(&provider),
            })),
        (_, None) => {
            return Err(format!("tls_server_config: client_auth_type {client_auth:?} needs client_ca_file to verify client certificates").into());
        }
        (_, Some(ca_pem)) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&ca_pem) {
                let cert = cert.map_err(|error| {
                    format!("tls_server_config.client_ca_file: not a PEM certificate: {error}")
                })?;
                roots.add(cert).map_err(|error| {
                    format!("tls_server_config.client_ca_file: unusable CA certificate: {error}")
                })?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
            let verifier = if client_auth == ClientAuth::VerifyClientCertIfGiven {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|error| format!("tls_server_config.client_ca_file: {error}"))?;
            if allowed_sans.is_empty() {
                builder.with_client_cert_verifier(verifier)
            } else {
                builder.with_client_cert_verifier(Arc::new(AllowedSans {
                    verified_by: verifier,
                    allowed: allowed_sans,
                }))
            }
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|error| {
        format!("tls_server_config: the key does not fit the certificate or is unusable: {error}")
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The PEM bytes of an inline value or a file (relative to `dir`), if either is set.
fn pem_source(
    inline: Option<&String>,
    file: Option<&String>,
    dir: &Path,
    what: &str,
    stamps: &mut Vec<(PathBuf, Stamp)>,
) -> Result<Option<Vec<u8>>, TlsSetupError> {
    let inline = inline.map(String::as_str).filter(|s| !s.is_empty());
    let file = file.map(String::as_str).filter(|s| !s.is_empty());
    match (inline, file) {
        (Some(_), Some(_)) => Err(format!(
            "tls_server_config: {what} and its inline form are both set; keep one"
        )
        .into()),
        (Some(inline), None) => Ok(Some(inline.as_bytes().to_vec())),
        (None, Some(file)) => {
            let path = dir.join(file);
            let bytes = stamped_read(&path, stamps)
                .map_err(|source| TlsSetupError::Read { path, source })?;
            Ok(Some(bytes))
        }
        (None, None) => Ok(None),
    }
}

fn versions(tls: &RawTls) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, TlsSetupError> {
    let rank = |name: &str, field: &str| -> Result<u8, TlsSetupError> {
        match name {
            "TLS10" | "TLS11" => {
                tracing::warn!(
                    "tls_server_config.{field} {name}: dropgate speaks TLS 1.2 and 1.3 only"
                );
                Ok(12)
            }
            "TLS12" => Ok(12),
            "TLS13" => Ok(13),
            other => Err(format!(
                "tls_server_config.{field} {other:?} is invalid; use TLS12 or TLS13"
            )
            .into()),
        }
    };
    let min = tls
        .min_version
        .as_deref()
        .filter(|v| !v.is_empty())
        .map_or(Ok(12), |v| rank(v, "min_version"))?;
    let max = tls
        .max_version
        .as_deref()
        .filter(|v| !v.is_empty())
        .map_or(Ok(13), |v| rank(v, "max_version"))?;
    if min > max {
        return Err("tls_server_config: min_version is above max_version"
            .to_owned()
            .into());
    }
    let mut versions = Vec::new();
    if min <= 12 {
        versions.push(&rustls::version::TLS12);
    }
    if max >= 13 {
        versions.push(&rustls::version::TLS13);
    }
    Ok(versions)
}

/// ring's provider, narrowed to the configured TLS 1.2 cipher suites and curves (Go's
/// `cipher_suites` never applies to TLS 1.3, so neither does it here).
fn provider(tls: &RawTls) -> Result<CryptoProvider, TlsSetupError> {
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(names) = tls.cipher_suites.as_ref().filter(|names| !names.is_empty()) {
        let mut kept = Vec::new();
        for name in names {
            let found = provider.cipher_suites.iter().find(|suite| {
                suite.suite().as_str().is_some_and(|iana| {
                    iana == name || iana.strip_suffix("_SHA256") == Some(name.as_str())
                })
            });
            match found {
                Some(suite) if suite.tls13().is_none() => kept.push(*suite),
                Some(_) => {}
                None => {
                    return Err(format!("tls_server_config.cipher_suites: {name:?} is not a cipher suite dropgate offers (TLS 1.2 AEAD suites with ECDHE only)").into());
                }
            }
        }
        provider
            .cipher_suites
            .retain(|suite| suite.tls13().is_some() || kept.contains(suite));
    }
    if let Some(names) = tls
        .curve_preferences
        .as_ref()
        .filter(|names| !names.is_empty())
    {
        use rustls::crypto::ring::kx_group;
        let mut groups = Vec::new();
        for name in names {
            groups.push(match name.as_str() {
                "X25519" => kx_group::X25519,
                "CurveP256" => kx_group::SECP256R1,
                "CurveP384" => kx_group::SECP384R1,
                other => {
                    return Err(format!("tls_server_config.curve_preferences: {other:?} is not supported; use X25519, CurveP256 or CurveP384").into());
                }
            });
        }
        provider.kx_groups = groups;
    }
    Ok(provider)
}

/// `RequestClientCert` and `RequireAnyClientCert`: a certificate is asked for (or
/// required) but not verified against a CA, as in Go. The handshake signature is
/// still checked, so the client does hold the certificate's key.
#[derive(Debug)]
struct AnyClientCert {
    mandatory: bool,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for AnyClientCert {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `client_allowed_sans`: the CA's verification first, then one of the certificate's
/// subject alternative names must equal a listed value. Equality as exporter-toolkit
/// compares them: no wildcards, IP addresses in their usual text form.
#[derive(Debug)]
struct AllowedSans {
    verified_by: Arc<dyn ClientCertVerifier>,
    allowed: Vec<String>,
}

/// The subject alternative names of a DER certificate as text: DNS names, e-mail
/// addresses, IP addresses and URIs (the kinds exporter-toolkit compares).
///
/// A few lines of DER walking rather than an X.509 crate: the certificate has already
/// passed webpki's verification, only one extension is read, and `x509-parser` (with
/// `der-parser`, `asn1-rs`, `oid-registry` and `time`) added 0.4 MB to a binary held
/// below the pushgateway's size. Fuzzed with the web config target's certificates.
fn subject_alt_names(der: &[u8]) -> Result<Vec<String>, String> {
    const SEQUENCE: u8 = 0x30;
    const EXTENSIONS: u8 = 0xa3; // [3] EXPLICIT in TBSCertificate
    const OID: u8 = 0x06;
    const BOOLEAN: u8 = 0x01;
    const OCTET_STRING: u8 = 0x04;
    const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11]; // 2.5.29.17
    let bad = || "client certificate: malformed DER".to_owned();
    let (tag, certificate, _) = der_tlv(der).ok_or_else(bad)?;
    let (tbs_tag, tbs, _) = der_tlv(certificate).ok_or_else(bad)?;
    if tag != SEQUENCE || tbs_tag != SEQUENCE {
        return Err(bad());
    }
    let Some(extensions) = der_items(tbs)
        .find(|(tag, _)| *tag == EXTENSIONS)
        .map(|(_, value)| value)
    else {
        return Ok(Vec::new());
    };
    let (_, extensions, _) = der_tlv(extensions).ok_or_else(bad)?;
    for (_, extension) in der_items(extensions) {
        let mut fields = der_items(extension);
        let (Some((OID, oid)), Some(mut next)) = (fields.next(), fields.next()) else {
            continue;
        };
        if oid != SUBJECT_ALT_NAME {
            continue;
        }
        if next.0 == BOOLEAN {
            next = fields.next().ok_or_else(bad)?;
        }
        if next.0 != OCTET_STRING {
            return Err(bad());
        }
        let (_, names, _) = der_tlv(next.1).ok_or_else(bad)?;
        return Ok(der_items(names)
            .filter_map(|(tag, value)| match tag {
                // rfc822Name [1], dNSName [2], uniformResourceIdentifier [6]: IA5 text.
                0x81 | 0x82 | 0x86 => std::str::from_utf8(value).ok().map(str::to_owned),
                // iPAddress [7]: 4 or 16 bytes.
                0x87 => match value.len() {
                    4 => <[u8; 4]>::try_from(value)
                        .ok()
                        .map(|b| std::net::Ipv4Addr::from(b).to_string()),
                    16 => <[u8; 16]>::try_from(value)
                        .ok()
                        .map(|b| std::net::Ipv6Addr::from(b).to_string()),
                    _ => None,
                },
                _ => None,
            })
            .collect());
    }
    Ok(Vec::new())
}

/// One DER tag-length-value at the start of `input`: the tag, the value and what follows.
/// Definite lengths of up to four bytes; `None` where the input ends early.
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let length = rest[..count]
            .iter()
            .fold(0_usize, |acc, &b| (acc << 8) | usize::from(b));
        (length, &rest[count..])
    };
    (rest.len() >= length).then(|| (tag, &rest[..length], &rest[length..]))
}

/// The tag-length-values one after another in `input`, up to the first malformed one.
fn der_items(mut input: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (tag, value, rest) = der_tlv(input)?;
        input = rest;
        Some((tag, value))
    })
}

impl ClientCertVerifier for AllowedSans {
    // With a SAN list a certificate is required: without one there is nothing to check.
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.verified_by.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .verified_by
            .verify_client_cert(end_entity, intermediates, now)?;
        let names = subject_alt_names(end_entity).map_err(rustls::Error::General)?;
        if names.iter().any(|name| self.allowed.contains(name)) {
            Ok(verified)
        } else {
            tracing::info!(
                sans = ?names,
                "client certificate refused: none of its SANs is in client_allowed_sans"
            );
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.verified_by.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.verified_by.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.verified_by.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write test file");
        path
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("dropgate-webconfig-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        dir
    }

    /// bcrypt of "secret", cost 4 (fast for tests).
    fn hash() -> String {
        bcrypt::hash("secret", 4).expect("bcrypt works")
    }

    #[test]
    fn users_and_headers() {
        let dir = temp_dir("users");
        let file = write(
            &dir,
            "web.yml",
            &format!(
                "basic_auth_users:\n  alice: {}\nhttp_server_config:\n  headers:\n    X-Frame-Options: deny\n    Strict-Transport-Security: max-age=31536000\n",
                hash()
            ),
        );
        let (settings, _) = load(&file).expect("valid config");
        assert!(settings.tls.is_none());
        assert_eq!(settings.users.len(), 1);
        assert_eq!(settings.headers.len(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A real cost-4 hash of "secret" with its cost field replaced: the check at load
    /// reads the cost, it never runs bcrypt on these.
    fn hash_with_cost(cost: &str) -> String {
        let real = hash();
        format!("$2y${cost}${}", &real[7..])
    }

    #[test]
    fn bcrypt_costs_are_checked_at_load() {
        let dir = temp_dir("costs");
        // (name, cost field, None: accepted / Some(text the refusal must contain))
        let table: [(&str, &str, Option<&str>); 9] = [
            ("lowest valid", "04", None),
            ("usual", "10", None),
            ("high, warned", "12", None),
            ("higher, warned", "14", None),
            (
                "too slow",
                "15",
                Some("cost 15 of user \"alice\" is above 14"),
            ),
            (
                "bcrypt's maximum",
                "31",
                Some("cost 31 of user \"alice\" is above 14"),
            ),
            (
                "below bcrypt's range",
                "03",
                Some("cost 3 of user \"alice\" is outside"),
            ),
            ("zero", "00", Some("cost 0 of user \"alice\" is outside")),
            (
                "above bcrypt's range",
                "32",
                Some("cost 32 of user \"alice\" is outside"),
            ),
        ];
        for (name, cost, want) in table {
            let file = write(
                &dir,
                "web.yml",
                &format!("basic_auth_users:\n  alice: {}\n", hash_with_cost(cost)),
            );
            match (load(&file), want) {
                (Ok(_), None) => {}
                (Err(error), Some(want)) => {
                    let error = error.to_string();
                    assert!(error.contains(want), "case {name}: {error}");
                    assert!(error.contains("web.yml"), "case {name}: {error}");
                    assert!(
                        error.contains("htpasswd -nBC"),
                        "case {name}: says what to do: {error}"
                    );
                }
                (Ok(_), Some(want)) => panic!("case {name}: accepted, wanted {want:?}"),
                (Err(error), None) => panic!("case {name}: refused: {error}"),
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn invalid_files_say_what_is_wrong() {
        let dir = temp_dir("invalid");
        let table = [
            ("unknown key", "basic_auth_user:\n  a: b\n", "unknown field"),
            (
                "not a hash",
                "basic_auth_users:\n  alice: plain\n",
                "not a bcrypt hash",
            ),
            (
                "header not allowed",
                "http_server_config:\n  headers:\n    Server: x\n",
                "cannot be configured",
            ),
            (
                "bad nosniff",
                "http_server_config:\n  headers:\n    X-Content-Type-Options: sniff\n",
                "invalid value",
            ),
            (
                "missing key",
                "tls_server_config:\n  cert_file: c.pem\n",
                "missing key_file",
            ),
            (
                "cert file missing",
                "tls_server_config:\n  cert_file: none.pem\n  key_file: none.key\n",
                "none.pem",
            ),
            (
                "bad auth type",
                "tls_server_config:\n  client_auth_type: Sometimes\n",
                "client_auth_type",
            ),
            ("bad yaml", "tls_server_config: [\n", "web.yml"),
            (
                "endless certificate",
                "tls_server_config:\n  cert_file: /dev/zero\n  key_file: /dev/zero\n",
                "larger than 4 MiB",
            ),
            (
                "sans without verification",
                "tls_server_config:\n  client_allowed_sans: [a]\n  cert_file: c.pem\n",
                "client_allowed_sans needs a verified client certificate",
            ),
            (
                "sans with unverified certificates",
                "tls_server_config:\n  client_auth_type: RequireAnyClientCert\n  client_allowed_sans: [a]\n  cert_file: c.pem\n",
                "client_auth_type is RequireAnyClientCert",
            ),
        ];
        write(&dir, "c.pem", "not pem");
        for (name, text, want) in table {
            let file = write(&dir, "web.yml", text);
            let error = load(&file).expect_err(name).to_string();
            assert!(error.contains(want), "case {name}: {error}");
            assert!(
                error.contains("web.yml"),
                "case {name} names the file: {error}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_key_given_twice_is_refused() {
        // Which of two hashes for one user applies must not depend on the YAML parser.
        let dir = temp_dir("twice");
        let table = [
            (
                "user",
                format!(
                    "basic_auth_users:\n  alice: {}\n  alice: {}\n",
                    hash(),
                    hash()
                ),
            ),
            (
                "section",
                "http_server_config: {}\nhttp_server_config: {}\n".to_owned(),
            ),
        ];
        for (name, text) in table {
            let file = write(&dir, "web.yml", &text);
            let error = load(&file).expect_err(name).to_string();
            assert!(
                error.contains("web.yml") && error.contains("duplicate"),
                "case {name}: {error}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// DER tag-length-value, with a long-form length where needed.
    fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match value.len() {
            n if n < 0x80 => out.push(u8::try_from(n).unwrap()),
            n => {
                out.push(0x82);
                out.extend_from_slice(&u16::try_from(n).unwrap().to_be_bytes());
            }
        }
        out.extend_from_slice(value);
        out
    }

    /// The shape of a certificate around its SAN extension (other fields as opaque
    /// elements, one long enough for a long-form length).
    fn certificate_with_sans(names: &[(u8, &[u8])], critical: bool) -> Vec<u8> {
        let general_names: Vec<u8> = names.iter().flat_map(|(tag, v)| tlv(*tag, v)).collect();
        let mut extension = tlv(0x06, &[0x55, 0x1d, 0x11]);
        if critical {
            extension.extend(tlv(0x01, &[0xff]));
        }
        extension.extend(tlv(0x04, &tlv(0x30, &general_names)));
        let other_extension = [tlv(0x06, &[0x55, 0x1d, 0x13]), tlv(0x04, &[0x30, 0x00])].concat();
        let extensions = tlv(
            0xa3,
            &tlv(
                0x30,
                &[tlv(0x30, &other_extension), tlv(0x30, &extension)].concat(),
            ),
        );
        let tbs = [
            tlv(0xa0, &tlv(0x02, &[2])),
            tlv(0x02, &[1]),
            tlv(0x30, &[0; 200]),
            extensions,
        ]
        .concat();
        tlv(
            0x30,
            &[tlv(0x30, &tbs), tlv(0x30, &[]), tlv(0x03, &[0])].concat(),
        )
    }

    #[test]
    fn sans_are_read_from_the_der_and_malformed_der_is_an_error() {
        let names: [(u8, &[u8]); 5] = [
            (0x82, b"pusher.example"),
            (0x81, b"ops@example.org"),
            (0x86, b"spiffe://batch/job"),
            (0x87, &[10, 0, 0, 7]),
            (0xa4, b"directory name: not compared"),
        ];
        for critical in [false, true] {
            let der = certificate_with_sans(&names, critical);
            assert_eq!(
                subject_alt_names(&der).unwrap(),
                [
                    "pusher.example",
                    "ops@example.org",
                    "spiffe://batch/job",
                    "10.0.0.7"
                ]
            );
            // Every truncation is an error or fewer names, never a panic.
            for cut in 0..der.len() {
                let _ = subject_alt_names(&der[..cut]);
            }
        }
        let v6: [(u8, &[u8]); 1] = [(0x87, &[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7])];
        assert_eq!(
            subject_alt_names(&certificate_with_sans(&v6, false)).unwrap(),
            ["fd00::7"]
        );
        assert!(subject_alt_names(b"").is_err());
        assert!(subject_alt_names(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn empty_file_is_no_settings() {
        let dir = temp_dir("empty");
        let file = write(&dir, "web.yml", "");
        let (settings, _) = load(&file).expect("an empty file is valid");
        assert!(settings.tls.is_none() && settings.users.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn fingerprint_moves_with_the_file() {
        let dir = temp_dir("fingerprint");
        let file = write(&dir, "web.yml", "");
        let (_, before) = load(&file).expect("valid");
        assert_eq!(before, before.refreshed());
        write(&dir, "web.yml", "basic_auth_users: {}\n");
        assert_ne!(before, before.refreshed());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
