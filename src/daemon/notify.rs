//! systemd's readiness and watchdog protocol (`sd_notify`), spoken directly: one datagram per
//! message to the Unix socket named by `NOTIFY_SOCKET` (a path, or `@name` in the abstract
//! namespace).
//!
//! The box daemon sends `READY=1` once its control socket listens and its outputs are bound,
//! `WATCHDOG=1` from its main loop (systemd restarts it when they stop: a wedged runtime stops
//! them), `STATUS=` with the tuned channel, and `STOPPING=1` when it leaves. Outside systemd
//! (no `NOTIFY_SOCKET`) every call does nothing.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Longest message sent (systemd reads far more; a status line needs little).
pub const MAX_NOTIFY_LEN: usize = 1024;

pub struct Notifier {
    sock: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From the environment: `NOTIFY_SOCKET`, and `WATCHDOG_USEC` (with `WATCHDOG_PID`, when
    /// set, naming this process).
    pub fn from_env() -> Notifier {
        let var = std::env::var_os("NOTIFY_SOCKET").filter(|v| !v.is_empty());
        let sock = var.as_ref().and_then(|p| open(p.to_str()?));
        let for_us = std::env::var("WATCHDOG_PID")
            .map(|p| p.parse::<u32>().ok() == Some(std::process::id()))
            .unwrap_or(true);
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|&u| u > 0 && for_us)
            .map(Duration::from_micros);
        if sock.is_none() && var.is_some() {
            log::warn!("NOTIFY_SOCKET is set but unusable; systemd will not hear from us");
        }
        Notifier { sock, watchdog }
    }

    /// A notifier that sends nothing.
    pub fn none() -> Notifier {
        Notifier {
            sock: None,
            watchdog: None,
        }
    }

    pub fn enabled(&self) -> bool {
        self.sock.is_some()
    }

    /// How often to send `WATCHDOG=1`: half systemd's timeout, as sd_watchdog_enabled(3)
    /// advises; `None` when no watchdog is armed.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }

    /// Sends `state` (newline-separated `KEY=VALUE` lines) without waiting. Failures are
    /// logged, never fatal: the daemon works without systemd.
    pub fn send(&self, state: &str) {
        let Some((s, addr)) = &self.sock else { return };
        let msg = &state.as_bytes()[..state.len().min(MAX_NOTIFY_LEN)];
        if let Err(e) = s.send_to_addr(msg, addr) {
            log::debug!("sd_notify {state:?}: {e}");
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={}", one_line(status)));
    }

    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }
}

/// A socket that sends to `NOTIFY_SOCKET`'s address.
fn open(notify_socket: &str) -> Option<(UnixDatagram, std::os::unix::net::SocketAddr)> {
    let addr = socket_addr(notify_socket)?;
    let s = UnixDatagram::unbound().ok()?;
    // Never block the main loop: if the receiver's queue is full, a message is dropped.
    s.set_nonblocking(true).ok()?;
    Some((s, addr))
}

/// A status fits on one line (a newline would start a new assignment).
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// `NOTIFY_SOCKET` as an address: an absolute path, or `@name` for the abstract namespace.
fn socket_addr(s: &str) -> Option<std::os::unix::net::SocketAddr> {
    if let Some(name) = s.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        return std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).ok();
    }
    if s.starts_with('/') {
        return std::os::unix::net::SocketAddr::from_pathname(s).ok();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_arrive_as_datagrams_on_the_named_socket() {
        let dir = std::env::temp_dir().join(format!("cs-notify-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            sock: open(path.to_str().unwrap()),
            watchdog: Some(Duration::from_secs(10)),
        };
        n.ready("tuned: news\nx");
        n.watchdog();
        let mut buf = [0u8; 256];
        let k = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..k], b"READY=1\nSTATUS=tuned: news x");
        let k = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..k], b"WATCHDOG=1");
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(5)));
        // A receiver that stops reading fills its queue; sending then drops, never blocks.
        for _ in 0..10_000 {
            n.watchdog();
        }
        assert!(socket_addr("relative").is_none());
        assert!(socket_addr("@abstract").is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
