//! The box daemon's configuration: a TOML file (`coolstream run --config FILE`), then command-line
//! flags over it, checked whole before anything starts.
//!
//! This module owns the file's schema, its defaults and its validation. Every key is known
//! (an unknown one is refused), every value is checked where it is read, and an error names
//! the file, the line and column, and what was expected, so a box never starts half-configured.
//!
//! ```toml
//! log_level = "info"                        # error, warn, info, debug, trace
//! control_socket = "/run/coolstream/control.sock"
//! listen = "[::]:7000"                      # peers reach the tuned channel here (port 0: any;
//!                                           # [::] is IPv6 and IPv4 both)
//! nat = "auto"                              # ask the home router to forward `listen`'s port:
//!                                           # auto, upnp, pcp, natpmp or off
//! tune = "news"                             # played at start (default: the first channel)
//!
//! [outputs]
//! http = "127.0.0.1:8080"                   # players: /ch/NAME.ts, /playlist.m3u
//! udp = "udp://239.255.0.1:5000?ttl=1"      # the hardware decoder (udp:// or rtp://)
//!
//! [limits]
//! upload_kbps = 3000                        # this box's uplink share for the swarm
//! ring_bytes = 16777216                     # segment store of the tuned channel
//! memory_limit = 50331648                   # all the daemon may hold (48 MiB; see below)
//! max_partners = 8
//! max_http_clients = 8
//!
//! [[channel]]
//! name = "news"
//! id = "<64 hex characters: the source's public key>"
//! bootstrap = ["192.0.2.10:7000"]
//! number = 1                                # optional
//! logo = "http://192.0.2.10/news.png"       # optional
//! ```
//!
//! `memory_limit` bounds the ring and every budget derived from the limits
//! ([`MemoryPlan`](crate::daemon::memory::MemoryPlan)); a file whose plan does not fit is
//! refused at the key that breaks it ([`check_memory`]).

use crate::daemon::memory::{MemoryPlan, DEFAULT_MEMORY_LIMIT, MEMORY_LIMIT_RANGE};
use crate::nat::Method as NatMethod;
use crate::output::http::MAX_HTTP_CLIENTS;
use crate::output::udp::UdpOut;
use crate::proto::config::PARTNER_CEILING;
use crate::proto::ChannelId;
use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Channels one box carries at most (each standby channel keeps a small membership view).
pub const MAX_CHANNELS: usize = 64;
/// Bootstrap addresses one channel lists at most.
pub const MAX_BOOTSTRAP: usize = 16;
/// Longest channel name (names appear in URLs: `/ch/NAME.ts`).
pub const MAX_NAME_LEN: usize = 32;
/// Longest logo URL kept.
pub const MAX_LOGO_LEN: usize = 512;
/// A config file larger than this is refused before it is read whole.
pub const MAX_CONFIG_BYTES: u64 = 256 * 1024;
/// The tuned channel's segment store, when the file does not say (two minutes of a
/// 768 kbit/s channel, with room for rate peaks).
pub const DEFAULT_RING_BYTES: u64 = 16 * 1024 * 1024;
/// Smallest and largest ring a box may be given.
pub const RING_BYTES_RANGE: (u64, u64) = (1024 * 1024, 1024 * 1024 * 1024);
/// Default upload cap, kbit/s (about four times a 768 kbit/s channel).
pub const DEFAULT_UPLOAD_KBPS: u64 = crate::daemon::DEFAULT_UPLOAD_KBPS;
pub const UPLOAD_KBPS_RANGE: (u64, u64) = (64, 10_000_000);
/// The control socket when neither the file nor a flag names one.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/coolstream/control.sock";

/// Log verbosity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn parse(s: &str) -> Result<LogLevel, String> {
        Ok(match s {
            "error" => LogLevel::Error,
            "warn" => LogLevel::Warn,
            "info" => LogLevel::Info,
            "debug" => LogLevel::Debug,
            "trace" => LogLevel::Trace,
            _ => {
                return Err(format!(
                    "'{s}' is not a log level (error, warn, info, debug, trace)"
                ))
            }
        })
    }

    pub fn filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

/// One channel the box can tune to.
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelConfig {
    pub name: String,
    pub id: ChannelId,
    /// `HOST:PORT` strings, resolved each time the channel's node starts (a box may boot
    /// before its resolver works; static builds resolve numeric addresses only).
    pub bootstrap: Vec<String>,
    pub number: Option<u32>,
    pub logo: Option<String>,
}

/// The whole, validated configuration of `coolstream run`.
#[derive(Clone, Debug, PartialEq)]
pub struct BoxConfig {
    pub log_level: LogLevel,
    pub control_socket: PathBuf,
    pub listen: SocketAddr,
    /// How the box asks its home router to forward `listen`'s port (`nat`; docs/NAT.md).
    pub nat: NatMethod,
    pub tune: Option<String>,
    pub http: Option<SocketAddr>,
    pub udp: Option<UdpOut>,
    pub upload_kbps: u64,
    pub ring_bytes: u64,
    /// All the daemon may hold, bytes (see [`check_memory`]).
    pub memory_limit: u64,
    pub max_partners: usize,
    pub max_http_clients: usize,
    pub channels: Vec<ChannelConfig>,
}

impl Default for BoxConfig {
    /// What `run` without a file does: no channels yet (the control socket answers), players
    /// on localhost:8080, peers on any port.
    fn default() -> Self {
        BoxConfig {
            log_level: LogLevel::Info,
            control_socket: PathBuf::from(DEFAULT_CONTROL_SOCKET),
            listen: "[::]:0".parse().expect("a literal address"),
            nat: NatMethod::Auto,
            tune: None,
            http: Some("127.0.0.1:8080".parse().expect("a literal address")),
            udp: None,
            upload_kbps: DEFAULT_UPLOAD_KBPS,
            ring_bytes: DEFAULT_RING_BYTES,
            memory_limit: DEFAULT_MEMORY_LIMIT,
            max_partners: 8,
            max_http_clients: MAX_HTTP_CLIENTS,
            channels: Vec::new(),
        }
    }
}

/// Why a configuration was refused: where, and what was expected there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, or `--flag` for a command-line value.
    pub source: String,
    /// 1-based line and column in the file, when known.
    pub at: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some((line, col)) => write!(f, "{}:{line}:{col}: {}", self.source, self.message),
            None => write!(f, "{}: {}", self.source, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

// ----- the file's schema: each value type checks itself, so its error carries its span -----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    log_level: Option<Level>,
    control_socket: Option<SocketPath>,
    listen: Option<Addr>,
    nat: Option<Nat>,
    tune: Option<toml::Spanned<String>>,
    #[serde(default)]
    outputs: FileOutputs,
    #[serde(default)]
    limits: FileLimits,
    #[serde(default, rename = "channel")]
    channels: Vec<FileChannel>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileOutputs {
    /// An address, or "" for no HTTP output.
    http: Option<OptAddr>,
    udp: Option<Udp>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    upload_kbps: Option<Ranged<64, 10_000_000>>,
    ring_bytes: Option<toml::Spanned<Ranged<{ 1024 * 1024 }, { 1024 * 1024 * 1024 }>>>,
    memory_limit: Option<toml::Spanned<Ranged<{ MEMORY_LIMIT_RANGE.0 }, { MEMORY_LIMIT_RANGE.1 }>>>,
    max_partners: Option<toml::Spanned<Ranged<1, { PARTNER_CEILING as u64 }>>>,
    max_http_clients: Option<toml::Spanned<Ranged<1, { MAX_HTTP_CLIENTS as u64 }>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileChannel {
    name: toml::Spanned<Name>,
    id: Id,
    bootstrap: toml::Spanned<Vec<HostPort>>,
    number: Option<Ranged<0, 99_999>>,
    logo: Option<Logo>,
}

#[derive(Deserialize)]
#[serde(try_from = "String")]
struct Level(LogLevel);
impl TryFrom<String> for Level {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        LogLevel::parse(&s).map(Level)
    }
}

#[derive(Deserialize)]
#[serde(try_from = "String")]
struct SocketPath(PathBuf);
impl TryFrom<String> for SocketPath {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        check_socket_path(&s).map(SocketPath)
    }
}

#[derive(Deserialize)]
#[serde(try_from = "String")]
struct Addr(SocketAddr);
impl TryFrom<String> for Addr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        parse_socket_addr(&s).map(Addr)
    }
}

#[derive(Deserialize)]
#[serde(try_from = "String")]
struct Nat(NatMethod);
impl TryFrom<String> for Nat {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse().map(Nat)
    }
}

#[derive(Deserialize)]
#[serde(try_from = "String")]
struct OptAddr(Option<SocketAddr>);
impl TryFrom<String> for OptAddr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.is_empty() {
            return Ok(OptAddr(None));
        }
        parse_socket_addr(&s).map(|a| OptAddr(Some(a)))
    }
}

#[derive(Deserialize)]
#[serde(try_from = "String")]
struct Udp(Option<UdpOut>);
impl TryFrom<String> for Udp {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.is_empty() {
            return Ok(Udp(None));
        }
        UdpOut::parse(&s).map(|u| Udp(Some(u)))
    }
}

#[derive(Deserialize)]
#[serde(try_from = "String")]
struct Name(String);
impl TryFrom<String> for Name {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        check_name(&s).map(|_| Name(s))
    }
}

#[derive(Deserialize)]
#[serde(try_from = "String")]
struct Id(ChannelId);
impl TryFrom<String> for Id {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        ChannelId::from_hex(&s).map(Id).ok_or_else(|| {
            format!(
                "'{s}' is not a channel id: expected 64 hex characters (the source's public key)"
            )
        })
    }
}

#[derive(Deserialize)]
#[serde(try_from = "String")]
struct HostPort(String);
impl TryFrom<String> for HostPort {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        check_host_port(&s).map(|_| HostPort(s))
    }
}

#[derive(Deserialize)]
#[serde(try_from = "String")]
struct Logo(String);
impl TryFrom<String> for Logo {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.len() > MAX_LOGO_LEN {
            return Err(format!("a logo URL of at most {MAX_LOGO_LEN} bytes"));
        }
        Ok(Logo(s))
    }
}

/// An integer in `[MIN, MAX]`.
#[derive(Deserialize)]
#[serde(try_from = "i64")]
struct Ranged<const MIN: u64, const MAX: u64>(u64);
impl<const MIN: u64, const MAX: u64> TryFrom<i64> for Ranged<MIN, MAX> {
    type Error = String;
    fn try_from(v: i64) -> Result<Self, String> {
        match u64::try_from(v) {
            Ok(u) if (MIN..=MAX).contains(&u) => Ok(Ranged(u)),
            _ => Err(format!("{v} is out of range: expected {MIN} to {MAX}")),
        }
    }
}

// ----- checks shared by the file and the flags -----

/// A channel name: it appears in URLs (`/ch/NAME.ts`) and on the command line.
pub fn check_name(s: &str) -> Result<(), String> {
    let ok_chars = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if s.is_empty() || s.len() > MAX_NAME_LEN || !ok_chars {
        return Err(format!(
            "'{s}' is not a channel name: 1 to {MAX_NAME_LEN} letters, digits, '-', '_' or '.'"
        ));
    }
    Ok(())
}

fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("'{s}' is not an address: expected IP:PORT (IPv6 as [IP]:PORT)"))
}

/// `HOST:PORT` with a numeric port (the host is resolved when the channel starts).
pub fn check_host_port(s: &str) -> Result<(), String> {
    if s.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let bad = || format!("'{s}' is not a bootstrap address: expected HOST:PORT or IP:PORT");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if !host_ok || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad());
    }
    Ok(())
}

fn check_socket_path(s: &str) -> Result<PathBuf, String> {
    // sun_path holds 108 bytes with the terminating NUL.
    if s.is_empty() || s.len() > 107 || !s.starts_with('/') {
        return Err(format!(
            "'{s}' is not a socket path: expected an absolute path of at most 107 bytes"
        ));
    }
    Ok(PathBuf::from(s))
}

// ----- the memory plan -----

/// Byte offsets of the keys a memory plan depends on, where the file sets them.
#[derive(Default)]
pub struct MemoryKeys {
    pub memory_limit: Option<usize>,
    pub ring_bytes: Option<usize>,
    pub max_partners: Option<usize>,
    pub max_http_clients: Option<usize>,
}

/// The box's memory plan ([`MemoryPlan`]) for `cfg`.
pub fn memory_plan(cfg: &BoxConfig) -> MemoryPlan {
    MemoryPlan::new(cfg.ring_bytes, cfg.max_partners, cfg.max_http_clients)
}

/// Refuses a configuration whose memory plan does not fit `memory_limit`. The error points
/// at `memory_limit` when the file sets it, else at the key that grew the plan (the ring
/// first), with the plan's figures and the largest ring that would fit.
pub fn check_memory(cfg: &BoxConfig, keys: &MemoryKeys) -> Result<(), (Option<usize>, String)> {
    memory_plan(cfg).check(cfg.memory_limit).map_err(|m| {
        let at = keys
            .memory_limit
            .or(keys.ring_bytes)
            .or(keys.max_partners)
            .or(keys.max_http_clients);
        (at, m)
    })
}

// ----- reading -----

/// Errors reported from one file at most.
pub const MAX_CONFIG_ERRORS: usize = 32;

/// Where the table whose header is at `at` ends: the start of the next header line, or the
/// end of the text.
fn table_end(work: &str, at: usize) -> usize {
    let bytes = work.as_bytes();
    let at = at.min(bytes.len());
    let mut pos = bytes[at..]
        .iter()
        .position(|b| *b == b'\n')
        .map_or(bytes.len(), |i| at + i + 1);
    while pos < bytes.len() {
        let line_end = bytes[pos..]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(bytes.len(), |i| pos + i + 1);
        if bytes[pos..line_end].trim_ascii_start().first() == Some(&b'[') {
            return pos;
        }
        pos = line_end;
    }
    bytes.len()
}

/// Replaces the whole lines that `span` touches with spaces (newlines kept, so every byte
/// stays where it was) and returns the byte range blanked.
fn blank_lines(work: &mut String, span: std::ops::Range<usize>) -> std::ops::Range<usize> {
    let bytes = work.as_bytes();
    let start = span.start.min(bytes.len());
    let end = span.end.clamp(start, bytes.len());
    let from = bytes[..start]
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    // The line holding the span's last byte, to its end.
    let last = if end > start { end - 1 } else { start };
    let to = bytes[last..]
        .iter()
        .position(|b| *b == b'\n')
        .map_or(bytes.len(), |i| last + i);
    if bytes[from..to].iter().all(|b| *b == b' ' || *b == b'\n') {
        return from..from;
    }
    // Whole lines become spaces byte for byte (every multi-byte character lies inside them),
    // so the text stays UTF-8 and every position stays where it was.
    let mut v = std::mem::take(work).into_bytes();
    for b in &mut v[from..to] {
        if *b != b'\n' {
            *b = b' ';
        }
    }
    *work = String::from_utf8(v).expect("whole lines replaced by ASCII spaces");
    from..to
}

/// The TOML reader's message in the words of the file's reader rather than Rust's
/// (`invalid type: string "4000", expected i64` becomes
/// `expected a whole number, found the text "4000"`).
fn plain_words(msg: &str) -> String {
    let msg = msg.trim_end().replace('\n', "; ");
    let expected = |t: &str| -> String {
        let t = t.trim();
        match t {
            "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64" | "usize" | "isize"
            | "an integer" | "integer" => "a whole number".into(),
            "f32" | "f64" | "a float" => "a number".into(),
            "a string" | "string" | "a borrowed string" => "text in quotes".into(),
            "a boolean" | "bool" => "true or false".into(),
            "a sequence" => "a list [ ... ]".into(),
            "a map" => "a table".into(),
            t if t.starts_with("struct ") => "a table".into(),
            t => t.to_string(),
        }
    };
    let found = |t: &str| -> String {
        let t = t.trim();
        let inner = |p: &str| {
            t.strip_prefix(p)
                .map(|v| v.trim().trim_matches('`').to_string())
        };
        if let Some(v) = t.strip_prefix("string ") {
            format!("the text {v}")
        } else if let Some(v) = inner("integer ") {
            format!("the whole number {v}")
        } else if let Some(v) = inner("floating point ") {
            format!("the number {v}")
        } else if let Some(v) = inner("boolean ") {
            v
        } else if t == "sequence" {
            "a list".into()
        } else if t == "map" {
            "a table".into()
        } else {
            t.to_string()
        }
    };
    for kind in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = msg.strip_prefix(kind) {
            if let Some((f, e)) = rest.rsplit_once(", expected ") {
                return format!("expected {}, found {}", expected(e), found(f));
            }
        }
    }
    if let Some(rest) = msg.strip_prefix("unknown field ") {
        return format!(
            "unknown key {}",
            rest.replacen(", expected", "; expected", 1)
        );
    }
    if let Some(rest) = msg.strip_prefix("missing field ") {
        return format!("missing key {rest}");
    }
    msg
}

/// Line and column (1-based) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    // Bytes, not a str slice: an offset may fall inside a character of a line that was
    // blanked while the file was read again (see `parse_all`).
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let col = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, col)
}

impl BoxConfig {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<BoxConfig, ConfigError> {
        let source = path.display().to_string();
        let io = |e: std::io::Error| ConfigError {
            source: source.clone(),
            at: None,
            message: format!("cannot read it: {e}"),
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_CONFIG_BYTES {
            return Err(ConfigError {
                source,
                at: None,
                message: format!("{len} bytes; a config file has at most {MAX_CONFIG_BYTES}"),
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        BoxConfig::parse(&text, &source)
    }

    /// Checks a config file's text; `source` names it in errors. The first error, in file
    /// order ([`BoxConfig::parse_all`] has them all).
    pub fn parse(text: &str, source: &str) -> Result<BoxConfig, ConfigError> {
        BoxConfig::parse_all(text, source).map_err(|mut v| v.swap_remove(0))
    }

    /// Reads and checks a config file, with every error found in it, in file order.
    pub fn load_all(path: &Path) -> Result<BoxConfig, Vec<ConfigError>> {
        let source = path.display().to_string();
        let io = |e: std::io::Error| {
            vec![ConfigError {
                source: source.clone(),
                at: None,
                message: format!("cannot read it: {e}"),
            }]
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_CONFIG_BYTES {
            return Err(vec![ConfigError {
                source,
                at: None,
                message: format!("{len} bytes; a config file has at most {MAX_CONFIG_BYTES}"),
            }]);
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        BoxConfig::parse_all(&text, &source)
    }

    /// Checks a config file's text and reports every error (at most [`MAX_CONFIG_ERRORS`]),
    /// in file order, never an empty list. A key whose value is wrong is reported, then
    /// blanked out (spaces, so that positions hold) and the text read again, until it reads;
    /// the checks across keys (duplicate channels, `tune`) run on what is left, and are
    /// reported unless a whole table had to be dropped (they would then be guesses).
    pub fn parse_all(text: &str, source: &str) -> Result<BoxConfig, Vec<ConfigError>> {
        let mut errors: Vec<ConfigError> = Vec::new();
        let mut work = text.to_string();
        let mut dropped_table = false;
        // Each pass reads the whole file again: passes are bounded too (a suppressed error
        // costs one without adding to the list).
        let mut passes = 0;
        while errors.len() < MAX_CONFIG_ERRORS && passes < 2 * MAX_CONFIG_ERRORS {
            passes += 1;
            let mut schema_span = None;
            match BoxConfig::parse_once(&work, text, source, &mut schema_span) {
                Ok(cfg) if errors.is_empty() => return Ok(cfg),
                Ok(_) => break,
                Err(e) => match schema_span {
                    Some(mut span) => {
                        if e.message.starts_with("missing key") {
                            // Reported at the table's header: the table goes whole, or its
                            // keys would fall into the table before it.
                            span.end = table_end(&work, span.start);
                        }
                        let blanked = blank_lines(&mut work, span);
                        // A table reported for a missing key: the errors inside it already
                        // said why it is incomplete.
                        let inside = |o: &ConfigError| {
                            e.message.starts_with("missing key")
                                && o.at.is_some_and(|a| {
                                    e.at.is_some_and(|b| a >= b)
                                        && a.0 <= line_col(text, blanked.end).0
                                })
                        };
                        if !errors.iter().any(inside) {
                            errors.push(e);
                        }
                        dropped_table |=
                            !blanked.is_empty() && work[blanked.clone()].contains('\n');
                        if blanked.is_empty() {
                            break;
                        }
                    }
                    None => {
                        if !dropped_table || errors.is_empty() {
                            errors.push(e);
                        }
                        break;
                    }
                },
            }
        }
        errors.sort_by_key(|e| e.at);
        errors.dedup();
        Err(errors)
    }

    /// One reading of `work` (the file with the faults found so far blanked out); `text` is
    /// the file as written, for positions. A fault of the file's schema (syntax, unknown key,
    /// wrong type or value) sets `schema_span` to the bytes it covers.
    fn parse_once(
        work: &str,
        text: &str,
        source: &str,
        schema_span: &mut Option<std::ops::Range<usize>>,
    ) -> Result<BoxConfig, ConfigError> {
        let err = |at: Option<usize>, message: String| ConfigError {
            source: source.to_string(),
            at: at.map(|o| line_col(text, o)),
            message,
        };
        let file: FileConfig = toml::from_str(work).map_err(|e| {
            *schema_span = Some(e.span().unwrap_or(0..work.len()));
            err(e.span().map(|s| s.start), plain_words(e.message()))
        })?;
        let d = BoxConfig::default();
        // Where each memory-related key is, for check_memory's error.
        let memory_keys = MemoryKeys {
            memory_limit: file.limits.memory_limit.as_ref().map(|v| v.span().start),
            ring_bytes: file.limits.ring_bytes.as_ref().map(|v| v.span().start),
            max_partners: file.limits.max_partners.as_ref().map(|v| v.span().start),
            max_http_clients: file
                .limits
                .max_http_clients
                .as_ref()
                .map(|v| v.span().start),
        };
        let mut cfg = BoxConfig {
            log_level: file.log_level.map_or(d.log_level, |l| l.0),
            control_socket: file.control_socket.map_or(d.control_socket, |p| p.0),
            listen: file.listen.map_or(d.listen, |a| a.0),
            nat: file.nat.map_or(d.nat, |n| n.0),
            tune: None,
            http: file.outputs.http.map_or(d.http, |a| a.0),
            udp: file.outputs.udp.and_then(|u| u.0),
            upload_kbps: file.limits.upload_kbps.map_or(d.upload_kbps, |v| v.0),
            ring_bytes: file
                .limits
                .ring_bytes
                .map_or(d.ring_bytes, |v| v.into_inner().0),
            memory_limit: file
                .limits
                .memory_limit
                .map_or(d.memory_limit, |v| v.into_inner().0),
            max_partners: file
                .limits
                .max_partners
                .map_or(d.max_partners, |v| v.into_inner().0 as usize),
            max_http_clients: file
                .limits
                .max_http_clients
                .map_or(d.max_http_clients, |v| v.into_inner().0 as usize),
            channels: Vec::new(),
        };
        check_memory(&cfg, &memory_keys).map_err(|(at, m)| err(at, m))?;
        if file.channels.len() > MAX_CHANNELS {
            let at = file.channels[MAX_CHANNELS].name.span().start;
            return Err(err(
                Some(at),
                format!("too many channels: at most {MAX_CHANNELS}"),
            ));
        }
        for ch in file.channels {
            let name_at = ch.name.span().start;
            let name = ch.name.into_inner().0;
            if cfg.channels.iter().any(|c| c.name == name) {
                return Err(err(
                    Some(name_at),
                    format!("channel '{name}' is listed twice: expected unique names"),
                ));
            }
            let id = ch.id.0;
            if cfg.channels.iter().any(|c| c.id == id) {
                return Err(err(
                    Some(name_at),
                    format!("channel '{name}' has the id of another channel"),
                ));
            }
            let boot_at = ch.bootstrap.span().start;
            let bootstrap: Vec<String> =
                ch.bootstrap.into_inner().into_iter().map(|h| h.0).collect();
            if bootstrap.is_empty() || bootstrap.len() > MAX_BOOTSTRAP {
                return Err(err(
                    Some(boot_at),
                    format!("expected 1 to {MAX_BOOTSTRAP} bootstrap addresses"),
                ));
            }
            cfg.channels.push(ChannelConfig {
                name,
                id,
                bootstrap,
                number: ch.number.map(|n| n.0 as u32),
                logo: ch.logo.map(|l| l.0),
            });
        }
        if let Some(t) = file.tune {
            let at = t.span().start;
            let t = t.into_inner();
            if !cfg.channels.iter().any(|c| c.name == t) {
                return Err(err(
                    Some(at),
                    format!("tune = '{t}': expected the name of a [[channel]]"),
                ));
            }
            cfg.tune = Some(t);
        }
        Ok(cfg)
    }

    /// Applies one command-line flag over the file (`name` without the dashes).
    pub fn set_flag(&mut self, name: &str, value: &str) -> Result<(), ConfigError> {
        let bad = |message: String| ConfigError {
            source: format!("--{name}"),
            at: None,
            message,
        };
        match name {
            "control-socket" => self.control_socket = check_socket_path(value).map_err(bad)?,
            "log-level" => self.log_level = LogLevel::parse(value).map_err(bad)?,
            "listen" => self.listen = parse_socket_addr(value).map_err(bad)?,
            "nat" => self.nat = value.parse().map_err(bad)?,
            "http" if value.is_empty() => self.http = None,
            "http" => self.http = Some(parse_socket_addr(value).map_err(bad)?),
            "udp-out" if value.is_empty() => self.udp = None,
            "udp-out" => self.udp = Some(UdpOut::parse(value).map_err(bad)?),
            "upload-kbps" => {
                let (lo, hi) = UPLOAD_KBPS_RANGE;
                self.upload_kbps = value
                    .parse()
                    .ok()
                    .filter(|v| (lo..=hi).contains(v))
                    .ok_or_else(|| bad(format!("'{value}': expected {lo} to {hi}")))?;
            }
            "ring-bytes" => {
                let (lo, hi) = RING_BYTES_RANGE;
                let ring = value
                    .parse()
                    .ok()
                    .filter(|v| (lo..=hi).contains(v))
                    .ok_or_else(|| bad(format!("'{value}': expected {lo} to {hi}")))?;
                let mut with = self.clone();
                with.ring_bytes = ring;
                check_memory(&with, &MemoryKeys::default()).map_err(|(_, m)| bad(m))?;
                self.ring_bytes = ring;
            }
            "tune" => {
                if !self.channels.iter().any(|c| c.name == value) {
                    return Err(bad(format!(
                        "'{value}': expected the name of a configured channel"
                    )));
                }
                self.tune = Some(value.to_string());
            }
            other => return Err(bad(format!("--{other} is not a setting of run"))),
        }
        Ok(())
    }

    /// The flags [`BoxConfig::set_flag`] knows.
    pub const FLAGS: &'static [&'static str] = &[
        "control-socket",
        "log-level",
        "listen",
        "nat",
        "http",
        "udp-out",
        "upload-kbps",
        "ring-bytes",
        "tune",
    ];

    /// The channel to play at start: `tune`, else the first.
    pub fn initial_channel(&self) -> Option<&ChannelConfig> {
        match &self.tune {
            Some(t) => self.channels.iter().find(|c| &c.name == t),
            None => self.channels.first(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    const ID2: &str = "ff112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn parse(text: &str) -> Result<BoxConfig, ConfigError> {
        BoxConfig::parse(text, "box.toml")
    }

    #[test]
    fn a_full_file_reads_into_every_field() {
        let text = format!(
            r#"
log_level = "debug"
control_socket = "/run/cs/ctl.sock"
listen = "0.0.0.0:7000"
nat = "pcp"
tune = "sport"

[outputs]
http = "127.0.0.1:9000"
udp = "rtp://239.1.2.3:5000?ttl=2"

[limits]
upload_kbps = 1500
ring_bytes = 8388608
max_partners = 6
max_http_clients = 4

[[channel]]
name = "news"
id = "{ID}"
bootstrap = ["192.0.2.1:7000", "tv.example.net:7000"]
number = 1
logo = "http://192.0.2.1/news.png"

[[channel]]
name = "sport"
id = "{ID2}"
bootstrap = ["[2001:db8::1]:7000"]
"#
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.log_level, LogLevel::Debug);
        assert_eq!(c.control_socket, PathBuf::from("/run/cs/ctl.sock"));
        assert_eq!(c.listen.port(), 7000);
        assert_eq!(c.nat, NatMethod::Pcp);
        assert_eq!(c.http.unwrap().port(), 9000);
        assert!(c.udp.as_ref().unwrap().rtp);
        assert_eq!(
            (
                c.upload_kbps,
                c.ring_bytes,
                c.max_partners,
                c.max_http_clients
            ),
            (1500, 8388608, 6, 4)
        );
        assert_eq!(c.channels.len(), 2);
        assert_eq!(c.channels[0].bootstrap[1], "tv.example.net:7000");
        assert_eq!(c.channels[0].number, Some(1));
        assert_eq!(c.channels[1].id.to_hex(), ID2);
        assert_eq!(c.initial_channel().unwrap().name, "sport");
    }

    #[test]
    fn an_empty_file_is_the_defaults() {
        assert_eq!(parse("").unwrap(), BoxConfig::default());
        assert!(BoxConfig::default().initial_channel().is_none());
    }

    /// Each bad file is refused with the line of the fault and what was expected there.
    #[test]
    fn wrong_keys_types_and_values_name_their_line() {
        let cases: &[(&str, usize, &str)] = &[
            ("log_level = \"loud\"\n", 1, "not a log level"),
            ("\n\nlistn = \"0.0.0.0:1\"\n", 3, "unknown key `listn`"),
            (
                "[limits]\nupload_kbps = \"fast\"\n",
                2,
                "expected a whole number, found the text \"fast\"",
            ),
            ("[limits]\nupload_kbps = 10\n", 2, "expected 64 to 10000000"),
            ("[limits]\nmax_partners = 0\n", 2, "expected 1 to"),
            ("[outputs]\nhttp = \"localhost\"\n", 2, "expected IP:PORT"),
            ("[outputs]\nudp = \"tcp://1.2.3.4:5\"\n", 2, "udp://"),
            ("control_socket = \"relative.sock\"\n", 1, "absolute path"),
            (
                "listen = \"[::]:7000\"\nnat = \"yes\"\n",
                2,
                "nat must be auto, upnp, pcp, natpmp or off, not \"yes\"",
            ),
            (
                &format!("[[channel]]\nname = \"a b\"\nid = \"{ID}\"\nbootstrap = [\"h:1\"]\n"),
                2,
                "not a channel name",
            ),
            (
                "[[channel]]\nname = \"a\"\nid = \"00\"\nbootstrap = [\"1.2.3.4:5\"]\n",
                3,
                "64 hex characters",
            ),
            (
                "[[channel]]\nname = \"a\"\nbootstrap = [\"1.2.3.4:5\"]\n",
                1,
                "missing key `id`",
            ),
            (
                &format!("[[channel]]\nname = \"a\"\nid = \"{ID}\"\nbootstrap = [\"nohost\"]\n"),
                4,
                "HOST:PORT",
            ),
            (
                &format!("[[channel]]\nname = \"a\"\nid = \"{ID}\"\nbootstrap = []\n"),
                4,
                "1 to 16 bootstrap",
            ),
            (
                &format!(
                    "[[channel]]\nname = \"a\"\nid = \"{ID}\"\nbootstrap = [\"h:1\"]\n\
                     [[channel]]\nname = \"a\"\nid = \"{ID2}\"\nbootstrap = [\"h:1\"]\n"
                ),
                6,
                "listed twice",
            ),
            (
                &format!(
                    "tune = \"b\"\n[[channel]]\nname = \"a\"\nid = \"{ID}\"\nbootstrap = [\"h:1\"]\n"
                ),
                1,
                "name of a [[channel]]",
            ),
            ("log_level = \n", 1, ""),
        ];
        for (text, line, want) in cases {
            let e = parse(text).expect_err(text);
            assert_eq!(e.at.map(|a| a.0), Some(*line), "{text:?}: {e}");
            assert!(e.message.contains(want), "{text:?}: {e}");
            assert!(
                e.to_string().starts_with(&format!("box.toml:{line}:")),
                "{e}"
            );
        }
    }

    /// Every fault of a file is reported, in file order, in plain words, and a table
    /// dropped for a bad key does not bring spurious errors with it.
    #[test]
    fn every_error_of_a_file_is_reported_in_file_order() {
        let text = format!(
            "log_level = \"loud\"\n[[channel]]\nname = \"a\"\nid = \"00\"\nbootstrap = [\"1.2.3.4:5\"]\n\
             [[channel]]\nname = \"b b\"\nid = \"{ID}\"\nbootstrap = [\"h:1\"]\n\
             [limits]\nupload_kbps = \"4000\"\nmax_partners = true\nlistn = 3\n"
        );
        let errors = BoxConfig::parse_all(&text, "box.toml").unwrap_err();
        let got: Vec<(usize, &str)> = errors
            .iter()
            .map(|e| (e.at.unwrap().0, e.message.as_str()))
            .collect();
        let want_lines = [1, 4, 7, 11, 12, 13];
        assert_eq!(
            got.iter().map(|g| g.0).collect::<Vec<_>>(),
            want_lines,
            "{got:?}"
        );
        assert_eq!(got[3].1, "expected a whole number, found the text \"4000\"");
        assert_eq!(got[4].1, "expected a whole number, found true");
        assert!(got[5].1.starts_with("unknown key `listn`"), "{got:?}");
        // The first of them is what `parse` reports.
        assert_eq!(parse(&text).unwrap_err(), errors[0]);
        // Checks across keys run once every value reads.
        let e = BoxConfig::parse_all(
            &format!(
                "tune = \"zz\"\n[[channel]]\nname = \"a\"\nid = \"{ID}\"\nbootstrap = [\"h:1\"]\n[limits]\nupload_kbps = -4\n"
            ),
            "box.toml",
        )
        .unwrap_err();
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].message.contains("name of a [[channel]]") && e[1].message.contains("out of range")
        );
    }

    /// Faults on lines with characters of several bytes are reported and blanked whole.
    #[test]
    fn errors_beside_multibyte_characters_are_reported_without_a_panic() {
        let e = BoxConfig::parse_all(
            "café = \"x\"\n# é\nlog_level = \"é\"\n[limits]\nupload_kbps = \"é\"\n",
            "f",
        )
        .unwrap_err();
        assert_eq!(
            e.iter().map(|e| e.at.unwrap().0).collect::<Vec<_>>(),
            [1, 3, 5],
            "{e:?}"
        );
    }

    #[test]
    fn flags_override_the_file_and_are_checked_too() {
        let mut c = parse(&format!(
            "[outputs]\nhttp = \"127.0.0.1:1\"\n[[channel]]\nname = \"a\"\nid = \"{ID}\"\nbootstrap = [\"h:1\"]\n"
        ))
        .unwrap();
        c.set_flag("http", "").unwrap();
        assert_eq!(c.http, None);
        c.set_flag("upload-kbps", "2000").unwrap();
        assert_eq!(c.upload_kbps, 2000);
        c.set_flag("tune", "a").unwrap();
        let e = c.set_flag("tune", "zz").unwrap_err();
        assert_eq!(e.source, "--tune");
        assert!(c.set_flag("upload-kbps", "1").is_err());
        assert!(c.set_flag("control-socket", "x.sock").is_err());
        assert!(c.set_flag("udp-out", "udp://nonsense").is_err());
        c.set_flag("nat", "off").unwrap();
        assert_eq!(c.nat, NatMethod::Off);
        let e = c.set_flag("nat", "UPnP").unwrap_err();
        assert_eq!(
            e.to_string(),
            "--nat: nat must be auto, upnp, pcp, natpmp or off, not \"UPnP\""
        );
        assert_eq!(c.tune.as_deref(), Some("a"));
    }

    /// The configs shipped for each board, and the package's default, are valid as they are.
    #[test]
    fn shipped_configs_parse() {
        let shipped = [
            ("rpi3", include_str!("../board/rpi3/coolstream.toml")),
            ("rpi4", include_str!("../board/rpi4/coolstream.toml")),
            ("rpi5", include_str!("../board/rpi5/coolstream.toml")),
            ("pizero", include_str!("../board/pizero/coolstream.toml")),
            (
                "generic-stb",
                include_str!("../board/generic-stb/coolstream.toml"),
            ),
            ("default", include_str!("../systemd/coolstream.toml")),
        ];
        for (name, text) in shipped {
            let c = BoxConfig::parse(text, name).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                c.control_socket,
                PathBuf::from(DEFAULT_CONTROL_SOCKET),
                "{name}"
            );
            assert_eq!(c.listen.port(), 7000, "{name}");
        }
        let stb = BoxConfig::parse(shipped[4].1, "stb").unwrap();
        assert!(stb.http.is_none() && stb.udp.is_some());
    }

    /// The shipped unit's `MemoryMax` holds every shipped config's `memory_limit` and the
    /// kernel's share ([`KERNEL_HEADROOM`](crate::daemon::memory::KERNEL_HEADROOM)).
    #[test]
    fn shipped_configs_fit_the_units_memory_max() {
        use crate::daemon::memory::KERNEL_HEADROOM;
        let unit = include_str!("../systemd/coolstream.service");
        let max_mib: u64 = unit
            .lines()
            .find_map(|l| l.strip_prefix("MemoryMax="))
            .and_then(|v| v.strip_suffix('M'))
            .and_then(|v| v.parse().ok())
            .expect("MemoryMax=NM in the unit");
        let shipped = [
            include_str!("../board/rpi3/coolstream.toml"),
            include_str!("../board/rpi4/coolstream.toml"),
            include_str!("../board/rpi5/coolstream.toml"),
            include_str!("../board/pizero/coolstream.toml"),
            include_str!("../board/generic-stb/coolstream.toml"),
            include_str!("../systemd/coolstream.toml"),
        ];
        for text in shipped {
            let c = BoxConfig::parse(text, "board").unwrap();
            assert!(
                text.contains("memory_limit ="),
                "every board says its limit"
            );
            assert!(c.memory_limit + KERNEL_HEADROOM <= max_mib * 1024 * 1024);
            assert!(memory_plan(&c).total() <= c.memory_limit);
        }
        assert!(DEFAULT_MEMORY_LIMIT + KERNEL_HEADROOM <= max_mib * 1024 * 1024);
    }

    /// A ring the memory limit cannot hold is refused where it is set, with the figures.
    #[test]
    fn a_plan_over_the_memory_limit_names_its_line_and_column() {
        let e = parse("[limits]\nring_bytes = 1073741824\n").unwrap_err();
        assert_eq!(e.at, Some((2, 14)), "{e}");
        assert!(e.message.contains("memory_limit is 48.0 MiB"), "{e}");
        assert!(
            e.to_string().starts_with("box.toml:2:14: the box needs"),
            "{e}"
        );
        // With memory_limit set, the error points at it.
        let e = parse("[limits]\nring_bytes = 33554432\nmemory_limit = 33554432\n").unwrap_err();
        assert_eq!(e.at, Some((3, 16)), "{e}");
        // A larger limit takes the same ring; the default ring fits the default limit.
        let c = parse("[limits]\nring_bytes = 33554432\nmemory_limit = 67108864\n").unwrap();
        assert_eq!(c.memory_limit, 64 * 1024 * 1024);
        assert!(parse("[limits]\nmemory_limit = 1000\n").is_err());
        // The flag is checked against the plan too.
        let mut c = BoxConfig::default();
        let e = c.set_flag("ring-bytes", "1073741824").unwrap_err();
        assert_eq!(e.source, "--ring-bytes");
        assert!(e.message.contains("memory_limit"), "{e}");
        assert_eq!(c.ring_bytes, DEFAULT_RING_BYTES);
        c.set_flag("ring-bytes", "8388608").unwrap();
        assert_eq!(c.ring_bytes, 8388608);
    }

    #[test]
    fn line_and_column_count_from_one() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }
}
