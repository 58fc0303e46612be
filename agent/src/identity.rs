//! The inventory's `host` block: the keys the collector identifies a host by (DESIGN.md,
//! "Host identity"), taken from the discovered `system`, `os` and `network_interface` CIs.
//! Placeholder values that vendors ship instead of real serials are reported as absent:
//! a placeholder shared by a thousand machines would merge them into one host.

use cmdb_proto::model::{AttrValue, HostIdentity, Item, class};

use crate::discover::Context;

pub use cmdb_proto::identity::{is_placeholder, real_value};

/// Builds the identity block from discovered items.
pub fn host_identity(ctx: &Context, items: &[Item]) -> HostIdentity {
    let find = |c: &str| items.iter().find(|i| i.class == c);
    let get = |item: Option<&Item>, attr: &str| {
        item.and_then(|i| i.attr(attr))
            .and_then(AttrValue::as_str)
            .and_then(real_value)
    };
    let system = find(class::SYSTEM);
    let os = find(class::OS);
    let mut macs: Vec<String> = items
        .iter()
        .filter(|i| i.class == class::NETWORK_INTERFACE)
        .filter(|i| i.attr("virtual") != Some(&AttrValue::Bool(true)))
        .filter_map(|i| i.attr("mac").and_then(AttrValue::as_str))
        .filter(|m| !is_placeholder(m))
        .map(str::to_ascii_lowercase)
        .collect();
    macs.sort();
    macs.dedup();

    let machine_id = get(os, "machine_id").or_else(|| {
        ["/etc/machine-id", "/var/lib/dbus/machine-id"]
            .iter()
            .find_map(|p| ctx.root.read_trimmed(p).ok().flatten())
            .and_then(|s| real_value(&s))
    });

    HostIdentity {
        hostname: get(os, "hostname"),
        fqdn: get(os, "fqdn"),
        machine_id,
        product_uuid: get(system, "product_uuid").map(|u| u.to_ascii_lowercase()),
        serial_number: get(system, "serial_number"),
        board_serial: get(system, "board_serial"),
        cloud_instance_id: get(system, "cloud_instance_id"),
        macs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_takes_real_values_and_physical_macs() {
        let items = vec![
            Item::new(class::SYSTEM, "system")
                .with("product_uuid", "4C4C4544-0042-3510-8052-B4C04F564E32")
                .with("serial_number", "To Be Filled By O.E.M."),
            Item::new(class::OS, "os")
                .with("hostname", "web-1")
                .with("machine_id", "abc"),
            Item::new(class::NETWORK_INTERFACE, "eth0")
                .with("mac", "52:54:00:AA:BB:CC")
                .with("virtual", false),
            Item::new(class::NETWORK_INTERFACE, "docker0")
                .with("mac", "02:42:00:00:00:01")
                .with("virtual", true),
        ];
        let id = host_identity(&Context::default(), &items);
        assert_eq!(
            id.product_uuid.as_deref(),
            Some("4c4c4544-0042-3510-8052-b4c04f564e32")
        );
        assert_eq!(id.serial_number, None);
        assert_eq!(id.hostname.as_deref(), Some("web-1"));
        assert_eq!(id.macs, vec!["52:54:00:aa:bb:cc".to_owned()]);
    }
}
