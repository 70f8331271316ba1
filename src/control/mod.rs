//! The control socket: how the remote control, the UI and `coolstream ctl` drive the box
//! daemon (docs/INTERFACE.md). A Unix stream socket carrying one JSON object per line each way:
//!
//! ```text
//! {"cmd":"status"}                    {"ok":true,"tuned":"news",...}
//! {"cmd":"channels"}                  {"ok":true,"channels":[...]}
//! {"cmd":"zap","channel":"sport"}     {"ok":true,"tuned":"sport","previous":"news"}
//! {"cmd":"stats"}                     {"ok":true,"channels":[{"continuity":1.0,...}]}
//! {"cmd":"stall","seconds":60}        {"ok":true,...}, then the main loop blocks (a drill)
//! garbage                             {"ok":false,"error":"..."}
//! ```
//!
//! This module owns the request grammar ([`Request`]), the server side ([`server`]: who may
//! connect, how many, how long a line may be) and the client ([`client`], the `ctl` command).
//! What a request does is the daemon's business: the server hands each one over a channel
//! and writes back whatever answer comes.

pub mod client;
pub mod server;

use serde::Deserialize;
use serde_json::{json, Value};

/// Longest request line, newline excluded. A longer one is answered with an error and
/// skipped up to its newline; the connection stays usable.
pub const MAX_LINE: usize = 4096;
/// Connections served at once (a UI, a remote-control bridge, a few `ctl` calls). One more
/// is told the daemon is busy and closed.
pub const MAX_CLIENTS: usize = 8;
/// A connection silent for this long is closed (it holds one of [`MAX_CLIENTS`]).
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);
/// Time the daemon has to answer one request before the client is told it did not.
pub const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Requests waiting for the daemon, across all connections.
pub const REQUEST_QUEUE: usize = 16;

/// One request. Fields a request does not use are ignored (a newer UI may send more).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    Status,
    Channels,
    Zap {
        channel: String,
    },
    Stats,
    /// A fault drill: the daemon answers, then blocks its main loop for `seconds` (default
    /// [`STALL_DEFAULT_S`]), so that systemd's watchdog, which no longer hears from it,
    /// restarts it. Owner and root only, like everything here.
    Stall {
        #[serde(default = "stall_default")]
        seconds: u64,
    },
}

/// How long `stall` blocks when not told: past any sensible `WatchdogSec`.
pub const STALL_DEFAULT_S: u64 = 60;
/// The longest `stall` accepted.
pub const STALL_MAX_S: u64 = 600;

fn stall_default() -> u64 {
    STALL_DEFAULT_S
}

impl Request {
    /// Reads one line (without its newline). The error is a sentence for the client.
    pub fn parse(line: &[u8]) -> Result<Request, String> {
        let text = std::str::from_utf8(line).map_err(|_| "the line is not UTF-8".to_string())?;
        let v: Value = serde_json::from_str(text)
            .map_err(|e| format!("not a JSON object: {e}; expected e.g. {{\"cmd\":\"status\"}}"))?;
        if !v.is_object() {
            return Err("expected a JSON object such as {\"cmd\":\"status\"}".into());
        }
        match v.get("cmd").and_then(Value::as_str) {
            None => return Err("no \"cmd\": expected status, channels, zap or stats".into()),
            Some("status" | "channels" | "zap" | "stats" | "stall") => {}
            Some(other) => {
                return Err(format!(
                    "unknown cmd '{other}': expected status, channels, zap or stats"
                ))
            }
        }
        match serde_json::from_value(v).map_err(|e| format!("bad request: {e}"))? {
            Request::Stall { seconds } if seconds > STALL_MAX_S => {
                Err(format!("stall: at most {STALL_MAX_S} seconds"))
            }
            r => Ok(r),
        }
    }

    /// The line a client sends for this request.
    pub fn to_line(&self) -> String {
        let v = match self {
            Request::Status => json!({"cmd": "status"}),
            Request::Channels => json!({"cmd": "channels"}),
            Request::Zap { channel } => json!({"cmd": "zap", "channel": channel}),
            Request::Stats => json!({"cmd": "stats"}),
            Request::Stall { seconds } => json!({"cmd": "stall", "seconds": seconds}),
        };
        format!("{v}\n")
    }
}

/// `{"ok":false,"error":...}`
pub fn error(message: &str) -> Value {
    json!({"ok": false, "error": message})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_bad_ones_say_why() {
        assert_eq!(Request::parse(br#"{"cmd":"status"}"#), Ok(Request::Status));
        assert_eq!(
            Request::parse(br#"{"cmd":"stall"}"#),
            Ok(Request::Stall {
                seconds: STALL_DEFAULT_S
            })
        );
        assert_eq!(
            Request::parse(br#" {"cmd":"zap","channel":"news"} "#),
            Ok(Request::Zap {
                channel: "news".into()
            })
        );
        for r in [
            Request::Status,
            Request::Channels,
            Request::Stats,
            Request::Zap {
                channel: "a".into(),
            },
            Request::Stall { seconds: 3 },
        ] {
            let line = r.to_line();
            assert_eq!(Request::parse(line.trim_end().as_bytes()), Ok(r));
        }
        let bad: &[(&[u8], &str)] = &[
            (b"garbage", "not a JSON object"),
            (b"[1,2]", "expected a JSON object"),
            (br#"{"cmd":"reboot"}"#, "unknown cmd 'reboot'"),
            (br#"{"command":"status"}"#, "no \"cmd\""),
            (br#"{"cmd":"zap"}"#, "missing field `channel`"),
            (br#"{"cmd":"zap","channel":7}"#, "invalid type"),
            (br#"{"cmd":"stall","seconds":100000}"#, "at most 600"),
            (b"\xff\xfe", "not UTF-8"),
        ];
        for (line, want) in bad {
            let e = Request::parse(line).unwrap_err();
            assert!(e.contains(want), "{line:?}: {e}");
        }
    }
}
