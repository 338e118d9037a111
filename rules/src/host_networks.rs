//! The host cluster's own address ranges: its Service ranges (ServiceCIDRs), its nodes' pod
//! ranges and its nodes' addresses. A tenant's EndpointSlice may not send host traffic there
//! (a selector-less Service is for servers outside the cluster): through it a host component
//! that routes to the tenant's Services (an ingress controller, say) would reach the host's
//! apiserver, its nodes or other tenants' pods.

use std::net::IpAddr;

use ipnet::IpNet;

/// An IPv4 address written as IPv6 (`::ffff:127.0.0.1`) is the IPv4 address.
pub fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The ranges, each with what it is (for the message).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostNetworks {
    ranges: Vec<(IpNet, String)>,
}

impl HostNetworks {
    /// Adds a range (`10.96.0.0/12`) or a single address (`192.0.2.7`); what does not parse is
    /// skipped.
    pub fn add(&mut self, cidr_or_ip: &str, what: impl Into<String>) {
        let net = cidr_or_ip
            .parse::<IpNet>()
            .ok()
            .or_else(|| cidr_or_ip.parse::<IpAddr>().ok().map(IpNet::from));
        if let Some(net) = net {
            let what = what.into();
            if !self.ranges.iter().any(|(n, w)| *n == net && *w == what) {
                self.ranges.push((net, what));
            }
        }
    }

    /// What `address` is inside, if it is inside the host's ranges.
    pub fn containing(&self, address: &str) -> Option<String> {
        let ip = unmapped(address.parse().ok()?);
        self.ranges
            .iter()
            .find(|(net, _)| net.contains(&ip))
            .map(|(net, what)| {
                if net.prefix_len() == net.max_prefix_len() {
                    what.clone()
                } else {
                    format!("{what} ({net})")
                }
            })
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ranges.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_single_addresses_are_found_with_what_they_are() {
        let mut n = HostNetworks::default();
        n.add("10.96.0.0/12", "the host's Service range");
        n.add("10.244.1.0/24", "the pod range of host node worker-1");
        n.add("192.0.2.7", "host node worker-1");
        n.add("fd00:10:96::/112", "the host's Service range");
        n.add("not a range", "ignored");
        n.add("192.0.2.7", "host node worker-1");
        assert_eq!(n.len(), 4);
        assert_eq!(
            n.containing("10.100.3.4").as_deref(),
            Some("the host's Service range (10.96.0.0/12)")
        );
        assert_eq!(
            n.containing("10.244.1.9").as_deref(),
            Some("the pod range of host node worker-1 (10.244.1.0/24)")
        );
        assert_eq!(
            n.containing("192.0.2.7").as_deref(),
            Some("host node worker-1")
        );
        assert_eq!(
            n.containing("::ffff:10.96.0.1").as_deref(),
            Some("the host's Service range (10.96.0.0/12)")
        );
        assert!(n.containing("fd00:10:96::a").is_some());
        for outside in ["192.0.2.8", "10.244.2.1", "203.0.113.5", "nope"] {
            assert_eq!(n.containing(outside), None, "{outside}");
        }
    }
}
