//! A live ticker: the push server with a page and the TypeScript client (`clients/js`, built)
//! served on the same port, and a publisher loop. `/`, `/client/*.js` are this program's routes;
//! everything else (`/ws`, `/publish`, `/healthz`, …) is the push server's.
//!
//! ```sh
//! (cd clients/js && npm ci && npm run build)
//! cargo run --release --example ticker            # then open http://127.0.0.1:9001/
//! TICKER_API_KEY=secret cargo run --release --example ticker -- 0.0.0.0:8080
//! ```
//!
//! Beyond loopback the push server refuses to start with its publish API open to anyone:
//! `TICKER_API_KEY` closes it (this program publishes in-process, without the key).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clarion::server::app::{App, Conn};
use clarion::server::state::Origin;
use clarion::server::{AppConfig, launch_with};
use clarion_engine::{Answer, ConnId, Ctx, Handler, LimitHit, Local, RequestInfo, Response};
use clarion_protocol::handshake::Request;
use clarion_protocol::{CloseCode, MessageKind};
use clarion_pubsub::{Format, Payload, Post};

/// The page and the client's modules, read once at start.
struct Site {
    page: &'static str,
    modules: HashMap<String, Vec<u8>>,
}

impl Site {
    /// The built client from `clients/js/dist` (`npm run build` makes it).
    fn load() -> Result<Site, String> {
        let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/js/dist");
        let entries = std::fs::read_dir(&dist).map_err(|e| {
            format!(
                "{}: {e}; build the client first: (cd clients/js && npm ci && npm run build)",
                dist.display()
            )
        })?;
        let mut modules = HashMap::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".js") {
                let bytes = std::fs::read(entry.path()).map_err(|e| format!("{name}: {e}"))?;
                modules.insert(name, bytes);
            }
        }
        Ok(Site {
            page: include_str!("page.html"),
            modules,
        })
    }

    /// This program's answer to `path`, if it is one of its routes.
    fn answer(&self, path: &str) -> Option<Response> {
        if path == "/" {
            return Some(Response::new(200, "text/html; charset=utf-8", self.page));
        }
        let module = self.modules.get(path.strip_prefix("/client/")?)?;
        Some(Response::new(200, "text/javascript", module.clone()))
    }
}

/// The push server's handler with the site's routes in front.
struct Ticker {
    app: App,
    site: Arc<Site>,
}

impl Handler for Ticker {
    type Conn = Conn;
    type Inbox = Post;

    fn on_request<'r>(
        &mut self,
        request: &Request<'r>,
        body: &[u8],
        info: &RequestInfo,
    ) -> Answer<'r, Conn> {
        match self.site.answer(request.path()) {
            Some(response) if request.method() == "GET" => Answer::Respond(response),
            _ => self.app.on_request(request, body, info),
        }
    }

    fn on_open(&mut self, ctx: &mut Ctx<'_, Conn>) {
        self.app.on_open(ctx)
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, Conn>, kind: MessageKind, payload: &[u8]) {
        self.app.on_message(ctx, kind, payload)
    }

    fn on_close(&mut self, id: ConnId, conn: &mut Conn, code: Option<CloseCode>, now: Instant) {
        self.app.on_close(id, conn, code, now)
    }

    fn on_inbox(&mut self, local: &mut Local<'_, Conn>, message: Post) {
        self.app.on_inbox(local, message)
    }

    fn on_sweep(&mut self, now: Instant) -> bool {
        self.app.on_sweep(now)
    }

    fn on_sweep_conn(&mut self, ctx: &mut Ctx<'_, Conn>) {
        self.app.on_sweep_conn(ctx)
    }

    fn on_writable(&mut self, ctx: &mut Ctx<'_, Conn>) {
        self.app.on_writable(ctx)
    }

    fn on_limit(&mut self, hit: &LimitHit<'_, Conn>) {
        self.app.on_limit(hit)
    }
}

fn main() {
    let listen: SocketAddr = match std::env::args()
        .nth(1)
        .as_deref()
        .unwrap_or("127.0.0.1:9001")
        .parse()
    {
        Ok(addr) => addr,
        Err(e) => return eprintln!("ticker: the argument is an address to listen on: {e}"),
    };
    let site = match Site::load() {
        Ok(site) => Arc::new(site),
        Err(message) => return eprintln!("ticker: {message}"),
    };
    let config = clarion_engine::Config {
        listen,
        threads: 1,
        pin_threads: false,
        ..clarion_engine::Config::default()
    };
    let app = AppConfig {
        api_key: std::env::var("TICKER_API_KEY")
            .ok()
            .as_deref()
            .map(Into::into),
        ..AppConfig::default()
    };
    let running = match launch_with(config, app, move |app| Ticker {
        app,
        site: site.clone(),
    }) {
        Ok(running) => running,
        Err(e) => return eprintln!("ticker: cannot start: {e}"),
    };
    println!("ticker on http://{}/", running.runtime.local_addr());
    // A random walk in cents, published twice a second.
    let mut price: i64 = 10_000;
    let mut noise = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    loop {
        noise ^= noise << 13;
        noise ^= noise >> 7;
        noise ^= noise << 17;
        price = (price + (noise % 41) as i64 - 20).max(100);
        let tick = format!(
            r#"{{"symbol":"CLR","price":{}.{:02}}}"#,
            price / 100,
            price % 100
        );
        let payload = Payload::new(Format::Json, tick.as_bytes());
        let max_queued = running.server.live().config.max_queued_bytes;
        if let Err(e) = running
            .server
            .publish("ticker", payload, Origin::Api, max_queued)
        {
            eprintln!("ticker: publish: {e}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
