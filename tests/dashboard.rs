//! The live dashboard in a real browser: headless Chromium opens `/dashboard` on the admin
//! listener, the page's WebSocket connects, and the numbers it shows change when the test adds
//! connections and publishes. Chromium is driven over the DevTools protocol (a WebSocket,
//! spoken here with tungstenite: no driver to install, no browser download). A screenshot is
//! written to `target/dashboard.png`.
//!
//! Needs `chromium` (scripts/test.sh installs it).

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use clarion::server::{AppConfig, Running};
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

/// Headless Chromium with one page, attached over the DevTools protocol.
struct Browser {
    child: Child,
    profile: PathBuf,
    devtools: WebSocket<TcpStream>,
    session: String,
    next_id: u64,
}

impl Browser {
    fn launch(name: &str) -> Browser {
        let profile =
            std::env::temp_dir().join(format!("clarion-dashboard-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).unwrap();
        let child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--hide-scrollbars",
                "--remote-debugging-port=0",
                &format!("--user-data-dir={}", profile.display()),
                "about:blank",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromium runs (apt-get install chromium; scripts/test.sh does)");
        // Chromium writes the port it chose and the browser's endpoint there.
        let active = profile.join("DevToolsActivePort");
        let endpoint = wait(Duration::from_secs(60), || {
            let text = std::fs::read_to_string(&active).ok()?;
            let (port, path) = text.split_once('\n')?;
            Some(format!("ws://127.0.0.1:{}{}", port.trim(), path.trim()))
        })
        .expect("chromium opens its DevTools port");
        let stream = TcpStream::connect(
            endpoint
                .trim_start_matches("ws://")
                .split('/')
                .next()
                .unwrap(),
        )
        .unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let (devtools, _) = tungstenite::client(endpoint.as_str(), stream).expect("DevTools");
        let mut browser = Browser {
            child,
            profile,
            devtools,
            session: String::new(),
            next_id: 0,
        };
        let target = browser.call("Target.createTarget", json!({"url": "about:blank"}));
        let attached = browser.call(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        );
        browser.session = attached["sessionId"].as_str().unwrap().to_owned();
        browser
    }

    /// Sends a DevTools command (to the page once attached) and returns its result; events and
    /// other answers are skipped.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            command["sessionId"] = json!(self.session);
        }
        self.devtools
            .send(Message::text(command.to_string()))
            .unwrap();
        loop {
            let Message::Text(text) = self.devtools.read().expect("DevTools answers") else {
                continue;
            };
            let answer: Value = serde_json::from_str(&text).unwrap();
            if answer["id"] == id {
                assert!(answer["error"].is_null(), "{method}: {answer}");
                return answer["result"].clone();
            }
        }
    }

    /// The value of a JavaScript expression in the page.
    fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        );
        result["result"]["value"].clone()
    }

    /// The text of the element with `id`.
    fn text(&mut self, id: &str) -> String {
        let value = self.eval(&format!("document.getElementById({id:?}).textContent"));
        value.as_str().unwrap_or_default().to_owned()
    }

    /// Snapshots the dashboard has shown so far.
    fn updates(&mut self) -> u64 {
        self.eval("Number(document.body.dataset.updates)")
            .as_u64()
            .unwrap_or(0)
    }

    fn screenshot(&mut self, file: &Path) {
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        std::fs::write(file, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Polls `found` every 100 ms until it gives a value or `patience` passes (a bound for a page
/// that never shows it, not a timing assertion).
fn wait<T>(patience: Duration, mut found: impl FnMut() -> Option<T>) -> Option<T> {
    let until = Instant::now() + patience;
    loop {
        if let Some(value) = found() {
            return Some(value);
        }
        if Instant::now() >= until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A number as the page shows it: `1,234`, `12.5k`, `1.20M`, `–` (none yet).
fn shown(text: &str) -> Option<f64> {
    let text = text.replace(',', "");
    let (digits, scale) = match text.chars().last()? {
        'k' => (&text[..text.len() - 1], 1e3),
        'M' => (&text[..text.len() - 1], 1e6),
        'G' => (&text[..text.len() - 1], 1e9),
        _ => (&text[..], 1.0),
    };
    digits.parse::<f64>().ok().map(|n| n * scale)
}

fn start() -> Running {
    let config = clarion_engine::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        threads: 2,
        pin_threads: false,
        io: common::io(),
        ..clarion_engine::Config::default()
    };
    let app = AppConfig {
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..AppConfig::default()
    };
    clarion::server::launch(config, app).expect("server starts")
}

/// Publishes to `topic` over one kept HTTP connection, every 20 ms, until `stop` (at most
/// 1,500 times).
fn publisher(
    public: SocketAddr,
    topic: &'static str,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut stream = common::tcp(public);
        let mut published = 0;
        while !stop.load(Ordering::Relaxed) && published < 1500 {
            let body = format!("tick {published}");
            let request = format!(
                "POST /publish/{topic} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(request.as_bytes()).unwrap();
            assert!(common::read_answer(&mut stream).starts_with("HTTP/1.1 202"));
            published += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        published
    })
}

#[test]
fn the_dashboard_shows_the_server_live_in_chromium() {
    let running = start();
    let (public, admin) = (running.runtime.local_addr(), running.admin_addr().unwrap());
    let mut browser = Browser::launch("live");
    browser.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 1360, "height": 1000, "deviceScaleFactor": 1, "mobile": false}),
    );
    browser.call(
        "Page.navigate",
        json!({"url": format!("http://{admin}/dashboard")}),
    );
    let patience = Duration::from_secs(60);
    assert!(
        wait(patience, || (browser.updates() >= 1).then_some(())).is_some(),
        "the page connects and shows a snapshot"
    );
    assert_eq!(browser.text("status-text"), "live");
    let before = shown(&browser.text("connections")).expect("a connection count");

    // 30 subscribers over three topics, and a publisher on the first.
    let subscribers: Vec<_> = (0..30)
        .map(|i| common::connect(public, &format!("/t/room-{}", i % 3)))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let publishing = publisher(public, "room-0", stop.clone());
    let counted = wait(patience, || {
        let connections = shown(&browser.text("connections"))?;
        (connections >= before + 30.0).then_some(connections)
    });
    assert!(counted.is_some(), "the new connections show");
    let delivering = wait(patience, || {
        let rate = shown(&browser.text("deliveries_per_s"))?;
        (rate >= 50.0).then_some(rate)
    });
    assert!(delivering.is_some(), "fanout deliveries per second show");
    // Each delivery's wait between its frame being queued and written.
    let waited = wait(patience, || {
        let shown = browser.text("write_wait_p99");
        shown.starts_with('≤').then_some(shown)
    });
    assert!(waited.is_some(), "the write wait shows");
    // A topic's rate needs it in two snapshots: it may show one later than the deliveries.
    let busiest = wait(patience, || {
        let top = browser.eval("document.getElementById('top_rate').textContent");
        top.as_str()?.contains("room-0").then_some(())
    });
    let last = browser.eval("JSON.stringify(window.lastSnapshot)");
    assert!(
        busiest.is_some(),
        "the published topic among the busiest: {last}"
    );
    let top = browser.eval("document.getElementById('top_subscribers').textContent");
    assert!(top.as_str().unwrap_or_default().contains("room-"), "{top}");
    // A few more seconds of traffic for the charts, then the picture.
    let enough = browser.updates() + 8;
    wait(patience, || (browser.updates() >= enough).then_some(()));
    let file = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("dashboard.png");
    browser.screenshot(&file);
    assert!(
        std::fs::metadata(&file).unwrap().len() > 10_000,
        "a picture, not a blank"
    );
    stop.store(true, Ordering::Relaxed);
    assert!(publishing.join().unwrap() > 0);
    drop(subscribers);
}
