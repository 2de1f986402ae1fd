//! The netlink framing kept by hand (tracer/src/netlink.rs) on arbitrary bytes: splitting
//! a datagram into messages and a payload into attributes, nested ones included, must
//! end and never read past the data. It is what NETCONF (forwarding state) is decoded
//! with, since netlink-packet-route has no NETCONF messages (README, "Building by hand").
#![no_main]

#[path = "../../src/netlink.rs"]
#[allow(dead_code)]
mod netlink;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for (_, _, payload) in netlink::netlink_messages(data) {
        // NETCONF's payload: a 4-byte netconfmsg, then attributes.
        for start in [0, 4] {
            for (_, value) in netlink::attributes(payload.get(start..).unwrap_or_default()) {
                for (_, nested) in netlink::attributes(value) {
                    let _ = netlink::u32_at(nested, 0);
                }
            }
        }
    }
});
