//! The descriptor limit and private descriptor tables: how one process holds more sockets than
//! `RLIMIT_NOFILE` allows one table (each reactor or load thread gets a table of its own).

use std::io;

/// The soft `RLIMIT_NOFILE` now in force (it also caps an io_uring fixed-file table); 1,024 if
/// it cannot be read.
pub fn fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) only writes the struct it is given, which is valid and writable.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    limit.rlim_cur
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (epoll sockets and io_uring tables are both
/// bounded by it); returns the limit now in force.
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) only writes the struct it is given, which is valid and writable.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit(2) only reads the struct, a valid rlimit whose soft value does not
        // exceed the hard one.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}

/// Gives the calling thread its own copy of the descriptor table (`unshare(CLONE_FILES)`), so
/// the descriptors it opens from now on count against `RLIMIT_NOFILE` in its table only. The
/// thread must keep those descriptors to itself (an event loop never shares its sockets); they
/// close when it exits.
pub fn unshare_fd_table() -> io::Result<()> {
    // SAFETY: unshare(2) takes no pointers and changes only the calling thread's table, which
    // keeps a copy of every descriptor the thread could use before.
    if unsafe { libc::unshare(libc::CLONE_FILES) } != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("unshare(CLONE_FILES) for a private fd table: {e}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_raised_to_the_hard_one() {
        let raised = raise_fd_limit().unwrap();
        assert_eq!(raised, fd_limit());
        assert!(raised >= 1024);
    }

    /// Whether the process's (main thread's) table has `path` open while a thread that may have
    /// unshared its table holds it open.
    fn seen_by_the_process(unshare: bool, path: &std::path::Path) -> bool {
        let (opened_tx, opened_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let owned = path.to_owned();
        let thread = std::thread::spawn(move || {
            if unshare {
                unshare_fd_table().unwrap();
            }
            let file = std::fs::File::create(&owned).unwrap();
            opened_tx.send(()).unwrap();
            done_rx.recv().unwrap();
            drop(file);
        });
        opened_rx.recv().unwrap();
        let seen = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == path));
        done_tx.send(()).unwrap();
        thread.join().unwrap();
        seen
    }

    #[test]
    fn a_private_table_keeps_its_descriptors_out_of_the_process_table() {
        let path = std::env::temp_dir().join(format!("clarion-host-fd-{}", std::process::id()));
        assert!(
            seen_by_the_process(false, &path),
            "the control: a shared table shows it"
        );
        assert!(!seen_by_the_process(true, &path));
        std::fs::remove_file(&path).unwrap();
    }
}
