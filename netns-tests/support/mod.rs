//! What the low-level namespace tests (the harness, the VIP, announcements) all need: a
//! runtime for the async pieces and a topology that fails the test when it cannot be built.
#![allow(dead_code)]

use apivip::netns::{Topology, TopologySpec};

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

pub fn topo(nodes: usize, clients: usize, ipv6: bool) -> Topology {
    Topology::build(&TopologySpec {
        nodes,
        clients,
        ipv6,
    })
    .expect("build topology")
}
