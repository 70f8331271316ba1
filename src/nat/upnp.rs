//! UPnP-IGD: SSDP discovery on the LAN, the device description, and the three SOAP actions
//! a port mapping needs (GetExternalIPAddress, AddPortMapping, DeletePortMapping).
//!
//! The IGD is taken whatever it says of its own connection: miniupnpc's `UPNP_GetValidIGD`
//! calls an IGD whose external address looks private "connected? not sure" (2, not 1), and
//! such routers (double NAT, carrier-grade NAT, test ranges) still map ports; the external
//! address is reported as the router gives it and [`super::Mapping::external_is_public`] says
//! what it looks like.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use tokio::net::UdpSocket;

use super::http::{self, Url};
use super::{xml, NatError};

const SSDP_GROUP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(239, 255, 255, 250), 1900);
/// The largest SSDP answer taken (one datagram on an Ethernet LAN).
pub const MAX_SSDP: usize = 1500;
/// The SSDP answers looked at in one search (each may cost a description fetch).
const MAX_LOCATIONS: usize = 4;
/// The largest device description held (miniupnpd's is ~4 KB, big routers' ~30 KB).
pub const MAX_DESCRIPTION: usize = 64 * 1024;
/// The largest SOAP answer held.
pub const MAX_SOAP: usize = 16 * 1024;

/// What is searched for: both IGD versions (a v2 device answers a v1 search too, but not
/// every v1 device answers a v2 one).
const SEARCH: [&str; 2] = [
    "urn:schemas-upnp-org:device:InternetGatewayDevice:1",
    "urn:schemas-upnp-org:device:InternetGatewayDevice:2",
];

/// Services that map ports, most wanted first.
const SERVICES: [&str; 3] = [
    "urn:schemas-upnp-org:service:WANIPConnection:2",
    "urn:schemas-upnp-org:service:WANIPConnection:1",
    "urn:schemas-upnp-org:service:WANPPPConnection:1",
];

/// MX 1: a device waits a random 0..MX seconds before it answers a multicast search (miniupnpd
/// does), which must stay well inside the client's wait.
pub fn msearch(st: &str) -> String {
    format!(
        "M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: \"ssdp:discover\"\r\nMX: 1\r\nST: {st}\r\n\r\n"
    )
}

/// The description's URL from an SSDP answer (`HTTP/1.1 200` with a LOCATION header).
pub fn parse_ssdp(d: &[u8]) -> Result<Url, String> {
    if d.len() > MAX_SSDP {
        return Err(format!("an SSDP answer of {} bytes", d.len()));
    }
    let mut headers = [httparse::EMPTY_HEADER; 24];
    let mut r = httparse::Response::new(&mut headers);
    match r.parse(d) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err("not an SSDP answer".into()),
    }
    if r.code != Some(200) {
        return Err(format!("SSDP status {:?}", r.code));
    }
    let loc = r
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("location"))
        .ok_or("an SSDP answer without LOCATION")?;
    let loc = std::str::from_utf8(loc.value).map_err(|_| "a LOCATION that is not text")?;
    http::parse_url(loc.trim())
}

/// An IGD's port-mapping service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Igd {
    pub control: Url,
    pub service: String,
    /// This host's LAN address towards the IGD (the internal client of a mapping).
    pub local: Ipv4Addr,
}

/// The control URL and service type of the best port-mapping service in a description
/// fetched from `from`. Its control URL must be on the host that served the description.
pub fn parse_description(doc: &[u8], from: &Url) -> Result<(Url, String), String> {
    let doc = String::from_utf8_lossy(&doc[..doc.len().min(MAX_DESCRIPTION)]);
    let base = match xml::first_text(&doc, "URLBase").filter(|b| !b.is_empty()) {
        Some(b) => http::parse_url(&b)?,
        None => from.clone(),
    };
    let all = xml::services(&doc);
    for want in SERVICES {
        if let Some(s) = all.iter().find(|s| s.service_type == want) {
            let control = http::resolve(&base, &s.control_url)?;
            if control.addr.ip() != from.addr.ip() {
                return Err(format!(
                    "a control URL {control} on another host than the description's {}",
                    from.addr.ip()
                ));
            }
            return Ok((control, s.service_type.clone()));
        }
    }
    Err("no WANIPConnection or WANPPPConnection service".into())
}

/// Searches the LAN for an IGD for up to `wait` (multicast, and unicast to the gateway when
/// it is known), and returns the first whose description has a port-mapping service.
pub async fn discover(
    gateway: Option<Ipv4Addr>,
    wait: Duration,
    http_timeout: Duration,
) -> Result<Igd, NatError> {
    let io = |e: std::io::Error| NatError::Io(format!("SSDP: {e}"));
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .await
        .map_err(io)?;
    // A router a hop away still hears it; nothing further does.
    let _ = sock.set_multicast_ttl_v4(2);
    let mut sent = 0;
    for st in SEARCH {
        let m = msearch(st);
        if sock.send_to(m.as_bytes(), SSDP_GROUP).await.is_ok() {
            sent += 1;
        }
        if let Some(g) = gateway {
            if sock.send_to(m.as_bytes(), (g, 1900)).await.is_ok() {
                sent += 1;
            }
        }
    }
    if sent == 0 {
        return Err(NatError::NoRouter(
            "SSDP: no route to send a search on (no LAN?)".into(),
        ));
    }
    let deadline = tokio::time::Instant::now() + wait;
    let mut tried: Vec<Url> = Vec::new();
    let mut last = None;
    // One byte over the cap tells an oversized datagram from one that fits.
    let mut buf = vec![0u8; MAX_SSDP + 1];
    while tried.len() < MAX_LOCATIONS {
        let (n, from) = match tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await {
            Err(_) => break,
            Ok(Err(e)) => return Err(io(e)),
            Ok(Ok(x)) => x,
        };
        let Ok(loc) = parse_ssdp(&buf[..n]) else {
            continue;
        };
        // Only the device that answered is asked for its description.
        if SocketAddr::V4(loc.addr).ip() != from.ip() || tried.contains(&loc) {
            continue;
        }
        tried.push(loc.clone());
        match describe(&loc, http_timeout).await {
            Ok(igd) => return Ok(igd),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        NatError::NoRouter(format!("no UPnP IGD answered on the LAN within {wait:?}"))
    }))
}

async fn describe(loc: &Url, timeout: Duration) -> Result<Igd, NatError> {
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: coolstream UPnP/1.1\r\n\r\n",
        loc.path, loc.addr
    );
    let (ans, local) = http::exchange(loc, req.as_bytes(), MAX_DESCRIPTION, timeout).await?;
    if ans.status != 200 {
        return Err(NatError::Protocol(format!(
            "{loc}: HTTP status {}",
            ans.status
        )));
    }
    let (control, service) =
        parse_description(&ans.body, loc).map_err(|e| NatError::Protocol(format!("{loc}: {e}")))?;
    Ok(Igd {
        control,
        service,
        local,
    })
}

/// The body of a SOAP action.
pub fn soap_request(igd: &Igd, action: &str, args: &[(&str, String)]) -> String {
    let mut body = format!(
        "<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body><u:{action} xmlns:u=\"{}\">",
        igd.service
    );
    for (k, v) in args {
        let v = v
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        body.push_str(&format!("<{k}>{v}</{k}>"));
    }
    body.push_str(&format!("</u:{action}></s:Body></s:Envelope>\r\n"));
    format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/xml; charset=\"utf-8\"\r\nSOAPAction: \"{}#{action}\"\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        igd.control.path,
        igd.control.addr,
        igd.service,
        body.len()
    )
}

/// A SOAP answer: the body of a 200, or the UPnP error of a 500 as [`NatError::Refused`]
/// with its code (718 ConflictInMappingEntry, 725 OnlyPermanentLeasesSupported, ...).
pub fn soap_answer(action: &str, status: u16, body: &[u8]) -> Result<String, NatError> {
    let body = String::from_utf8_lossy(body).into_owned();
    if status == 200 {
        return Ok(body);
    }
    let code = xml::first_text(&body, "errorCode").and_then(|c| c.parse::<u16>().ok());
    let desc = xml::first_text(&body, "errorDescription").unwrap_or_default();
    Err(match code {
        Some(c) => NatError::Upnp {
            action: action.to_string(),
            code: c,
            text: desc.chars().take(120).collect(),
        },
        None => NatError::Protocol(format!("{action}: HTTP status {status}")),
    })
}

async fn soap(
    igd: &Igd,
    action: &str,
    args: &[(&str, String)],
    timeout: Duration,
) -> Result<String, NatError> {
    let req = soap_request(igd, action, args);
    let (ans, _) = http::exchange(&igd.control, req.as_bytes(), MAX_SOAP, timeout).await?;
    soap_answer(action, ans.status, &ans.body)
}

pub async fn external_ip(igd: &Igd, timeout: Duration) -> Result<Ipv4Addr, NatError> {
    let body = soap(igd, "GetExternalIPAddress", &[], timeout).await?;
    parse_external_ip(&body)
}

pub fn parse_external_ip(body: &str) -> Result<Ipv4Addr, NatError> {
    let ip = xml::first_text(body, "NewExternalIPAddress").unwrap_or_default();
    ip.parse().map_err(|_| {
        NatError::Protocol(format!(
            "GetExternalIPAddress gave {:?}, not an IPv4 address",
            ip.chars().take(40).collect::<String>()
        ))
    })
}

pub async fn add(
    igd: &Igd,
    external: u16,
    internal: SocketAddrV4,
    lease_s: u32,
    description: &str,
    timeout: Duration,
) -> Result<(), NatError> {
    let args = [
        ("NewRemoteHost", String::new()),
        ("NewExternalPort", external.to_string()),
        ("NewProtocol", "TCP".into()),
        ("NewInternalPort", internal.port().to_string()),
        ("NewInternalClient", internal.ip().to_string()),
        ("NewEnabled", "1".into()),
        ("NewPortMappingDescription", description.into()),
        ("NewLeaseDuration", lease_s.to_string()),
    ];
    soap(igd, "AddPortMapping", &args, timeout)
        .await
        .map(|_| ())
}

pub async fn delete(igd: &Igd, external: u16, timeout: Duration) -> Result<(), NatError> {
    let args = [
        ("NewRemoteHost", String::new()),
        ("NewExternalPort", external.to_string()),
        ("NewProtocol", "TCP".into()),
    ];
    soap(igd, "DeletePortMapping", &args, timeout)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIUPNPD_SSDP: &[u8] = b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nUSN: uuid:x::urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nEXT:\r\nSERVER: Debian/12 UPnP/1.1 MiniUPnPd/2.3.1\r\nLOCATION: http://10.99.1.1:5000/rootDesc.xml\r\nOPT: \"http://schemas.upnp.org/upnp/1/0/\"; ns=01\r\n\r\n";

    #[test]
    fn ssdp_answers() {
        let u = parse_ssdp(MINIUPNPD_SSDP).unwrap();
        assert_eq!(u.to_string(), "http://10.99.1.1:5000/rootDesc.xml");
        assert!(parse_ssdp(b"NOTIFY * HTTP/1.1\r\n\r\n").is_err());
        assert!(parse_ssdp(b"HTTP/1.1 404 No\r\nLOCATION: http://1.2.3.4/\r\n\r\n").is_err());
        assert!(parse_ssdp(b"HTTP/1.1 200 OK\r\nST: x\r\n\r\n").is_err());
        assert!(parse_ssdp(b"HTTP/1.1 200 OK\r\nLOCATION: http://name/\r\n\r\n").is_err());
        assert!(parse_ssdp(&[b'a'; MAX_SSDP + 1]).is_err());
    }

    #[test]
    fn descriptions() {
        let from = http::parse_url("http://10.99.1.1:5000/rootDesc.xml").unwrap();
        let doc = br#"<root><device><serviceList><service><serviceType>urn:schemas-upnp-org:service:WANPPPConnection:1</serviceType><controlURL>/ppp</controlURL></service>
<service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType><controlURL>/ctl/IPConn</controlURL></service></serviceList></device></root>"#;
        let (c, s) = parse_description(doc, &from).unwrap();
        assert_eq!(c.to_string(), "http://10.99.1.1:5000/ctl/IPConn");
        assert!(s.ends_with("WANIPConnection:1"));
        let elsewhere = br#"<service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType><controlURL>http://10.0.0.9/x</controlURL></service>"#;
        assert!(parse_description(elsewhere, &from)
            .unwrap_err()
            .contains("another host"));
        assert!(parse_description(b"<root/>", &from).is_err());
    }

    #[test]
    fn soap_answers() {
        let ok = "<s:Envelope><s:Body><u:GetExternalIPAddressResponse><NewExternalIPAddress>198.18.0.11</NewExternalIPAddress></u:GetExternalIPAddressResponse></s:Body></s:Envelope>";
        assert_eq!(
            parse_external_ip(&soap_answer("x", 200, ok.as_bytes()).unwrap()).unwrap(),
            Ipv4Addr::new(198, 18, 0, 11)
        );
        assert!(parse_external_ip("<NewExternalIPAddress></NewExternalIPAddress>").is_err());
        let err = "<s:Envelope><s:Body><s:Fault><detail><UPnPError><errorCode>718</errorCode><errorDescription>ConflictInMappingEntry</errorDescription></UPnPError></detail></s:Fault></s:Body></s:Envelope>";
        match soap_answer("AddPortMapping", 500, err.as_bytes()) {
            Err(NatError::Upnp {
                code: 718, text, ..
            }) => {
                assert_eq!(text, "ConflictInMappingEntry")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            soap_answer("a", 500, b"nope"),
            Err(NatError::Protocol(_))
        ));
    }
}
