//! What both peer servers share, so that only the WebSocket library differs between them: the
//! command line, the tokio runtime, the accept loop, the routes and the topic registry.
//!
//! Routes are Clarion's: `/echo` echoes every message, `/t/<topic>` subscribes the socket to
//! `<topic>` and publishes every message it sends there (what `clarion-loadgen fanout` drives
//! by default). A topic is a `tokio::sync::broadcast` channel, as tokio's users broadcast.
//! With `--tls-cert` and `--tls-key` every connection is TLS (`wss://`, see [`tls`]).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use clap::Parser;

#[cfg(feature = "check")]
pub mod check;
pub mod tls;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_rustls::TlsAcceptor;

pub use tls::Stream;

/// How long a client has for the TLS handshake before its connection is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The flags of both servers.
#[derive(Parser, Debug, Clone)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9002")]
    pub listen: SocketAddr,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Messages a topic holds for a subscriber that is behind; past that it skips the oldest.
    #[arg(long, default_value_t = 1024)]
    pub topic_capacity: usize,
    /// TLS certificate chain (PEM, leaf first): serve `wss://` only (needs --tls-key).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// A bound listener and, when serving TLS, the acceptor every connection goes through.
pub struct Listener {
    /// The TCP listener.
    pub tcp: TcpListener,
    /// `Some` for `wss://`.
    pub tls: Option<TlsAcceptor>,
}

impl Listener {
    /// Plaintext on `tcp`.
    pub fn plain(tcp: TcpListener) -> Listener {
        Listener { tcp, tls: None }
    }
}

/// What a request path asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/echo`.
    Echo,
    /// `/t/<topic>`.
    Topic(String),
}

impl Route {
    /// The route of a request path (query ignored); `None` for anything else.
    pub fn parse(path: &str) -> Option<Route> {
        let path = path.split('?').next().unwrap_or_default();
        match path.strip_prefix("/t/") {
            Some(topic) if !topic.is_empty() && !topic.contains('/') => {
                Some(Route::Topic(topic.to_owned()))
            }
            Some(_) => None,
            None => (path == "/echo").then_some(Route::Echo),
        }
    }
}

/// Topics by name, each a broadcast channel of `T`; a topic goes away with its last subscriber.
pub struct Topics<T> {
    channels: Mutex<HashMap<String, broadcast::Sender<T>>>,
    capacity: usize,
}

/// A socket's membership of one topic: it publishes with `sender` and receives from `receiver`.
pub struct Subscription<T> {
    topics: Arc<Topics<T>>,
    name: String,
    /// Publishes to every subscriber of the topic (this one included).
    pub sender: broadcast::Sender<T>,
    /// What was published to the topic since this subscription began.
    pub receiver: broadcast::Receiver<T>,
}

impl<T: Clone> Topics<T> {
    /// No topics yet; each will hold `capacity` messages for a subscriber that is behind.
    pub fn new(capacity: usize) -> Arc<Topics<T>> {
        Arc::new(Topics {
            channels: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        })
    }

    /// Subscribes to `name`, creating the topic if it is new.
    pub fn subscribe(self: &Arc<Self>, name: String) -> Subscription<T> {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        let sender = channels
            .entry(name.clone())
            .or_insert_with(|| broadcast::channel(self.capacity).0)
            .clone();
        let receiver = sender.subscribe();
        Subscription {
            topics: Arc::clone(self),
            name,
            sender,
            receiver,
        }
    }

    /// How many topics exist.
    pub fn len(&self) -> usize {
        self.channels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether there are no topics.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> Drop for Subscription<T> {
    fn drop(&mut self) {
        let mut channels = self
            .topics
            .channels
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Subscribing takes the same lock, so nobody joins between this check and the removal.
        if self.sender.receiver_count() == 1 {
            channels.remove(&self.name);
        }
    }
}

/// Builds the multi-thread runtime with `threads` workers (pin them with `taskset`).
pub fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
}

/// Accepts connections for ever, each (with `TCP_NODELAY`) in a task of its own running
/// `handle`, after the TLS handshake if the listener has TLS (a failed or late handshake,
/// past 10 s, drops the connection). Accept errors (say, out of file descriptors) are logged
/// and retried after a pause.
pub async fn serve<F, Fut>(listener: Listener, handle: F)
where
    F: Fn(Stream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let handle = Arc::new(handle);
    loop {
        match listener.tcp.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                match &listener.tls {
                    None => {
                        tokio::spawn(handle(Stream::Plain(stream)));
                    }
                    Some(acceptor) => {
                        let accept = acceptor.accept(stream);
                        let handle = Arc::clone(&handle);
                        tokio::spawn(async move {
                            let accepted =
                                tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, accept).await;
                            if let Ok(Ok(tls)) = accepted {
                                handle(Stream::Tls(Box::new(tls))).await;
                            }
                        });
                    }
                }
            }
            Err(error) => {
                eprintln!("accept: {error}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Binds `args.listen` (with TLS if asked) and runs `server` (given the listener) on a runtime
/// of `args.threads` workers. Errors go to stderr with exit status 1.
pub fn run<F, Fut>(name: &str, args: &Args, server: F) -> std::process::ExitCode
where
    F: FnOnce(Listener) -> Fut,
    Fut: Future<Output = ()>,
{
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => tls::acceptor(cert, key).map(Some),
        _ => Ok(None),
    };
    let result = tls.and_then(|tls| {
        let runtime = runtime(args.threads)?;
        runtime.block_on(async {
            let tcp = TcpListener::bind(args.listen).await?;
            eprintln!(
                "{name} listening on {} ({}) with {} worker threads",
                tcp.local_addr()?,
                if tls.is_some() { "wss" } else { "ws" },
                args.threads
            );
            server(Listener { tcp, tls }).await;
            Ok(())
        })
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{name}: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(Route::parse("/echo"), Some(Route::Echo));
        assert_eq!(Route::parse("/echo?x=1"), Some(Route::Echo));
        assert_eq!(Route::parse("/t/news"), Some(Route::Topic("news".into())));
        for bad in ["/", "/t/", "/t/a/b", "/echo/", "/ws", ""] {
            assert_eq!(Route::parse(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn topics_broadcast_and_go_away_with_the_last_subscriber() {
        let topics = Topics::<u32>::new(4);
        let mut a = topics.subscribe("news".into());
        let mut b = topics.subscribe("news".into());
        let other = topics.subscribe("sport".into());
        assert_eq!(topics.len(), 2);
        a.sender.send(7).unwrap();
        assert_eq!(a.receiver.recv().await.unwrap(), 7);
        assert_eq!(b.receiver.recv().await.unwrap(), 7);
        drop(other);
        assert_eq!(topics.len(), 1);
        drop(a);
        assert_eq!(topics.len(), 1);
        drop(b);
        assert!(topics.is_empty());
    }
}
