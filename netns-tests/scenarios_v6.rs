//! The IPv6 run of issue 3's scenarios (2001:db8::/64, VIP 2001:db8::100 on the interface
//! with a kernel lifetime, unsolicited neighbour advertisements).

mod common;

use apivip_testkit::netns::require_root;
use common::*;

#[test]
fn v6_s1_elect_and_serve() {
    if require_root("v6_s1_elect_and_serve") {
        elect_and_serve(true);
    }
}

/// The VIP is on the interface: a killed daemon's VIP lasts until its lifetime runs out.
#[test]
fn v6_s2_sigkill_failover() {
    if require_root("v6_s2_sigkill_failover") {
        sigkill(true, 0);
    }
}

/// A killed daemon restarted at once removes the VIP its predecessor left (Rule 8).
#[test]
fn v6_s2_kill_and_restart_at_once() {
    if require_root("v6_s2_kill_and_restart_at_once") {
        kill_and_restart_at_once(true);
    }
}

#[test]
fn v6_s3_link_down() {
    if require_root("v6_s3_link_down") {
        link_down(true);
    }
}

#[test]
fn v6_s4_apiserver_unready() {
    if require_root("v6_s4_apiserver_unready") {
        apiserver_unready(true);
    }
}

#[test]
fn v6_s5_partition_holder_from_peers() {
    if require_root("v6_s5_partition_holder_from_peers") {
        partition_holder(true);
    }
}

/// The default profile's frozen-leader bound holds for IPv6 lifetimes too.
#[test]
fn v6_s6_sigstop_default_profile() {
    if require_root("v6_s6_sigstop_default_profile") {
        frozen(true, "interface", "default", DEFAULT_FROZEN_BOUND);
    }
}

#[test]
fn v6_s7_drill_and_sigterm() {
    if require_root("v6_s7_drill_and_sigterm") {
        drill_and_sigterm(true);
    }
}

/// The client's neighbour entry follows the VIP (unsolicited NA with Override).
#[test]
fn v6_s8_na_follows_move() {
    if require_root("v6_s8_na_follows_move") {
        neighbour_follows(true);
    }
}
