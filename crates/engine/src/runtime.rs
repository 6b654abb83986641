//! Starting and stopping reactors: one thread per listener, each with its backend, driver and
//! handler; what every handler is built with ([`Shared`]); graceful shutdown.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::listen::{bind_reuseport, pin_to_core};
use crate::reactor::{CompletionDriver, Driver, Reactor, ReadinessDriver};
use crate::sys::{Waker, epoll, uring};
use crate::{Config, Handler, Io, LiveLimits, Mailboxes, ProxyProtocol, Stats};

/// What every reactor's handler is built with: the way to reach the other reactors, everyone's
/// counters, and the limits in force.
pub struct Shared<M> {
    /// The reactors' inboxes.
    pub mailboxes: Arc<Mailboxes<M>>,
    /// The reactors' counters.
    pub stats: Arc<[Arc<Stats>]>,
    /// The limits every reactor applies, which the application may change while they run.
    pub limits: Arc<LiveLimits>,
}

/// Starts a graceful shutdown from any thread (a signal handler thread, a test).
#[derive(Clone)]
pub struct ShutdownHandle {
    flag: Arc<AtomicBool>,
    wakers: Vec<Waker>,
}

impl ShutdownHandle {
    /// Stop accepting, close every connection with 1001, drain, then let the reactors exit.
    pub fn shutdown(&self) {
        self.flag.store(true, std::sync::atomic::Ordering::SeqCst);
        self.wakers.iter().for_each(|w| w.wake());
    }
}

/// Running reactors: their stats, and the way to stop them.
pub struct Runtime {
    /// Per listener, the address bound.
    local_addrs: Vec<SocketAddr>,
    io: Io,
    shutdown: ShutdownHandle,
    threads: Mutex<Vec<JoinHandle<()>>>,
    stats: Vec<Arc<Stats>>,
    limits: Arc<LiveLimits>,
}

impl Runtime {
    /// Binds one listener per reactor and starts the reactor threads on the configured backend.
    /// `make_handler(i, shared)` builds reactor `i`'s handler, on that reactor's thread; an error
    /// there fails the start like a backend that cannot be built.
    pub fn start<H, F>(mut config: Config, make_handler: F) -> io::Result<Runtime>
    where
        H: Handler + 'static,
        F: Fn(usize, &Shared<H::Inbox>) -> io::Result<H> + Send + Sync + 'static,
    {
        // Whether a connection may send a PROXY protocol header depends on its peer's address,
        // which io_uring's multishot accept does not report.
        config.uring.peer_addresses |= config.proxy_protocol != ProxyProtocol::Off;
        let listeners = bind_all(&config)?;
        let local_addrs = listeners[0]
            .iter()
            .map(|l| l.local_addr())
            .collect::<io::Result<_>>()?;
        let mut runtime = Runtime {
            local_addrs,
            io: config.io,
            shutdown: ShutdownHandle {
                flag: Arc::new(AtomicBool::new(false)),
                wakers: Vec::new(),
            },
            threads: Mutex::new(Vec::new()),
            stats: Vec::new(),
            limits: Arc::new(LiveLimits::new(config.limits)),
        };
        let config = Arc::new(config);
        let make_handler = Arc::new(make_handler);
        runtime.io = match config.io {
            Io::Auto => match uring::probe(&config.uring) {
                Ok(()) => Io::Uring,
                Err(e) => {
                    tracing::info!("io_uring unavailable ({e}); using epoll");
                    Io::Epoll
                }
            },
            io => io,
        };
        if runtime.io == Io::Uring {
            let uring = config.uring;
            runtime.spawn(listeners, &config, &make_handler, move |l| {
                uring::Uring::new(l, uring).map(CompletionDriver::new)
            })?;
        } else {
            let read_buffer_size = config.read_buffer_size;
            runtime.spawn(listeners, &config, &make_handler, move |l| {
                let backend = epoll::Epoll::new(l, 1024)?;
                Ok(ReadinessDriver::new(backend, read_buffer_size))
            })?;
        }
        Ok(runtime)
    }

    /// Starts one reactor thread per set of listeners on the driver `make_driver` builds there (a ring
    /// belongs to the thread that creates it). Fails, stopping what started, if any cannot.
    fn spawn<D, H, F>(
        &mut self,
        listeners: Vec<Vec<std::net::TcpListener>>,
        config: &Arc<Config>,
        make_handler: &Arc<F>,
        make_driver: impl Fn(Vec<std::net::TcpListener>) -> io::Result<D> + Clone + Send + 'static,
    ) -> io::Result<()>
    where
        D: Driver + 'static,
        H: Handler + 'static,
        F: Fn(usize, &Shared<H::Inbox>) -> io::Result<H> + Send + Sync + 'static,
    {
        let mut threads = Vec::new();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        // Every reactor's waker is written to by number from other threads: with private fd
        // tables, all of them must exist before any thread copies the table, or a thread that
        // copied early hands a later waker's number to a socket it accepts, and a wake-up then
        // writes 8 bytes into that client's stream (seen at C1M on epoll: the first sockets of
        // each reactor got `01 00 00 00 00 00 00 00` in the middle of their frames). The gate
        // opens once every thread made its backend (or died trying), and stays shut if a thread
        // could not even be spawned, so no start waits forever.
        let gate = Arc::new(StartGate::default());
        self.stats = (0..listeners.len())
            .map(|_| Arc::new(Stats::default()))
            .collect();
        let shared = Arc::new(Shared {
            mailboxes: Arc::new(Mailboxes::<H::Inbox>::with_capacity(
                listeners.len(),
                config.max_inbox_bytes,
            )),
            stats: self.stats.iter().cloned().collect(),
            limits: self.limits.clone(),
        });
        let mut spawn_failed = None;
        for (index, listeners) in listeners.into_iter().enumerate() {
            let stats = self.stats[index].clone();
            let (config, make_handler, flag) = (
                config.clone(),
                make_handler.clone(),
                self.shutdown.flag.clone(),
            );
            let (make_driver, ready_tx, shared, gate) = (
                make_driver.clone(),
                ready_tx.clone(),
                shared.clone(),
                gate.clone(),
            );
            let spawned = std::thread::Builder::new()
                .name(format!("reactor-{index}"))
                .spawn(move || {
                    if config.pin_threads {
                        pin_to_core(index);
                    }
                    // Counted at the gate even if making the backend panics.
                    let arrival = Arrival(&gate);
                    let driver = make_driver(listeners);
                    drop(arrival);
                    // After every reactor's backend exists (or failed): each waker's descriptor
                    // is then in every thread's copy of the table, under the same number.
                    if config.private_fd_table && !gate.wait_open() {
                        return;
                    }
                    let driver = match driver {
                        Ok(driver) => driver,
                        Err(e) => return drop(ready_tx.send(Err(e))),
                    };
                    if config.private_fd_table
                        && let Err(e) = clarion_host::unshare_fd_table()
                    {
                        return drop(ready_tx.send(Err(e)));
                    }
                    let waker = driver.waker();
                    shared.mailboxes.set_waker(index, waker.clone());
                    let handler = match make_handler(index, &shared) {
                        Ok(handler) => handler,
                        Err(e) => return drop(ready_tx.send(Err(e))),
                    };
                    // Sent, then let go: once every thread has answered or died (a panicking
                    // handler factory), the channel closes and the start does not wait on.
                    let _ = ready_tx.send(Ok(waker));
                    drop(ready_tx);
                    let (mailboxes, limits) = (shared.mailboxes.clone(), shared.limits.clone());
                    drop(shared);
                    Reactor::new(driver, handler, config, stats, index, mailboxes, limits)
                        .run(&flag);
                });
            match spawned {
                Ok(thread) => threads.push(thread),
                Err(e) => {
                    spawn_failed = Some(e);
                    break;
                }
            }
        }
        drop(ready_tx);
        let started = threads.len();
        *self.threads.lock().unwrap_or_else(|e| e.into_inner()) = threads;
        gate.open(spawn_failed.is_none(), started);
        // Every thread answers once, or dies (its sender dropped): all answers are heard before
        // a failed start stops the others, so each one that runs is woken to drain.
        let mut failure = spawn_failed;
        for _ in 0..started {
            match ready.recv() {
                Ok(Ok(waker)) => self.shutdown.wakers.push(waker),
                Ok(Err(e)) => {
                    failure.get_or_insert(e);
                }
                Err(_) => {
                    failure.get_or_insert_with(|| {
                        io::Error::other("a reactor thread died while starting")
                    });
                    break;
                }
            }
        }
        if let Some(e) = failure {
            self.shutdown();
            self.join();
            return Err(e);
        }
        Ok(())
    }

    /// The backend the reactors run on (`Auto` resolved).
    pub fn io(&self) -> Io {
        self.io
    }

    /// The address `listen` is bound to (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addrs[0]
    }

    /// The addresses of every listener, by index: `listen`, then `also_listen` (real ports).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Per-reactor counters.
    pub fn stats(&self) -> &[Arc<Stats>] {
        &self.stats
    }

    /// The limits in force, which may be changed while the reactors run.
    pub fn limits(&self) -> &Arc<LiveLimits> {
        &self.limits
    }

    /// How many reactors stopped on a backend error (their `failed` stat). When every one has,
    /// nothing serves any more and [`Runtime::join`] returns.
    pub fn failed(&self) -> usize {
        self.stats
            .iter()
            .filter(|s| s.failed.load(std::sync::atomic::Ordering::Relaxed))
            .count()
    }

    /// Begins a graceful shutdown: stop accepting, close every connection with 1001, drain.
    pub fn shutdown(&self) {
        self.shutdown.shutdown();
    }

    /// A handle that begins the shutdown from another thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Waits for every reactor to finish (after [`Runtime::shutdown`]).
    pub fn join(&self) {
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for thread in threads {
            let _ = thread.join();
        }
    }
}

/// Per reactor, one `SO_REUSEPORT` listener for each address of `config` (listener `i` of every
/// reactor shares a port).
fn bind_all(config: &Config) -> io::Result<Vec<Vec<std::net::TcpListener>>> {
    let addrs: Vec<SocketAddr> = std::iter::once(config.listen)
        .chain(config.also_listen.iter().copied())
        .collect();
    if addrs.len() > crate::MAX_LISTENERS {
        let message = format!("at most {} listeners", crate::MAX_LISTENERS);
        return Err(io::Error::new(io::ErrorKind::InvalidInput, message));
    }
    let threads = config.threads.max(1);
    let mut reactors: Vec<Vec<std::net::TcpListener>> = (0..threads).map(|_| Vec::new()).collect();
    for addr in addrs {
        for (reactor, listener) in bind_reuseport(addr, threads, config.backlog)?
            .into_iter()
            .enumerate()
        {
            reactors[reactor].push(listener);
        }
    }
    Ok(reactors)
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.shutdown();
        self.join();
    }
}

/// Where reactor threads wait, with private fd tables, until every one has made its backend: a
/// barrier that the starting thread opens, or keeps shut when a thread could not be spawned.
#[derive(Default)]
struct StartGate {
    state: Mutex<GateState>,
    changed: std::sync::Condvar,
}

#[derive(Default)]
struct GateState {
    /// Threads past making their backend (or dead in it).
    arrived: usize,
    /// `Some(go)` once decided.
    open: Option<bool>,
}

impl StartGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Once `threads` have arrived: lets them on if `go`, else turns them back; at once if not
    /// `go` (no thread waits for one that was never spawned).
    fn open(&self, go: bool, threads: usize) {
        let mut state = self.lock();
        while go && state.arrived < threads {
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state.open = Some(go);
        self.changed.notify_all();
    }

    /// Waits for the decision: whether to go on.
    fn wait_open(&self) -> bool {
        let mut state = self.lock();
        loop {
            if let Some(go) = state.open {
                return go;
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// A thread's arrival at the gate, counted when dropped (so also when the thread panics).
struct Arrival<'a>(&'a StartGate);

impl Drop for Arrival<'_> {
    fn drop(&mut self) {
        self.0.lock().arrived += 1;
        self.0.changed.notify_all();
    }
}
