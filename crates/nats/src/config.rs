//! Connection configuration (N1, N3, N8) with redacting `Debug`.

use core::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// A secret string: never shown by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret.
    #[must_use]
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for handing to the client only.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Credentials the connection may use. When several are set, the first in
/// this order wins (N1): inline `.creds` content, a `.creds` file, an nkey
/// seed, a token, `user:pass` embedded in the URL.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// Base64 of a `.creds` file's content.
    pub creds_base64: Option<Secret>,
    /// Path of a `.creds` file.
    pub creds_file: Option<PathBuf>,
    /// An nkey seed.
    pub nkey_seed: Option<Secret>,
    /// A token.
    pub token: Option<Secret>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Paths are not secrets, but a path can name a user; show only presence.
        f.debug_struct("Credentials")
            .field("creds_base64", &self.creds_base64.is_some())
            .field("creds_file", &self.creds_file.is_some())
            .field("nkey_seed", &self.nkey_seed.is_some())
            .field("token", &self.token.is_some())
            .finish()
    }
}

/// Which authentication the connection uses, without the secret (N1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    /// Inline `.creds` content.
    CredsInline,
    /// A `.creds` file.
    CredsFile,
    /// An nkey seed.
    NkeySeed,
    /// A token.
    Token,
    /// `user:pass` from the URL.
    UserPassword,
    /// No authentication.
    None,
}

/// Whether TLS is required beyond what the URL scheme asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TlsMode {
    /// TLS when the URL says `tls://` or the server requires it.
    #[default]
    FromUrl,
    /// Always TLS.
    Required,
}

/// TLS settings (N1), through async-nats's rustls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// When TLS is used.
    pub mode: TlsMode,
    /// A PEM file of root certificates to trust.
    pub root_ca: Option<PathBuf>,
    /// A client certificate and its private key (PEM files).
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// Timeouts and watch tuning shared by every handle of a connection (N3, N8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSettings {
    /// Bound on every server round-trip: request, consumer create, stream
    /// info, each message of a drain, consumer delete. Default 30 s.
    pub request_timeout: Duration,
    /// After how long the server reaps an ephemeral consumer the client
    /// failed to delete. Default 5 min.
    pub inactive_threshold: Duration,
    /// How often an idle watch consumer sends a heartbeat. A watch that
    /// hears nothing for three of these re-creates its consumer. Default 5 s.
    pub idle_heartbeat: Duration,
    /// How often an All-scope delta watch probes the retention floor when
    /// nothing is delivered (N8). Default 30 s.
    pub floor_probe_interval: Duration,
    /// How long a watch keeps trying to re-create a lost consumer before it
    /// ends with an error. Default 60 s.
    pub reconnect_budget: Duration,
    /// How often the client pings the server; two unanswered pings close
    /// the connection, so a server that stopped answering (paused, or
    /// behind a half-open link) is left for another after about twice this.
    /// Default 60 s (the client's own default).
    pub ping_interval: Duration,
    /// How many messages the client buffers per subscription before it
    /// drops what arrives (a slow consumer). A watch that finds a message
    /// missing re-creates its consumer from its frontier, so a smaller
    /// buffer bounds memory at the price of re-deliveries. Default 65 536
    /// (the client's own default).
    pub subscription_capacity: usize,
}

impl Default for BackendSettings {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            inactive_threshold: Duration::from_secs(300),
            idle_heartbeat: Duration::from_secs(5),
            floor_probe_interval: Duration::from_secs(30),
            reconnect_budget: Duration::from_secs(60),
            ping_interval: Duration::from_secs(60),
            subscription_capacity: 64 * 1024,
        }
    }
}

impl BackendSettings {
    /// Set the round-trip bound.
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Set the ephemeral consumers' inactivity threshold.
    #[must_use]
    pub fn inactive_threshold(mut self, threshold: Duration) -> Self {
        self.inactive_threshold = threshold;
        self
    }

    /// Set the watch heartbeat interval.
    #[must_use]
    pub fn idle_heartbeat(mut self, interval: Duration) -> Self {
        self.idle_heartbeat = interval;
        self
    }

    /// Set the floor guard's backstop probe interval.
    #[must_use]
    pub fn floor_probe_interval(mut self, interval: Duration) -> Self {
        self.floor_probe_interval = interval;
        self
    }

    /// Set how long a watch tries to re-create a lost consumer.
    #[must_use]
    pub fn reconnect_budget(mut self, budget: Duration) -> Self {
        self.reconnect_budget = budget;
        self
    }

    /// Set how often the client pings the server.
    #[must_use]
    pub fn ping_interval(mut self, every: Duration) -> Self {
        self.ping_interval = every;
        self
    }

    /// Set how many messages a subscription buffers (at least 1).
    #[must_use]
    pub fn subscription_capacity(mut self, messages: usize) -> Self {
        self.subscription_capacity = messages.max(1);
        self
    }
}

/// How to connect to NATS (N1).
///
/// `Debug` never shows a secret: credentials appear only as present or
/// absent, and `user:pass` is stripped from the URL.
///
/// ```
/// use std::time::Duration;
/// use slipstream_nats::{AuthMethod, NatsConfig, Secret};
///
/// let config = NatsConfig::new("nats://app:hunter2@127.0.0.1:4222")
///     .token(Secret::new("tok-123"))
///     .request_timeout(Duration::from_secs(5));
/// assert_eq!(config.auth_method(), AuthMethod::Token);
/// let shown = format!("{config:?}");
/// assert!(!shown.contains("hunter2") && !shown.contains("tok-123"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated. May embed `user:pass@`.
    pub url: Secret,
    /// Credentials.
    pub credentials: Credentials,
    /// TLS settings.
    pub tls: TlsConfig,
    /// Client name the server shows.
    pub client_name: Option<String>,
    /// Timeouts and watch tuning.
    pub settings: BackendSettings,
}

impl NatsConfig {
    /// A configuration for `url` with no credentials and default settings.
    #[must_use]
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: Secret::new(url),
            credentials: Credentials::default(),
            tls: TlsConfig::default(),
            client_name: None,
            settings: BackendSettings::default(),
        }
    }

    /// Use base64-encoded `.creds` content.
    #[must_use]
    pub fn creds_base64(mut self, creds: Secret) -> Self {
        self.credentials.creds_base64 = Some(creds);
        self
    }

    /// Use a `.creds` file.
    #[must_use]
    pub fn creds_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.credentials.creds_file = Some(path.into());
        self
    }

    /// Use an nkey seed.
    #[must_use]
    pub fn nkey_seed(mut self, seed: Secret) -> Self {
        self.credentials.nkey_seed = Some(seed);
        self
    }

    /// Use a token.
    #[must_use]
    pub fn token(mut self, token: Secret) -> Self {
        self.credentials.token = Some(token);
        self
    }

    /// Set the TLS settings.
    #[must_use]
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.tls = tls;
        self
    }

    /// Set the client name.
    #[must_use]
    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.client_name = Some(name.into());
        self
    }

    /// Set the round-trip bound (default 30 s).
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.settings.request_timeout = timeout;
        self
    }

    /// Replace the timeouts and watch tuning.
    #[must_use]
    pub fn settings(mut self, settings: BackendSettings) -> Self {
        self.settings = settings;
        self
    }

    /// The URL with any `user:pass@` removed: safe to log.
    #[must_use]
    pub fn redacted_url(&self) -> String {
        split_userinfo(self.url.expose()).0
    }

    /// Which authentication wins (N1).
    #[must_use]
    pub fn auth_method(&self) -> AuthMethod {
        let c = &self.credentials;
        if c.creds_base64.is_some() {
            AuthMethod::CredsInline
        } else if c.creds_file.is_some() {
            AuthMethod::CredsFile
        } else if c.nkey_seed.is_some() {
            AuthMethod::NkeySeed
        } else if c.token.is_some() {
            AuthMethod::Token
        } else if split_userinfo(self.url.expose()).1.is_some() {
            AuthMethod::UserPassword
        } else {
            AuthMethod::None
        }
    }
}

impl fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &self.redacted_url())
            .field("auth", &self.auth_method())
            .field("credentials", &self.credentials)
            .field("tls", &self.tls)
            .field("client_name", &self.client_name)
            .field("settings", &self.settings)
            .finish()
    }
}

/// A user and password taken from a URL.
pub(crate) struct UserPassword {
    pub(crate) user: String,
    pub(crate) password: Secret,
}

/// Split `user:pass@` out of every comma-separated URL: the URLs without
/// it, and the first user/password found.
pub(crate) fn split_userinfo(urls: &str) -> (String, Option<UserPassword>) {
    let mut found = None;
    let mut clean = String::with_capacity(urls.len());
    for (i, url) in urls.split(',').enumerate() {
        if i > 0 {
            clean.push(',');
        }
        let url = url.trim();
        let (scheme, rest) = match url.find("://") {
            Some(at) => url.split_at(at + 3),
            None => ("", url),
        };
        let authority_end = rest.find('/').unwrap_or(rest.len());
        match rest[..authority_end].rfind('@') {
            Some(at) => {
                let userinfo = &rest[..at];
                if found.is_none() {
                    let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                    found = Some(UserPassword {
                        user: percent_decode(user),
                        password: Secret::new(percent_decode(pass)),
                    });
                }
                clean.push_str(scheme);
                clean.push_str(&rest[at + 1..]);
            }
            None => clean.push_str(url),
        }
    }
    (clean, found)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            // Two hex digits make at most 0xff: the cast cannot truncate.
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_stripped_from_every_url() {
        let (clean, up) = split_userinfo("nats://al%40ice:p%3Ass@h1:4222, tls://bob:x@h2:4223");
        assert_eq!(clean, "nats://h1:4222,tls://h2:4223");
        let up = up.unwrap();
        assert_eq!(up.user, "al@ice");
        assert_eq!(up.password.expose(), "p:ss");
    }

    #[test]
    fn url_without_userinfo_is_unchanged() {
        let (clean, up) = split_userinfo("127.0.0.1:4222");
        assert_eq!(clean, "127.0.0.1:4222");
        assert!(up.is_none());
    }

    #[test]
    fn auth_order_first_match_wins() {
        let base = NatsConfig::new("nats://u:p@h:1");
        assert_eq!(base.auth_method(), AuthMethod::UserPassword);
        let token = base.clone().token(Secret::new("t"));
        assert_eq!(token.auth_method(), AuthMethod::Token);
        let nkey = token.clone().nkey_seed(Secret::new("SU"));
        assert_eq!(nkey.auth_method(), AuthMethod::NkeySeed);
        let file = nkey.clone().creds_file("/x.creds");
        assert_eq!(file.auth_method(), AuthMethod::CredsFile);
        let inline = file.creds_base64(Secret::new("Zm9v"));
        assert_eq!(inline.auth_method(), AuthMethod::CredsInline);
        assert_eq!(NatsConfig::new("h:1").auth_method(), AuthMethod::None);
    }

    #[test]
    fn debug_output_redacts_every_secret() {
        let config = NatsConfig::new("nats://user:pw-secret@h:1")
            .creds_base64(Secret::new("creds-secret"))
            .nkey_seed(Secret::new("seed-secret"))
            .token(Secret::new("token-secret"));
        let shown = format!("{config:?} {:?}", config.credentials);
        for secret in ["pw-secret", "creds-secret", "seed-secret", "token-secret"] {
            assert!(!shown.contains(secret), "{secret} leaked in {shown}");
        }
        assert!(shown.contains("nats://h:1"));
    }
}
