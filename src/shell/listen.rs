//! The listeners: one `SO_REUSEPORT` socket per worker on the public address, and the
//! admin and metrics listeners; a plain start refuses an address in use, `--takeover`
//! joins the running server's group (ARCHITECTURE.md, "Zero-downtime restart").

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Whether the kernel moves the connections queued on a closing listener to another
/// listener of its `SO_REUSEPORT` group (Linux 5.14+), rather than resetting them.
pub(super) const MIGRATE_REQ: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// The line `--takeover` prints when the kernel will not migrate queued connections:
/// `setting` is the content of [`MIGRATE_REQ`] (None: absent, a kernel before 5.14).
pub(super) fn migration_warning(setting: Option<&str>) -> Option<String> {
    let (now, fix) = match setting {
        Some("1") => return None,
        Some(value) => (
            format!("net.ipv4.tcp_migrate_req is {value}"),
            "set it with sysctl -w net.ipv4.tcp_migrate_req=1",
        ),
        None => (
            "this kernel has no net.ipv4.tcp_migrate_req".to_owned(),
            "it needs Linux 5.14+ (sysctl -w net.ipv4.tcp_migrate_req=1)",
        ),
    };
    Some(format!(
        "leftpad: --takeover: {now}: connections still queued on the old process's listeners \
         when it closes them can be reset; {fix}"
    ))
}

/// Binds the (blocking) listener of `--admin` or `--metrics`, with `SO_REUSEPORT` so that
/// a `--takeover` process can join it, after a probe without it (as [`bind_listeners`]
/// does) unless `takeover`.
pub(super) fn bind_side(
    addr: SocketAddr,
    flag: &str,
    takeover: bool,
) -> Result<std::net::TcpListener, String> {
    let failed = |e: io::Error| {
        if e.kind() != io::ErrorKind::AddrInUse {
            format!("cannot listen on {flag} {addr}: {e}")
        } else if takeover {
            format!("cannot listen on {flag} {addr}: the address is already in use by a listener that does not share it (SO_REUSEPORT), such as a leftpad before --takeover existed or another user's; choose another {flag} or {flag} off")
        } else {
            format!("cannot listen on {flag} {addr}: the address is already in use; choose another {flag} or {flag} off")
        }
    };
    let addr = if takeover {
        addr
    } else {
        let probe = bind(addr, false, Blocking::Yes).map_err(failed)?;
        probe.local_addr().map_err(failed)?
    };
    bind(addr, true, Blocking::Yes).map_err(failed)
}

/// Binds one `SO_REUSEPORT` listener per worker on the same address.
///
/// A probe bind without `SO_REUSEPORT` first: it fails if anything already listens there,
/// even another process's reuse-port group, which a plain reuse-port bind would join.
/// With `takeover` there is no probe: joining the running server's group is the point
/// (the kernel lets a process join only a group whose listeners all set `SO_REUSEPORT`,
/// under the same user).
pub(super) fn bind_listeners(
    addr: SocketAddr,
    count: usize,
    takeover: bool,
) -> Result<Vec<std::net::TcpListener>, String> {
    let in_use = |e: io::Error| {
        if e.kind() != io::ErrorKind::AddrInUse {
            format!("cannot listen on {addr}: {e}")
        } else if takeover {
            format!("cannot listen on {addr}: the address is already in use by a listener that does not share it (SO_REUSEPORT): --takeover joins only a leftpad running as the same user")
        } else {
            format!("cannot listen on {addr}: the address is already in use; stop the other server or choose another --listen (or start with --takeover to replace a running leftpad)")
        }
    };
    let mut listeners = Vec::with_capacity(count);
    let mut addr = addr;
    if !takeover {
        let probe = bind(addr, false, Blocking::No).map_err(in_use)?;
        // With port 0 the probe picked the port; every worker must share it.
        addr = probe.local_addr().map_err(in_use)?;
    }
    for _ in 0..count {
        let listener = bind(addr, true, Blocking::No).map_err(in_use)?;
        // Under --takeover with port 0, the first bind picks the port.
        addr = listener.local_addr().map_err(in_use)?;
        listeners.push(listener);
    }
    Ok(listeners)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Blocking {
    Yes,
    No,
}

fn bind(
    addr: SocketAddr,
    reuse_port: bool,
    blocking: Blocking,
) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(blocking == Blocking::No)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Lifts the soft open-file limit to the hard one, as Go and nginx do: each connection
/// is a file descriptor, and 1024 is far below `--max-connections`.
pub(super) fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer,
    // which lives on this stack frame for the duration of both calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_warning_says_what_to_set() {
        assert_eq!(migration_warning(Some("1")), None);
        let off = migration_warning(Some("0")).unwrap();
        assert!(
            off.contains("is 0") && off.contains("can be reset"),
            "{off}"
        );
        assert!(
            off.contains("sysctl -w net.ipv4.tcp_migrate_req=1"),
            "{off}"
        );
        assert!(!off.contains('\n'));
        let absent = migration_warning(None).unwrap();
        assert!(absent.contains("5.14"), "{absent}");
    }

    #[test]
    fn takeover_binds_join_and_plain_ones_probe() {
        let first = bind_listeners("127.0.0.1:0".parse().unwrap(), 2, false).unwrap();
        let addr = first[0].local_addr().unwrap();
        let plain = bind_listeners(addr, 1, false).unwrap_err();
        assert!(plain.contains("already in use"), "{plain}");
        let joined = bind_listeners(addr, 2, true).unwrap();
        assert_eq!(joined[1].local_addr().unwrap(), addr);

        let admin = bind_side("127.0.0.1:0".parse().unwrap(), "--admin", false).unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let plain = bind_side(admin_addr, "--admin", false).unwrap_err();
        assert!(
            plain.contains("--admin") && plain.contains("already in use"),
            "{plain}"
        );
        bind_side(admin_addr, "--admin", true).unwrap();
        // A listener that does not share the port cannot be joined.
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let refused = bind_side(other.local_addr().unwrap(), "--metrics", true).unwrap_err();
        assert!(refused.contains("does not share it"), "{refused}");
    }
}
