//! Logging to stderr, shaped for where stderr goes.
//!
//! On a terminal or into a file, lines carry a timestamp, the level and the module, as
//! env_logger writes them. Under systemd, stderr is a journald stream (`JOURNAL_STREAM` names
//! its device and inode): journald stamps every line itself, and reads a leading `<N>` as the
//! syslog priority, so lines there are `<N>module: message` with no timestamp of their own and
//! `journalctl -p warning` filters them properly.
//!
//! `RUST_LOG` overrides the level the caller asks for.

use std::io::Write;

/// Where stderr is connected, as far as the log format cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sink {
    Terminal,
    Journal,
}

/// Syslog priority for a level: err(3), warning(4), info(6), debug(7).
pub fn syslog_priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// Whether `journal_stream` (the value of `JOURNAL_STREAM`, "DEV:INODE") names the file that
/// `dev` and `ino` identify. systemd sets the variable for the service's own stderr; a child
/// whose stderr was redirected elsewhere inherits it, hence the comparison.
pub fn is_journal(journal_stream: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = journal_stream.split_once(':') else {
        return false;
    };
    d.parse::<u64>().ok() == Some(dev) && i.parse::<u64>().ok() == Some(ino)
}

/// Where this process's stderr goes.
pub fn detect() -> Sink {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Ok(js) = std::env::var("JOURNAL_STREAM") else {
        return Sink::Terminal;
    };
    let meta = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .and_then(|f| f.metadata());
    match meta {
        Ok(m) if is_journal(&js, m.dev(), m.ino()) => Sink::Journal,
        _ => Sink::Terminal,
    }
}

/// Starts logging at `level` (unless `RUST_LOG` says otherwise). Call once.
pub fn init(level: log::LevelFilter) {
    let mut b = env_logger::Builder::new();
    b.filter_level(level).target(env_logger::Target::Stderr);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        b.parse_filters(&spec);
    }
    if detect() == Sink::Journal {
        b.format(|buf, rec| {
            writeln!(
                buf,
                "<{}>{}: {}",
                syslog_priority(rec.level()),
                rec.target(),
                rec.args()
            )
        });
    }
    // A second init (tests that start the daemon in-process) keeps the first logger.
    let _ = b.try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_must_name_our_stderr() {
        assert!(is_journal("8:1234", 8, 1234));
        assert!(!is_journal("8:1234", 8, 1235));
        assert!(!is_journal("garbage", 8, 1234));
        assert_eq!(syslog_priority(log::Level::Warn), 4);
        assert_eq!(syslog_priority(log::Level::Trace), 7);
    }
}
