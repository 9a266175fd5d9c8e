//! Which network addresses an output may reach (REVIEW S1, S5): an output configured through
//! the API must not become a way into the engine's own network (its loopback, the cloud
//! metadata address, private ranges). Pure: the delivery code resolves hosts and asks here
//! about every address, when an output is created or changed and again at each connect.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an output may not reach `ip`, or `None` when it may (a public address).
pub fn refused_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => refused_v6(v6),
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    Some(if ip.is_unspecified() || a == 0 {
        "an unspecified address (0.0.0.0/8)"
    } else if ip.is_loopback() {
        "a loopback address (127.0.0.0/8)"
    } else if ip.is_private() {
        "a private address (10/8, 172.16/12, 192.168/16)"
    } else if ip.is_link_local() {
        "a link-local address (169.254/16, where cloud metadata answers)"
    } else if a == 100 && (64..128).contains(&b) {
        "a carrier-grade NAT address (100.64/10)"
    } else if ip.is_broadcast() || ip.is_multicast() || a >= 240 {
        "a broadcast, multicast or reserved address"
    } else if a == 192 && b == 0 && ip.octets()[2] == 0 {
        "an IETF protocol address (192.0.0.0/24)"
    } else if a == 198 && (b == 18 || b == 19) {
        "a benchmarking address (198.18/15)"
    } else {
        return None;
    })
}

fn refused_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let segments = ip.segments();
    Some(if ip.is_unspecified() {
        "an unspecified address (::)"
    } else if ip.is_loopback() {
        "a loopback address (::1)"
    } else if ip.to_ipv4_mapped().is_some() {
        "an IPv4-mapped address (::ffff:0:0/96): use the IPv4 address"
    } else if segments[..6] == [0; 6] {
        "an IPv4-compatible address (::/96)"
    } else if segments[0] & 0xfe00 == 0xfc00 {
        "a unique-local address (fc00::/7)"
    } else if segments[0] & 0xffc0 == 0xfe80 {
        "a link-local address (fe80::/10)"
    } else if ip.is_multicast() {
        "a multicast address (ff00::/8)"
    } else if segments[..2] == [0x64, 0xff9b] {
        // NAT64 embeds an IPv4 address in its last 32 bits.
        let embedded = Ipv4Addr::from(u128::from(ip) as u32);
        return refused_v4(embedded).map(|_| "a NAT64 address embedding a refused IPv4 address");
    } else if segments[0] == 0x2002 {
        // 6to4 embeds one in bits 16 to 48.
        let embedded = Ipv4Addr::new(
            (segments[1] >> 8) as u8,
            segments[1] as u8,
            (segments[2] >> 8) as u8,
            segments[2] as u8,
        );
        return refused_v4(embedded).map(|_| "a 6to4 address embedding a refused IPv4 address");
    } else {
        return None;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> bool {
        refused_reason(text.parse().unwrap()).is_some()
    }

    #[test]
    fn the_engines_own_network_is_refused_in_every_spelling() {
        for inside in [
            "127.0.0.1",
            "127.1.2.3",
            "0.0.0.0",
            "10.0.0.5",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.254",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "fd00::1",
            "fc00::1",
            "fe80::1",
            "ff02::1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
        ] {
            assert!(refused(inside), "{inside} must be refused");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for outside in [
            "8.8.8.8",
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.1",
            "172.32.0.1",
            "193.0.0.1",
            "2606:4700:4700::1111",
            "64:ff9b::808:808",
            "2002:808:808::",
        ] {
            assert!(!refused(outside), "{outside} must be allowed");
        }
    }
}
