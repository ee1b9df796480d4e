//! The cluster's initial membership, as `--initial-cluster 1=HOST:PORT,2=HOST:PORT,...` gives
//! it: each node's id and peer address, and what every node derives from the same list (the
//! cluster's id, which peers check on every message, and the replicated core's seed).
//!
//! Architecture invariant: every node given the same list derives the same id and seed,
//! whatever order the list was written in; a list that cannot work is refused with its reason.

use std::collections::BTreeMap;

use ring::digest;

/// A cluster of at most this many voters (5 is the usual most; 7 keeps room to grow).
pub const VOTERS_MAX: usize = 7;

/// Whether `addr` is a usable peer address: HOST:PORT, the port above 0.
pub fn check_addr(addr: &str) -> Result<(), String> {
    let port = addr.rsplit_once(':').map(|(host, port)| (host, port.parse::<u16>()));
    if !matches!(port, Some((host, Ok(port))) if !host.is_empty() && port > 0) {
        return Err("the address is not HOST:PORT".into());
    }
    Ok(())
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitialCluster {
    /// Node id to its peer address (`HOST:PORT`), ordered by id.
    pub members: BTreeMap<u64, String>,
}

impl InitialCluster {
    pub fn parse(text: &str) -> Result<InitialCluster, String> {
        let mut members = BTreeMap::new();
        for item in text.split(',').map(str::trim).filter(|item| !item.is_empty()) {
            let (id, addr) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?} is not ID=HOST:PORT (for example 1=10.0.0.1:7071)"))?;
            let id: u64 = (id.trim().parse().ok())
                .filter(|id| *id > 0)
                .ok_or_else(|| format!("{item:?}: a node id is a whole number above 0"))?;
            let addr = addr.trim();
            check_addr(addr).map_err(|error| format!("{item:?}: {error}"))?;
            if members.insert(id, addr.to_string()).is_some() {
                return Err(format!("node {id} is listed twice"));
            }
        }
        if members.is_empty() {
            return Err("the list names no node (ID=HOST:PORT,...)".into());
        }
        if members.len() > VOTERS_MAX {
            return Err(format!("{} nodes; a cluster has at most {VOTERS_MAX}", members.len()));
        }
        let mut seen = BTreeMap::new();
        for (id, addr) in &members {
            if let Some(other) = seen.insert(addr.as_str(), *id) {
                return Err(format!("nodes {other} and {id} have the same address {addr}"));
            }
        }
        Ok(InitialCluster { members })
    }

    pub fn voters(&self) -> Vec<u64> {
        self.members.keys().copied().collect()
    }

    /// A digest of the list in its canonical form (sorted by id).
    fn digest(&self) -> [u8; 32] {
        let canonical: String = (self.members.iter())
            .map(|(id, addr)| format!("{id}={addr}\n"))
            .collect();
        let hashed = digest::digest(&digest::SHA256, format!("agentkeeper cluster\n{canonical}").as_bytes());
        hashed.as_ref().try_into().expect("SHA-256 is 32 bytes")
    }

    /// The cluster's id: peers refuse traffic that carries another.
    pub fn cluster_id(&self) -> u64 {
        u64::from_le_bytes(self.digest()[..8].try_into().expect("8 bytes"))
    }

    /// The replicated core's seed (ids, hashing): the same on every node of the cluster.
    pub fn core_seed(&self) -> u64 {
        u64::from_le_bytes(self.digest()[8..16].try_into().expect("8 bytes"))
    }

    /// The identity of the cluster this list creates, for one of its founding nodes.
    pub fn identity(&self) -> ClusterIdentity {
        ClusterIdentity {
            cluster_id: self.cluster_id(),
            core_seed: self.core_seed(),
            founding: true,
        }
    }
}

/// Which cluster a node belongs to, kept in its data dir from its first start: the list the
/// cluster was created with, or what a member told a node that joined later. Membership
/// changes never change it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterIdentity {
    pub cluster_id: u64,
    pub core_seed: u64,
    /// One of the nodes the cluster was created with (false: it joined later, with no
    /// configuration of its own, and starts from a leader's snapshot).
    pub founding: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_members_in_any_order_give_the_same_cluster_id_and_seed() {
        let a = InitialCluster::parse("1=h1:7071,2=h2:7071,3=h3:7071").unwrap();
        let b = InitialCluster::parse(" 3=h3:7071, 1=h1:7071,2=h2:7071 ").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.cluster_id(), b.cluster_id());
        assert_eq!(a.core_seed(), b.core_seed());
        assert_eq!(a.voters(), vec![1, 2, 3]);
        let other = InitialCluster::parse("1=h1:7071,2=h2:7071,3=h4:7071").unwrap();
        assert_ne!(a.cluster_id(), other.cluster_id());
    }

    #[test]
    fn a_list_that_cannot_work_is_refused_with_its_reason() {
        let refused = |text: &str| InitialCluster::parse(text).unwrap_err();
        assert!(refused("").contains("names no node"));
        assert!(refused("1=h1:7071,1=h2:7071").contains("listed twice"));
        assert!(refused("0=h1:7071").contains("above 0"));
        assert!(refused("1=h1").contains("HOST:PORT"));
        assert!(refused("1=h1:0").contains("HOST:PORT"));
        assert!(refused("1h1:7071").contains("ID=HOST:PORT"));
        assert!(refused("1=h:1,2=h:1").contains("same address"));
        let eight: Vec<String> = (1..=8).map(|i| format!("{i}=h{i}:1")).collect();
        assert!(refused(&eight.join(",")).contains("at most 7"));
    }
}
