//! The client's settings, with the defaults of `docs/clients.md` (section 12), and where its
//! token comes from.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::backoff::Backoff;
use crate::tls::Tls;

/// Any error a token provider returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a token provider returns: a future of the token.
pub type TokenFuture = Pin<Box<dyn Future<Output = Result<String, BoxError>> + Send>>;

/// A token provider: called before every attempt and every refresh.
pub type TokenProvider = Arc<dyn Fn() -> TokenFuture + Send + Sync>;

/// Where the token comes from (set it with [`Options::token`] or [`Options::token_provider`]).
#[derive(Clone, Default)]
pub enum Auth {
    /// No token (servers with `auth = "none"`).
    #[default]
    None,
    /// One token for the client's whole life: 4001 and 4003 stop it.
    Fixed(String),
    /// Called before every attempt and every refresh.
    Provider(TokenProvider),
}

/// How the client behaves. Build it with `Options::default()` and the fields or methods below.
///
/// ```
/// use std::time::Duration;
/// let options = clarion_client::Options {
///     heartbeat: Duration::from_secs(10),
///     max_queued: 0, // reject publishes at once while disconnected
///     ..Default::default()
/// }
/// .token("eyJhbGciOi…");
/// # let _ = options;
/// ```
#[derive(Clone)]
pub struct Options {
    /// The token, if the server uses them. Default: none.
    pub auth: Auth,
    /// Heartbeat interval asked in `hello`, whole seconds (rounded up); zero: none. The server
    /// brings it within its range. Default 20 s.
    pub heartbeat: Duration,
    /// Reconnection delays.
    pub backoff: Backoff,
    /// Bounds the token, the upgrade and the `hello` ack of one attempt. Default 10 s.
    pub connect_timeout: Duration,
    /// From `publish()` to its ack; zero: none. Default 30 s.
    pub publish_timeout: Duration,
    /// Publishes held while disconnected; zero: rejected at once. Default 100.
    pub max_queued: usize,
    /// Bytes of those publishes' commands. Default 1 MiB.
    pub max_queued_bytes: usize,
    /// Refresh this long before the server would end the connection for the token's expiry (at
    /// most half the time left). Default 30 s.
    pub refresh_before: Duration,
    /// Events each stream of [`crate::Client::events`] holds unread before the client stops
    /// reading the socket until the application catches up (the server's slow-consumer policy
    /// then applies; the heartbeat watch pauses meanwhile); it reads again as soon as the
    /// reader takes one. Only events given to the application count: messages that arrive
    /// while a gap is repaired are dropped and replayed, never held. Default 4096.
    pub event_buffer: usize,
    /// Largest message accepted from the server (close 1009 above it). Default 16 MiB.
    pub max_message_size: u64,
    /// Which certificates `wss:` accepts. Default: the platform's trusted roots.
    pub tls: Tls,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            auth: Auth::None,
            heartbeat: Duration::from_secs(20),
            backoff: Backoff::default(),
            connect_timeout: Duration::from_secs(10),
            publish_timeout: Duration::from_secs(30),
            max_queued: 100,
            max_queued_bytes: 1 << 20,
            refresh_before: Duration::from_secs(30),
            event_buffer: 4096,
            max_message_size: 16 << 20,
            tls: Tls::default(),
        }
    }
}

impl Options {
    /// Connect with this token. It is sent as `Authorization: Bearer`; when it expires (4001) or
    /// is refused (4003) the client stops, since it can only fail again.
    pub fn token(mut self, token: impl Into<String>) -> Options {
        self.auth = Auth::Fixed(token.into());
        self
    }

    /// Connect with tokens from `provider`, called before every attempt and every refresh
    /// (bounded by `connect_timeout`; it may cache). Replaces a fixed token.
    ///
    /// ```
    /// let options = clarion_client::Options::default().token_provider(|| {
    ///     Box::pin(async { Ok::<_, clarion_client::BoxError>("eyJhbGciOi…".to_owned()) })
    /// });
    /// # let _ = options;
    /// ```
    pub fn token_provider(
        mut self,
        provider: impl Fn() -> TokenFuture + Send + Sync + 'static,
    ) -> Options {
        self.auth = Auth::Provider(Arc::new(provider));
        self
    }

    /// The heartbeat asked in `hello`, in whole seconds (at most 255, the server's range).
    pub(crate) fn heartbeat_secs(&self) -> u64 {
        let secs = self.heartbeat.as_secs() + u64::from(self.heartbeat.subsec_nanos() > 0);
        secs.min(255)
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("auth", &self.auth)
            .field("heartbeat", &self.heartbeat)
            .field("backoff", &self.backoff)
            .field("connect_timeout", &self.connect_timeout)
            .field("publish_timeout", &self.publish_timeout)
            .field("max_queued", &self.max_queued)
            .field("max_queued_bytes", &self.max_queued_bytes)
            .field("refresh_before", &self.refresh_before)
            .field("event_buffer", &self.event_buffer)
            .field("max_message_size", &self.max_message_size)
            .field("tls", &self.tls)
            .finish()
    }
}

/// Shows which kind, never the token.
impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Auth::None => "None",
            Auth::Fixed(_) => "Fixed(…)",
            Auth::Provider(_) => "Provider(…)",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_is_asked_in_whole_seconds() {
        let with = |heartbeat| Options {
            heartbeat,
            ..Options::default()
        };
        assert_eq!(with(Duration::ZERO).heartbeat_secs(), 0);
        assert_eq!(with(Duration::from_millis(1500)).heartbeat_secs(), 2);
        assert_eq!(with(Duration::from_secs(20)).heartbeat_secs(), 20);
        assert_eq!(with(Duration::from_secs(1000)).heartbeat_secs(), 255);
    }

    #[test]
    fn debug_never_shows_the_token() {
        let shown = format!("{:?}", Options::default().token("secret-token"));
        assert!(!shown.contains("secret-token"), "{shown}");
    }
}
