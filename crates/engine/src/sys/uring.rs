//! The io_uring backend: completion-based, one ring per reactor thread.
//!
//! - Accept: one multishot accept straight into the ring's fixed-file table (direct descriptors,
//!   `IORING_FILE_INDEX_ALLOC`), so accepted sockets take no process file descriptor and one
//!   process can hold more connections than `RLIMIT_NOFILE` (the kernel caps each table at the
//!   soft limit, so more connections need more rings, i.e. reactors). A multishot accept writes
//!   every peer's address to the same place, so when peer addresses are wanted
//!   ([`UringConfig::peer_addresses`]) a few single-shot accepts, each with its own address
//!   buffer, stay in flight instead.
//! - Receive: one multishot recv per connection drawing from a provided-buffer ring: the kernel
//!   picks a buffer only when bytes arrive, so an idle connection holds none; the reactor hands
//!   it back right after parsing. `ENOBUFS` (ring empty) ends the recv without losing data; it
//!   is re-armed at the next turn, once the turn's buffers are back.
//! - Send: at most one `sendmsg` in flight per connection, straight from its write queue, which
//!   pins what the kernel reads until the completion. A turn's submissions go in with one
//!   `io_uring_enter`, which also waits (with the timer wheel's timeout).
//! - Close: cancel the recv, close the direct descriptor; the token is released (and may be
//!   reused) only once every operation on it has completed, so no completion of a connection's
//!   previous life can reach the next one on the same token. The cancel names the recv by its
//!   `user_data`, which holds token and slot, and goes in before the close that frees the slot,
//!   so it cannot match a later connection either.

use std::io::{self, IoSlice};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use socket2::{SockAddr, SockAddrStorage};

use super::{Backend, Flushed, IoEvent, Sockets, Wake};
use crate::txqueue::TxQueue;

/// Sizes of one reactor's ring and buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UringConfig {
    /// Submission queue entries (the completion queue is four times larger).
    pub entries: u32,
    /// Slots of the fixed-file table: the most connections this reactor holds.
    pub files: u32,
    /// Provided receive buffers (a power of two, at most 32768).
    pub buffers: u16,
    /// Bytes per provided buffer.
    pub buffer_size: u32,
    /// Report each accepted connection's peer address (per-IP limits need it): single-shot
    /// accepts, [`PEER_ACCEPTS`] in flight, instead of one multishot accept.
    pub peer_addresses: bool,
}

impl Default for UringConfig {
    fn default() -> UringConfig {
        UringConfig {
            entries: 4096,
            files: 20_000,
            buffers: 512,
            buffer_size: 16 << 10,
            peer_addresses: false,
        }
    }
}

/// Single-shot accepts in flight when peer addresses are wanted: enough that a burst of
/// connections never waits for a turn of the loop between two accepts.
pub const PEER_ACCEPTS: usize = 8;

/// A connection's socket, and all the backend keeps per connection: its slot in the ring's
/// fixed-file table (the low 24 bits; the kernel's table holds at most 2^20) and the operations
/// in flight on it (the high 8 bits). It lives in the reactor's connection entry, which
/// [`Sockets`] lends back while completions are reaped.
#[derive(Debug)]
pub struct Direct(u32);

const SLOT_BITS: u32 = 24;
const SLOT_MASK: u32 = (1 << SLOT_BITS) - 1;

impl Direct {
    fn new(slot: u32) -> Direct {
        Direct(slot & SLOT_MASK)
    }

    fn slot(&self) -> u32 {
        self.0 & SLOT_MASK
    }

    fn ops(&self) -> u8 {
        (self.0 >> SLOT_BITS) as u8
    }

    fn set_ops(&mut self, ops: u8) {
        self.0 = self.slot() | u32::from(ops) << SLOT_BITS;
    }
}

// user_data: the operation (8 bits) and the token (or an accept's index).
const ACCEPT: u64 = 1 << 56;
const RECV: u64 = 2 << 56;
const SEND: u64 = 3 << 56;
const WAKE: u64 = 4 << 56;
const IGNORE: u64 = 5 << 56;
const SHUTDOWN: u64 = 6 << 56;
const OP_MASK: u64 = 0xFF << 56;
/// Tokens must fit their field of `user_data`.
const MAX_TOKENS: usize = 1 << 24;
const TOKEN_MASK: u64 = MAX_TOKENS as u64 - 1;

/// Per-connection state: registered and not closed (a re-arm must never reach a released
/// connection, whose fixed-file slot may already belong to another one).
const LIVE: u8 = 1;
/// Operations in flight.
const RECV_ARMED: u8 = 2;
const SEND_IN_FLIGHT: u8 = 4;
const CLOSING: u8 = 8;
/// The kernel runs a shutdown in a worker thread, so a close submitted behind it can free the
/// slot first and the shutdown then hit the next connection accepted into it: the close waits
/// for the shutdown's completion.
const SHUTDOWN_IN_FLIGHT: u8 = 16;
const CLOSE_DEFERRED: u8 = 32;

const BUFFER_GROUP: u16 = 0;

/// Completions taken per turn, as the epoll backend takes at most 1,024 events: a burst (a
/// ramp of accepts, a fanout's sends) leaves no per-reactor vector sized by its peak, and
/// timers and the inbox get their turn between chunks.
const MAX_COMPLETIONS: usize = 1024;

/// One reactor's ring, listener, provided buffers and waker.
pub struct Uring {
    ring: IoUring,
    listener: Option<TcpListener>,
    accepts: Accepts,
    buffers: BufRing,
    waker: Arc<EventFd>,
    /// Tokens whose multishot recv ended and must be armed again.
    rearm: Vec<usize>,
    /// Completions reaped in one wait (at most [`MAX_COMPLETIONS`]), allocated at start like
    /// epoll's event list.
    completed: Vec<cqueue::Entry>,
}

impl Uring {
    /// Sets up a ring for `listener` (bound and listening), on the thread that will use it.
    /// Errors say what the host lacks.
    pub fn new(listener: TcpListener, config: UringConfig) -> io::Result<Uring> {
        let ring = build_ring(config.entries)?;
        register(&ring, &config)?;
        let buffers = BufRing::new(&ring, config.buffers, config.buffer_size)?;
        let waker = Arc::new(EventFd::new()?);
        let mut uring = Uring {
            ring,
            listener: Some(listener),
            accepts: Accepts::new(config.peer_addresses),
            buffers,
            waker,
            rearm: Vec::new(),
            completed: Vec::with_capacity(MAX_COMPLETIONS),
        };
        let wake = opcode::PollAdd::new(types::Fd(uring.waker.0.as_raw_fd()), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(WAKE);
        uring.push(wake)?;
        uring.resume_accepting();
        Ok(uring)
    }

    /// Queues a submission, submitting first if the queue is full.
    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every entry pushed here points only at memory that outlives its operation:
            // the listener, eventfd and accept address buffers (owned by self and dropped after
            // the ring), a boxed write queue kept until the send completes, or nothing.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    /// The `user_data` of operation `op` on `token`.
    fn user_data(op: u64, token: usize) -> u64 {
        op | token as u64 & TOKEN_MASK
    }

    fn arm_recv(&mut self, token: usize, socket: &mut Direct) -> io::Result<()> {
        let recv = opcode::RecvMulti::new(types::Fixed(socket.slot()), BUFFER_GROUP)
            .build()
            .user_data(Self::user_data(RECV, token));
        self.push(recv)?;
        socket.set_ops(socket.ops() | RECV_ARMED);
        Ok(())
    }

    /// Whether a closing connection has nothing left in flight.
    fn released(socket: &mut Direct) -> bool {
        let ops = socket.ops();
        if ops & CLOSING != 0 && ops & (RECV_ARMED | SEND_IN_FLIGHT | SHUTDOWN_IN_FLIGHT) == 0 {
            socket.set_ops(0);
            return true;
        }
        false
    }

    fn on_completion(
        &mut self,
        cqe: cqueue::Entry,
        events: &mut Vec<IoEvent<Direct>>,
        sockets: &mut dyn Sockets<Direct>,
    ) {
        let (user_data, result, flags) = (cqe.user_data(), cqe.result(), cqe.flags());
        let token = (user_data & TOKEN_MASK) as usize;
        let op = user_data & OP_MASK;
        match op {
            ACCEPT => {
                let peer = self.accepts.completed(token, cqueue::more(flags), result);
                if result >= 0 {
                    events.push(IoEvent::Accepted(Direct::new(result as u32), peer));
                    self.resume_accepting();
                } else if result != -libc::ECANCELED {
                    events.push(IoEvent::AcceptFailed(io::Error::from_raw_os_error(-result)));
                }
            }
            RECV | SEND | SHUTDOWN => {
                // A connection's operations all complete before its entry is released.
                if let Some(socket) = sockets.socket(token) {
                    self.on_connection_completion(op, token, socket, result, flags, events);
                }
            }
            WAKE => {
                self.waker.drain();
                events.push(IoEvent::Woken);
                if !cqueue::more(flags) {
                    let wake = opcode::PollAdd::new(
                        types::Fd(self.waker.0.as_raw_fd()),
                        libc::POLLIN as u32,
                    )
                    .multi(true)
                    .build()
                    .user_data(WAKE);
                    let _ = self.push(wake);
                }
            }
            _ => {}
        }
    }

    /// A completion of `token`'s receive, send or shutdown.
    fn on_connection_completion(
        &mut self,
        op: u64,
        token: usize,
        socket: &mut Direct,
        result: i32,
        flags: u32,
        events: &mut Vec<IoEvent<Direct>>,
    ) {
        match op {
            RECV => {
                let more = cqueue::more(flags);
                if !more {
                    socket.set_ops(socket.ops() & !RECV_ARMED);
                }
                let closing = socket.ops() & CLOSING != 0;
                if result > 0 {
                    let buffer = cqueue::buffer_select(flags)
                        .expect("a recv from a buffer group names its buffer");
                    events.push(IoEvent::Received {
                        token,
                        buffer,
                        len: result as u32,
                    });
                    if !more && !closing {
                        self.rearm.push(token);
                    }
                } else if result == -libc::ENOBUFS {
                    // Every buffer is out: the data waits in the socket; ask again next turn.
                    if !closing {
                        self.rearm.push(token);
                    }
                } else if !closing {
                    // 0: the peer closed; otherwise an error such as a reset.
                    events.push(IoEvent::ReadClosed(token));
                }
            }
            SEND => {
                socket.set_ops(socket.ops() & !SEND_IN_FLIGHT);
                events.push(IoEvent::Sent { token, result });
            }
            _ => {
                let ops = socket.ops() & !SHUTDOWN_IN_FLIGHT;
                socket.set_ops(ops & !CLOSE_DEFERRED);
                if ops & CLOSE_DEFERRED != 0 {
                    let close = opcode::Close::new(types::Fixed(socket.slot()))
                        .build()
                        .user_data(IGNORE);
                    let _ = self.push(close);
                }
            }
        }
        if Self::released(socket) {
            events.push(IoEvent::Released(token));
        }
    }
}

/// Checks, with a throwaway ring, that this host can run the backend with `config`.
pub fn probe(config: &UringConfig) -> io::Result<()> {
    // The kernel tears a ring down partly through task work queued to the thread that made it,
    // which interrupts that thread's next blocking socket call with a timeout (EINTR). The
    // caller's thread is not ours (an embedding application's, a test's): probe on a thread of
    // our own that ends with it.
    std::thread::scope(|scope| {
        scope
            .spawn(|| probe_here(config))
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the io_uring probe panicked")))
    })
}

fn probe_here(config: &UringConfig) -> io::Result<()> {
    // A kernel too old for multishot recv (6.0) accepts the ring but fails the recv later.
    let mut uname = std::mem::MaybeUninit::<libc::utsname>::uninit();
    // SAFETY: uname(2) fills the struct it is given.
    let release = unsafe {
        libc::uname(uname.as_mut_ptr());
        std::ffi::CStr::from_ptr(uname.assume_init_ref().release.as_ptr())
            .to_string_lossy()
            .into_owned()
    };
    let major: u32 = release
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if major < 6 {
        return Err(io::Error::other(format!(
            "Linux {release} is too old: the io_uring backend needs 6.0+"
        )));
    }
    let ring = build_ring(config.entries.min(64))?;
    register(&ring, config)?;
    BufRing::new(&ring, config.buffers.min(8), 4096).map(drop)
}

fn build_ring(entries: u32) -> io::Result<IoUring> {
    IoUring::builder()
        .setup_cqsize(entries * 4)
        .setup_single_issuer()
        .setup_coop_taskrun()
        .setup_defer_taskrun()
        .build(entries)
        .map_err(|e| explain(e, "create an io_uring"))
}

fn register(ring: &IoUring, config: &UringConfig) -> io::Result<()> {
    if !ring.params().is_feature_nodrop() {
        return Err(io::Error::other(
            "io_uring without IORING_FEAT_NODROP (Linux 5.5+ needed)",
        ));
    }
    ring.submitter()
        .register_files_sparse(config.files)
        .map_err(|e| {
            explain(
                e,
                &format!(
                    "register a fixed-file table of {} slots (capped by the soft RLIMIT_NOFILE)",
                    config.files
                ),
            )
        })
}

/// Turns a setup error into one that says what to change.
fn explain(e: io::Error, what: &str) -> io::Error {
    let hint = match e.raw_os_error() {
        Some(libc::ENOSYS) => "the kernel has no io_uring",
        Some(libc::EPERM) => {
            "io_uring is disabled (sysctl kernel.io_uring_disabled) or blocked by seccomp"
        }
        Some(libc::ENOMEM) => "not enough locked memory (raise RLIMIT_MEMLOCK, e.g. ulimit -l)",
        Some(libc::EMFILE) => "RLIMIT_NOFILE is too low for the requested table",
        Some(libc::EINVAL) => "the kernel is too old for this feature (Linux 6.0+ is needed)",
        _ => "",
    };
    io::Error::new(
        e.kind(),
        format!(
            "cannot {what}: {e}{}{hint}",
            if hint.is_empty() { "" } else { "; " }
        ),
    )
}

impl Backend for Uring {
    type Socket = Direct;

    const WRITES_NOW: bool = false;

    fn wait(
        &mut self,
        events: &mut Vec<IoEvent<Direct>>,
        timeout: Option<Duration>,
        sockets: &mut dyn Sockets<Direct>,
    ) -> io::Result<()> {
        // Taken and put back, so the list keeps its capacity from turn to turn.
        let mut rearm = std::mem::take(&mut self.rearm);
        for token in rearm.drain(..) {
            if let Some(socket) = sockets.socket(token)
                && socket.ops() & (LIVE | RECV_ARMED) == LIVE
            {
                self.arm_recv(token, socket)?;
            }
        }
        self.rearm = rearm;
        let submitted = match timeout {
            Some(Duration::ZERO) => self.ring.submit(),
            Some(timeout) => {
                let timespec = types::Timespec::from(timeout);
                let args = types::SubmitArgs::new().timespec(&timespec);
                self.ring.submitter().submit_with_args(1, &args)
            }
            None => self.ring.submit_and_wait(1),
        };
        match submitted {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) => {}
            Err(e) => return Err(e),
        }
        let mut completed = std::mem::take(&mut self.completed);
        // What is left stays in the ring for the next turn, which then does not block.
        completed.extend(self.ring.completion().take(MAX_COMPLETIONS));
        for cqe in completed.drain(..) {
            self.on_completion(cqe, events, sockets);
        }
        self.completed = completed;
        Ok(())
    }

    fn accept(&mut self) -> io::Result<Option<(Direct, Option<SocketAddr>)>> {
        // Completions bring accepted sockets; this backend never reports `Acceptable`.
        Ok(None)
    }

    fn resume_accepting(&mut self) {
        let Some(listener) = &self.listener else {
            return;
        };
        let listener = types::Fd(listener.as_raw_fd());
        while let Some((index, accept)) = self.accepts.next_idle(listener) {
            if self.push(accept.user_data(ACCEPT | index as u64)).is_err() {
                return;
            }
            self.accepts.armed(index);
        }
    }

    fn stop_accepting(&mut self) {
        if self.listener.take().is_some() {
            for index in self.accepts.in_flight() {
                let cancel = opcode::AsyncCancel::new(ACCEPT | index as u64);
                let _ = self.push(cancel.build().user_data(IGNORE));
            }
        }
    }

    fn register(&mut self, socket: &mut Direct, token: usize) -> io::Result<()> {
        if token >= MAX_TOKENS {
            return Err(io::Error::other(format!(
                "an io_uring reactor holds at most {MAX_TOKENS} connections"
            )));
        }
        socket.set_ops(LIVE);
        self.arm_recv(token, socket)
    }

    fn read(_socket: &mut Direct, _buf: &mut [u8]) -> io::Result<usize> {
        // Completion backends never report `Readable`.
        Err(io::ErrorKind::Unsupported.into())
    }

    fn received(&mut self, buffer: u16, len: u32) -> &mut [u8] {
        self.buffers.get(buffer, len)
    }

    fn release_buffer(&mut self, buffer: u16) {
        self.buffers.recycle(buffer);
    }

    fn write_now(_socket: &mut Direct, _bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        Ok(0)
    }

    fn flush(
        &mut self,
        token: usize,
        socket: &mut Direct,
        queue: &mut TxQueue,
    ) -> io::Result<Flushed> {
        if queue.is_empty() {
            return Ok(Flushed::Done);
        }
        if queue.is_sending() {
            return Ok(Flushed::Pending);
        }
        let header = queue.start_send();
        let user_data = Self::user_data(SEND, token);
        let flags = libc::MSG_NOSIGNAL;
        // SAFETY: start_send just filled the header and its slices; they and the bytes they
        // point to stay valid and in place until finish_send, after this send completes.
        let only = unsafe { ((*header).msg_iovlen == 1).then(|| *(*header).msg_iov) };
        // One chunk (the common case) goes out as a plain send: no message header to import.
        let send = match only {
            Some(slice) => opcode::Send::new(
                types::Fixed(socket.slot()),
                slice.iov_base as *const u8,
                slice.iov_len as u32,
            )
            .flags(flags)
            .build(),
            None => opcode::SendMsg::new(types::Fixed(socket.slot()), header)
                .flags(flags as u32)
                .build(),
        }
        .user_data(user_data);
        if let Err(e) = self.push(send) {
            queue.finish_send(0);
            return Err(e);
        }
        socket.set_ops(socket.ops() | SEND_IN_FLIGHT);
        Ok(Flushed::Pending)
    }

    fn shutdown_write(&mut self, token: usize, socket: &mut Direct) {
        let shutdown = opcode::Shutdown::new(types::Fixed(socket.slot()), libc::SHUT_WR)
            .build()
            .user_data(Self::user_data(SHUTDOWN, token));
        if self.push(shutdown).is_ok() {
            socket.set_ops(socket.ops() | SHUTDOWN_IN_FLIGHT);
        }
    }

    fn close(&mut self, token: usize, socket: &mut Direct) -> bool {
        let close = opcode::Close::new(types::Fixed(socket.slot()))
            .build()
            .user_data(IGNORE);
        if token == usize::MAX {
            // Never registered: nothing in flight.
            let _ = self.push(close);
            return true;
        }
        let ops = (socket.ops() & !LIVE) | CLOSING;
        socket.set_ops(ops);
        if ops & RECV_ARMED != 0 {
            let recv = Self::user_data(RECV, token);
            let _ = self.push(opcode::AsyncCancel::new(recv).build().user_data(IGNORE));
        }
        if ops & SHUTDOWN_IN_FLIGHT != 0 {
            socket.set_ops(ops | CLOSE_DEFERRED);
            return false;
        }
        let _ = self.push(close);
        Self::released(socket)
    }

    fn waker(&self) -> Arc<dyn Wake> {
        self.waker.clone()
    }
}

/// The accepts in flight on the listener: one multishot accept, or [`PEER_ACCEPTS`] single-shot
/// accepts with an address buffer each (a multishot accept would write every peer's address
/// to one place, overwritten before it is read).
struct Accepts {
    /// Bit `i`: accept `i` is in flight (the multishot accept is accept 0).
    armed: u8,
    /// Peer address buffers, one per single-shot accept; `None` for the multishot accept.
    peers: Option<Box<[PeerAddr; PEER_ACCEPTS]>>,
}

/// Where the kernel writes one accepted peer's address.
struct PeerAddr {
    storage: SockAddrStorage,
    len: libc::socklen_t,
}

impl Accepts {
    fn new(peer_addresses: bool) -> Accepts {
        let peers = peer_addresses.then(|| {
            Box::new(std::array::from_fn(|_| PeerAddr {
                storage: SockAddrStorage::zeroed(),
                len: 0,
            }))
        });
        Accepts { armed: 0, peers }
    }

    /// The next accept to arm on `listener`, if one is idle.
    fn next_idle(&mut self, listener: types::Fd) -> Option<(usize, squeue::Entry)> {
        let Some(peers) = &mut self.peers else {
            let multishot = opcode::AcceptMulti::new(listener).allocate_file_index(true);
            return (self.armed == 0).then(|| (0, multishot.build()));
        };
        let index = (0..PEER_ACCEPTS).find(|i| self.armed & 1 << i == 0)?;
        let peer = &mut peers[index];
        peer.len = peer.storage.size_of();
        let accept =
            opcode::Accept::new(listener, (&raw mut peer.storage).cast(), &raw mut peer.len)
                .file_index(Some(types::DestinationSlot::auto_target()));
        Some((index, accept.build()))
    }

    fn armed(&mut self, index: usize) {
        self.armed |= 1 << index;
    }

    fn in_flight(&self) -> impl Iterator<Item = usize> + use<> {
        let armed = self.armed;
        (0..PEER_ACCEPTS).filter(move |i| armed & 1 << i != 0)
    }

    /// Accept `index` completed with `result` (`more`: a multishot accept goes on); the peer's
    /// address when this is a single-shot accept that succeeded.
    fn completed(&mut self, index: usize, more: bool, result: i32) -> Option<SocketAddr> {
        if index >= PEER_ACCEPTS {
            return None;
        }
        if !more {
            self.armed &= !(1 << index);
        }
        let peer = self
            .peers
            .as_mut()
            .filter(|_| result >= 0)?
            .get_mut(index)?;
        let storage = std::mem::replace(&mut peer.storage, SockAddrStorage::zeroed());
        // SAFETY: the kernel wrote a socket address of `len` bytes into `storage` when this
        // accept succeeded (it is not re-armed before this read).
        unsafe { SockAddr::new(storage, peer.len) }.as_socket()
    }
}

/// An eventfd that other threads write to wake the ring's multishot poll.
struct EventFd(OwnedFd);

impl EventFd {
    fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd(2) has no memory arguments; a non-negative result is a new descriptor
        // that we then own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a valid descriptor nobody else owns.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Resets the counter so the poll fires again on the next wake.
    fn drain(&self) {
        let mut value = 0u64;
        // SAFETY: reads 8 bytes into a local u64, as eventfd(2) requires.
        unsafe { libc::read(self.0.as_raw_fd(), (&mut value as *mut u64).cast(), 8) };
    }
}

impl Wake for EventFd {
    fn wake(&self) {
        let one = 1u64;
        // SAFETY: writes 8 bytes from a local u64, as eventfd(2) requires.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

/// The provided-buffer ring: a page-aligned ring of buffer descriptors shared with the kernel,
/// and the buffers themselves in one allocation.
struct BufRing {
    /// The descriptor ring (mmap'd, page aligned, registered with the kernel).
    ring: *mut types::BufRingEntry,
    entries: u16,
    /// Our next tail position (published to the kernel in `recycle`).
    tail: u16,
    memory: Box<[u8]>,
    buffer_size: u32,
}

impl BufRing {
    fn new(uring: &IoUring, entries: u16, buffer_size: u32) -> io::Result<BufRing> {
        if !entries.is_power_of_two() || entries > 32768 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "uring buffers must be a power of two up to 32768",
            ));
        }
        let ring_bytes = entries as usize * std::mem::size_of::<types::BufRingEntry>();
        // SAFETY: an anonymous private mapping with no address hint; the result is checked.
        let ring = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ring == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut buffers = BufRing {
            ring: ring.cast(),
            entries,
            tail: 0,
            // Filled (not calloc'ed lazily) so the pages are resident from the start: this is the
            // reactor's fixed receive memory, and no page fault lands on the hot path.
            memory: vec![0xAAu8; entries as usize * buffer_size as usize].into_boxed_slice(),
            buffer_size,
        };
        // SAFETY: the descriptor ring is page aligned (mmap) and `entries` long; it and the
        // buffers stay mapped until the BufRing drops, which happens after the io_uring closes
        // (field order in Uring), ending the registration.
        unsafe {
            uring
                .submitter()
                .register_buf_ring_with_flags(ring as u64, entries, BUFFER_GROUP, 0)
                .map_err(|e| explain(e, "register the provided-buffer ring"))?;
        }
        for bid in 0..entries {
            buffers.recycle(bid);
        }
        Ok(buffers)
    }

    /// The first `len` bytes of buffer `bid`, which the kernel has filled.
    fn get(&mut self, bid: u16, len: u32) -> &mut [u8] {
        let start = bid as usize * self.buffer_size as usize;
        &mut self.memory[start..start + len.min(self.buffer_size) as usize]
    }

    /// Gives buffer `bid` back to the kernel.
    fn recycle(&mut self, bid: u16) {
        let mask = self.entries - 1;
        // SAFETY: the index is masked into the ring; the address and length name buffer `bid`
        // inside `memory`, which outlives the registration; the tail is published with release
        // ordering after the descriptor is written, as the kernel's protocol requires.
        unsafe {
            let entry = &mut *self.ring.add((self.tail & mask) as usize);
            entry.set_addr(
                self.memory
                    .as_ptr()
                    .add(bid as usize * self.buffer_size as usize) as u64,
            );
            entry.set_len(self.buffer_size);
            entry.set_bid(bid);
            self.tail = self.tail.wrapping_add(1);
            let tail = types::BufRingEntry::tail(self.ring) as *const std::sync::atomic::AtomicU16;
            (*tail).store(self.tail, std::sync::atomic::Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`. The Uring's ring field is dropped
        // first (declared first), which ends the kernel's use of it.
        unsafe {
            libc::munmap(
                self.ring.cast(),
                self.entries as usize * std::mem::size_of::<types::BufRingEntry>(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many of `rounds` blocking reads with a timeout, each right after `probe`, fail
    /// with EINTR instead of timing out.
    fn interrupted_reads(rounds: usize, probe: fn(&UringConfig) -> io::Result<()>) -> usize {
        use std::io::Read;
        let (mut a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_read_timeout(Some(Duration::from_millis(2))).unwrap();
        let config = UringConfig::default();
        (0..rounds)
            .filter(|_| {
                probe(&config).unwrap();
                let error = a.read(&mut [0u8; 8]).unwrap_err();
                error.kind() == io::ErrorKind::Interrupted
            })
            .count()
    }

    #[test]
    fn probing_never_interrupts_the_caller_s_blocking_calls() {
        // Probing on the caller's own thread interrupted most of them (34 of 50 here).
        assert_eq!(interrupted_reads(50, probe), 0);
    }

    fn ring() -> Uring {
        ring_with(TcpListener::bind("127.0.0.1:0").unwrap(), 16)
    }

    /// A ring of 8 submissions (so 32 completions) and 8 provided buffers of 64 bytes.
    fn ring_with(listener: TcpListener, files: u32) -> Uring {
        let config = UringConfig {
            entries: 8,
            files,
            buffers: 8,
            buffer_size: 64,
            peer_addresses: false,
        };
        Uring::new(listener, config).expect("io_uring is available on the test host")
    }

    /// The test's connection table: token `i` is `sockets[i]`.
    impl Sockets<Direct> for Vec<Direct> {
        fn socket(&mut self, token: usize) -> Option<&mut Direct> {
            self.get_mut(token)
        }
    }

    #[test]
    fn more_completions_than_the_queue_holds_and_than_buffers_all_arrive() {
        use std::io::Write;
        const CLIENTS: usize = 100;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut uring = ring_with(listener, 128);
        let mut clients: Vec<_> = (0..CLIENTS)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        let mut events = Vec::new();
        let mut sockets = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sockets.len() < CLIENTS && std::time::Instant::now() < deadline {
            let wait = Some(Duration::from_millis(10));
            uring.wait(&mut events, wait, &mut sockets).unwrap();
            for event in events.drain(..) {
                if let IoEvent::Accepted(socket, _) = event {
                    sockets.push(socket);
                }
            }
        }
        assert_eq!(sockets.len(), CLIENTS);
        for (token, socket) in sockets.iter_mut().enumerate() {
            uring.register(socket, token).unwrap();
        }
        // All at once: 100 receive completions for a 32-entry queue, and 8 buffers for them.
        for (i, client) in clients.iter_mut().enumerate() {
            client.write_all(&[i as u8; 40]).unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
        let mut received = vec![0usize; CLIENTS];
        let mut overflowed = false;
        while received.iter().any(|&n| n < 40) && std::time::Instant::now() < deadline {
            let wait = Some(Duration::from_millis(10));
            uring.wait(&mut events, wait, &mut sockets).unwrap();
            overflowed |= uring.ring.submission().cq_overflow();
            for event in events.drain(..) {
                match event {
                    IoEvent::Received { token, buffer, len } => {
                        let bytes = uring.received(buffer, len);
                        assert!(bytes.iter().all(|&b| b == token as u8), "token {token}");
                        received[token] += bytes.len();
                        uring.release_buffer(buffer);
                    }
                    IoEvent::ReadClosed(token) => panic!("connection {token} closed"),
                    _ => {}
                }
            }
        }
        assert_eq!(received, vec![40; CLIENTS], "every byte, none twice");
        assert!(overflowed, "the completion queue overflowed at least once");
    }

    #[test]
    fn user_data_carries_operation_and_token() {
        let token = MAX_TOKENS - 1;
        let user_data = Uring::user_data(SHUTDOWN, token);
        assert_eq!(user_data & OP_MASK, SHUTDOWN);
        assert_eq!((user_data & TOKEN_MASK) as usize, token);
    }

    #[test]
    fn a_direct_socket_keeps_its_slot_and_operations_apart() {
        let slot = (1 << 20) - 1; // the kernel's largest fixed-file slot
        let mut socket = Direct::new(slot);
        assert_eq!((socket.slot(), socket.ops()), (slot, 0));
        socket.set_ops(LIVE | RECV_ARMED | CLOSE_DEFERRED);
        assert_eq!(socket.slot(), slot);
        assert_eq!(socket.ops(), LIVE | RECV_ARMED | CLOSE_DEFERRED);
        socket.set_ops(0xFF);
        assert_eq!((socket.slot(), socket.ops()), (slot, 0xFF));
        assert_eq!(size_of::<Direct>(), 4, "no bigger than a file descriptor");
    }

    #[test]
    fn tokens_past_the_user_data_field_are_refused() {
        let mut uring = ring();
        let error = uring.register(&mut Direct::new(0), MAX_TOKENS).unwrap_err();
        assert!(error.to_string().contains("at most"), "{error}");
    }
}
