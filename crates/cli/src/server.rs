//! Connecting to the NATS server the commands talk to.

use std::time::Duration;

use slipstream::kv::Connection;
use slipstream::nats::BackendSettings;
use slipstream::{NatsConfig, NatsConnection};

use crate::error::CliError;

/// How to reach the server.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ServerArgs {
    /// The NATS server URL (user and password may be in it).
    #[arg(long, value_name = "URL")]
    pub(crate) server: String,
    /// Bound on every server round-trip, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub(crate) timeout: u64,
}

impl ServerArgs {
    /// A connected connection.
    ///
    /// # Errors
    /// The connection's failure, bounded by the timeout.
    pub(crate) async fn connect(&self) -> Result<NatsConnection, CliError> {
        let bound = Duration::from_secs(self.timeout);
        let settings = BackendSettings::default().request_timeout(bound);
        let config = NatsConfig::new(self.server.clone())
            .client_name("slipstream-cli")
            .settings(settings);
        let conn = NatsConnection::new(config);
        conn.connect().await?;
        Ok(conn)
    }
}
