//! Home routers in network namespaces, shared by the NAT tests (tests/nat.rs: one router and one
//! box) and the neighbourhood (tests/homenet.rs: many): running `ip`/`nft` commands, moving a
//! thread into a namespace, the router's nftables rules, and Debian's `miniupnpd` with its own
//! config. Needs root (or a user namespace that maps it); callers say so when it fails.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Debian's router daemon (package `miniupnpd-nftables`): UPnP-IGD, NAT-PMP and PCP.
pub const MINIUPNPD: &str = "/usr/sbin/miniupnpd";

extern "C" {
    fn setns(fd: i32, nstype: i32) -> i32;
}
const CLONE_NEWNET: i32 = 0x4000_0000;

/// Runs `args[0]` with the rest as arguments, `stdin` written to it: its stdout, or the command
/// line and its stderr.
pub fn run(args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    use std::io::Write;
    let mut c = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", args[0]))?;
    if let Some(s) = stdin {
        c.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    drop(c.stdin.take());
    let out = c.wait_with_output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `f` on a thread inside network namespace `ns` (a name under /run/netns).
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns only moves this thread into the namespace the descriptor names.
        let rc = unsafe { setns(file.as_raw_fd(), CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
}

/// Starts `cmd` and `more` with stdout and stderr into `log`.
pub fn spawn_logged(cmd: &[&str], more: &[&std::ffi::OsStr], log: &Path) -> Result<Child, String> {
    let f = std::fs::File::create(log).unwrap();
    Command::new(cmd[0])
        .args(&cmd[1..])
        .args(more)
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", cmd.join(" ")))
}

/// A home router's rules: masquerade on the interface `wan` for IPv4, IPv6 routed, a stealth
/// WAN, a stateful forward filter that silently drops unsolicited packets from the WAN, and the
/// empty chains miniupnpd writes its rules into (Debian's nft_init.sh would need iptables).
/// Boxes on one LAN reach each other as through a home router's switch: where the kernel
/// passes bridged frames through the IP hooks (br_netfilter loaded), their ports are the
/// in and out interfaces, and the forward filter would drop them.
pub const ROUTER_RULESET: &str = r#"table inet filter {
	chain input {
		type filter hook input priority filter; policy accept;
		iifname "wan" ct state established,related accept
		iifname "wan" meta l4proto { icmp, ipv6-icmp } accept
		iifname "wan" drop
	}
	chain forward {
		type filter hook forward priority filter; policy drop;
		ct state established,related accept
		meta l4proto { icmp, ipv6-icmp } accept
		iifname != "wan" oifname != "wan" accept
		jump miniupnpd
		iifname "lan" oifname "wan" accept
		meta nfproto ipv6 iifname "wan" oifname "lan" accept
	}
	chain miniupnpd {
	}
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		jump prerouting_miniupnpd
	}
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		jump postrouting_miniupnpd
		meta nfproto ipv4 oifname "wan" masquerade
	}
	chain prerouting_miniupnpd {
	}
	chain postrouting_miniupnpd {
	}
}
"#;

/// miniupnpd's config for router `n` (LAN 10.99.`n`.0/24 on interface `lan`, WAN on `wan`):
/// UPnP-IGD, NAT-PMP and PCP, mappings only for the LAN's own addresses, leases from 2 s, the
/// external address checked by STUN at `stun_host` (a 198.18/15 WAN looks private to it), its
/// lease file in `dir`.
pub fn miniupnpd_conf(n: usize, stun_host: &str, dir: &Path) -> String {
    format!(
        "ext_ifname=wan
listening_ip=lan
http_port=5000
enable_upnp=yes
enable_natpmp=yes
secure_mode=yes
ext_perform_stun=yes
ext_stun_host={stun_host}
ext_stun_port=3478
min_lifetime=2
max_lifetime=3600
lease_file={}/r{n}.leases
system_uptime=no
uuid=3d3cec3a-8cf0-11e0-98ee-001a6bd2d0{n:02}
upnp_table_name=filter
upnp_nat_table_name=filter
upnp_forward_chain=miniupnpd
upnp_nat_chain=prerouting_miniupnpd
upnp_nat_postrouting_chain=postrouting_miniupnpd
allow 1024-65535 10.99.{n}.0/24 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
",
        dir.display()
    )
}

/// Starts miniupnpd for router `n` in namespace `ns` (config, log and pid file in `dir`, named
/// `r{n}.miniupnpd.*`). Does not wait: see [`miniupnpd_ready`].
pub fn start_miniupnpd(n: usize, ns: &str, stun_host: &str, dir: &Path) -> Result<Child, String> {
    if !Path::new(MINIUPNPD).exists() {
        return Err(format!(
            "{MINIUPNPD} is missing (apt-get install miniupnpd-nftables)"
        ));
    }
    let conf = dir.join(format!("r{n}.miniupnpd.conf"));
    std::fs::write(&conf, miniupnpd_conf(n, stun_host, dir)).unwrap();
    let pid = dir.join(format!("r{n}.miniupnpd.pid"));
    spawn_logged(
        &["ip", "netns", "exec", ns, MINIUPNPD, "-d", "-f"],
        &[conf.as_os_str(), "-P".as_ref(), pid.as_os_str()],
        &dir.join(format!("r{n}.miniupnpd.log")),
    )
}

/// Waits up to 10 s for router `n`'s miniupnpd (started by [`start_miniupnpd`] in `dir`) to
/// serve: port forwarding enabled and HTTP listening.
pub fn miniupnpd_ready(n: usize, dir: &Path) -> Result<(), String> {
    let log = dir.join(format!("r{n}.miniupnpd.log"));
    let t0 = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("Port forwarding is now enabled")
            && text.contains("HTTP listening on port")
        {
            return Ok(());
        }
        if t0.elapsed() > Duration::from_secs(10) {
            return Err(format!("miniupnpd on r{n} not ready after 10 s:\n{text}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
