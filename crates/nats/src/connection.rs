//! The connection (N1, N2) and the `Connection` trait.

use core::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::{Client, ConnectOptions, Event};
use base64::Engine as _;
use slipstream_kv::{Connection, ConnectionCapabilities, KvError, StoreConfig};
use tracing::{debug, info, warn};

use crate::api::ConnShared;
use crate::bucket::open_bucket;
use crate::config::{AuthMethod, BackendSettings, NatsConfig, TlsMode, split_userinfo};
use crate::error::NatsError;
use crate::jetstream::bounded;
use crate::store::NatsBucket;

enum Source {
    Config(NatsConfig),
    External {
        client: Client,
        shut_down: AtomicBool,
    },
}

enum Health {
    /// Follows the client's Connected/Disconnected events. One flag per
    /// installed client, so a replaced client cannot flip it.
    Events(Arc<AtomicBool>),
    /// Reads a caller's client's live state.
    Live(Client),
}

struct Installed {
    shared: Arc<ConnShared>,
    health: Health,
}

struct Inner {
    source: Source,
    settings: BackendSettings,
    installed: Mutex<Option<Installed>>,
    connecting: tokio::sync::Mutex<()>,
}

/// A connection to a NATS server (V9): dials from a [`NatsConfig`] or wraps
/// a caller's [`Client`]. Cheap to clone.
#[derive(Clone)]
pub struct NatsConnection {
    inner: Arc<Inner>,
}

impl fmt::Debug for NatsConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("NatsConnection");
        match &self.inner.source {
            Source::Config(config) => d.field("config", config),
            Source::External { .. } => d.field("client", &"<caller's client>"),
        };
        d.field("healthy", &self.is_healthy()).finish()
    }
}

impl NatsConnection {
    /// A connection that dials with `config` on [`Connection::connect`].
    #[must_use]
    pub fn new(config: NatsConfig) -> Self {
        let settings = config.settings.clone();
        Self::with_source(Source::Config(config), settings)
    }

    /// A connection over a caller's connected client. `shutdown` releases
    /// it; a later `connect` refuses (there is no URL to redial).
    #[must_use]
    pub fn from_client(client: Client, settings: BackendSettings) -> Self {
        Self::with_source(
            Source::External {
                client,
                shut_down: AtomicBool::new(false),
            },
            settings,
        )
    }

    fn with_source(source: Source, settings: BackendSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                source,
                settings,
                installed: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
            }),
        }
    }

    fn shared(&self) -> Result<Arc<ConnShared>, KvError> {
        let installed = self
            .inner
            .installed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        installed
            .as_ref()
            .map(|i| Arc::clone(&i.shared))
            .ok_or(KvError::NotConnected)
    }

    /// The installed client, for callers that need the raw API.
    ///
    /// # Errors
    /// [`KvError::NotConnected`] before `connect` or after `shutdown`.
    pub fn client(&self) -> Result<Client, KvError> {
        Ok(self.shared()?.client.clone())
    }

    async fn dial(&self, config: &NatsConfig) -> Result<(Client, Arc<AtomicBool>), NatsError> {
        let settings = &config.settings;
        let (url, user_password) = split_userinfo(config.url.expose());
        let method = config.auth_method();
        info!(url = %url, auth = ?method, "connecting to NATS");
        let mut options = ConnectOptions::new()
            .connection_timeout(settings.request_timeout)
            .request_timeout(Some(settings.request_timeout))
            .ping_interval(settings.ping_interval)
            .subscription_capacity(settings.subscription_capacity)
            .reconnect_delay_callback(reconnect_backoff);
        let invalid =
            |what: &str, e: &dyn fmt::Display| NatsError::InvalidConfig(format!("{what}: {e}"));
        let c = &config.credentials;
        options = match method {
            AuthMethod::CredsInline => {
                let encoded = c
                    .creds_base64
                    .as_ref()
                    .map(|s| s.expose())
                    .unwrap_or_default();
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(encoded.trim())
                    .map_err(|e| invalid("inline credentials are not base64", &e))?;
                let text = String::from_utf8(decoded)
                    .map_err(|e| invalid("inline credentials are not UTF-8", &e))?;
                options
                    .credentials(&text)
                    .map_err(|e| invalid("inline credentials are not a creds file", &e))?
            }
            AuthMethod::CredsFile => {
                let path = c.creds_file.clone().unwrap_or_default();
                options
                    .credentials_file(&path)
                    .await
                    .map_err(|e| invalid("credentials file unusable", &e))?
            }
            AuthMethod::NkeySeed => options.nkey(
                c.nkey_seed
                    .as_ref()
                    .map(|s| s.expose().to_owned())
                    .unwrap_or_default(),
            ),
            AuthMethod::Token => options.token(
                c.token
                    .as_ref()
                    .map(|s| s.expose().to_owned())
                    .unwrap_or_default(),
            ),
            AuthMethod::UserPassword => match user_password {
                Some(up) => options.user_and_password(up.user, up.password.expose().to_owned()),
                None => options,
            },
            AuthMethod::None => options,
        };
        if let Some(root) = &config.tls.root_ca {
            options = options.add_root_certificates(root.clone());
        }
        if let Some((cert, key)) = &config.tls.client_cert {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if config.tls.mode == TlsMode::Required {
            options = options.require_tls(true);
        }
        if let Some(name) = &config.client_name {
            options = options.name(name);
        }
        let healthy = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&healthy);
        options = options.event_callback(move |event| {
            let flag = Arc::clone(&flag);
            async move {
                match event {
                    Event::Connected => {
                        flag.store(true, Ordering::SeqCst);
                        info!("NATS connection (re-)established");
                    }
                    Event::Disconnected => {
                        flag.store(false, Ordering::SeqCst);
                        warn!("NATS connection lost; the client reconnects with backoff");
                    }
                    Event::Closed => flag.store(false, Ordering::SeqCst),
                    other => debug!(event = %other, "NATS client event"),
                }
            }
        });
        // A seed list: the client tries each and learns the rest of the
        // cluster from whichever answers.
        let seeds: Vec<&str> = url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let client = bounded("connect", settings.request_timeout, async {
            options
                .connect(seeds.as_slice())
                .await
                .map_err(|e| NatsError::Connect {
                    url: url.clone(),
                    reason: e.to_string(),
                })
        })
        .await?;
        healthy.store(
            client.connection_state() == State::Connected,
            Ordering::SeqCst,
        );
        Ok((client, healthy))
    }
}

/// The pause before reconnect attempt `attempt` (counted by the client
/// from 1 since the connection was lost): none for the first, then 50 ms
/// doubling up to 4 s. Each pause is logged, so a reconnect storm's backoff
/// shows in the log.
fn reconnect_backoff(attempt: usize) -> Duration {
    if attempt <= 1 {
        return Duration::ZERO;
    }
    let doublings = u32::try_from(attempt - 2).unwrap_or(u32::MAX).min(7);
    let pause = (Duration::from_millis(50) * 2_u32.pow(doublings)).min(Duration::from_secs(4));
    warn!(attempt, ?pause, "reconnecting to NATS after a backoff");
    pause
}

impl Connection for NatsConnection {
    type Store = NatsBucket;

    async fn connect(&self) -> Result<(), KvError> {
        let _one_at_a_time = self.inner.connecting.lock().await;
        if self.shared().is_ok() {
            return Ok(());
        }
        let (client, health) = match &self.inner.source {
            Source::External { client, shut_down } => {
                if shut_down.load(Ordering::SeqCst) {
                    return Err(NatsError::CannotRedial.into());
                }
                (client.clone(), Health::Live(client.clone()))
            }
            Source::Config(config) => {
                let (client, flag) = self.dial(config).await?;
                (client, Health::Events(flag))
            }
        };
        let shared = Arc::new(ConnShared {
            client,
            settings: self.inner.settings.clone(),
            open: AtomicBool::new(true),
        });
        *self
            .inner
            .installed
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Installed { shared, health });
        Ok(())
    }

    async fn shutdown(&self) -> Result<(), KvError> {
        let _one_at_a_time = self.inner.connecting.lock().await;
        let taken = self
            .inner
            .installed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(installed) = taken else {
            return Ok(());
        };
        installed.shared.open.store(false, Ordering::SeqCst);
        match (&self.inner.source, installed.health) {
            (Source::External { shut_down, .. }, _) => shut_down.store(true, Ordering::SeqCst),
            (Source::Config(_), health) => {
                if let Health::Events(flag) = health {
                    flag.store(false, Ordering::SeqCst);
                }
                let client = installed.shared.client.clone();
                let drained = bounded("shutdown", self.inner.settings.request_timeout, async {
                    client.drain().await.map_err(|e| NatsError::Request {
                        operation: "shutdown".to_owned(),
                        reason: e.to_string(),
                    })
                })
                .await;
                if let Err(e) = drained {
                    warn!(error = %e, "draining the NATS client failed");
                }
            }
        }
        Ok(())
    }

    fn is_healthy(&self) -> bool {
        let installed = self
            .inner
            .installed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match installed.as_ref().map(|i| &i.health) {
            Some(Health::Events(flag)) => flag.load(Ordering::SeqCst),
            Some(Health::Live(client)) => client.connection_state() == State::Connected,
            None => false,
        }
    }

    async fn store(&self, name: &str) -> Result<NatsBucket, KvError> {
        self.store_with_config(&StoreConfig::new(name)).await
    }

    async fn store_with_config(&self, config: &StoreConfig) -> Result<NatsBucket, KvError> {
        let shared = self.shared()?;
        Ok(open_bucket(&shared, config).await?)
    }

    fn capabilities(&self) -> ConnectionCapabilities {
        // Before a connection exists nothing is known, so nothing is claimed.
        let at_least = |major, minor| self.shared().is_ok_and(|s| s.server_at_least(major, minor));
        ConnectionCapabilities {
            multi_filter_watch: at_least(2, 10),
            per_message_ttl: at_least(2, 11),
            purge: true,
            headers_only_listing: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnects_back_off_from_nothing_to_four_seconds() {
        let pauses: Vec<u64> = (1..=12)
            .map(|a| u64::try_from(reconnect_backoff(a).as_millis()).unwrap_or(u64::MAX))
            .collect();
        assert_eq!(
            pauses,
            [
                0, 50, 100, 200, 400, 800, 1600, 3200, 4000, 4000, 4000, 4000
            ]
        );
    }
}
