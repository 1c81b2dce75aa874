//! A worker's UDP socket to the StatsD server: connected, non-blocking.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

use crate::profile::block;
use crate::profile::trace::{self, Notice, Site};

pub struct Client {
    socket: UdpSocket,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> io::Result<Client> {
        let local: SocketAddr = if addr.is_ipv6() {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(local)?;
        socket.connect(addr)?;
        socket.set_nonblocking(true)?;
        Ok(Client { socket })
    }

    /// Sends one datagram; false if it was not sent (refused, buffer full, ...).
    pub fn send(&self, packet: &[u8]) -> bool {
        let sent = match self.socket.send(packet) {
            // A connected UDP socket reports the ICMP "port unreachable" of an earlier
            // datagram on the next send, which then fails without sending: after the
            // StatsD server comes back, that would lose the first datagram (a whole
            // flush interval's counters). The error is about the past: send again, once.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => self.socket.send(packet),
            other => other,
        };
        if sent.is_err() && trace::on() {
            trace::notice(Notice::StatsdSendFailed, Site::Answer);
        }
        match sent {
            Ok(n) => n == packet.len(),
            Err(e) => {
                // A blocking client would have waited here: show it in the block profile.
                if e.kind() == io::ErrorKind::WouldBlock {
                    block::would_block();
                }
                false
            }
        }
    }
}
