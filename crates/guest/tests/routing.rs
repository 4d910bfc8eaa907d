//! Kernel variables, kernel modules, static routes and default gateways: how the node layer
//! renders them and how validation rejects bad values. No VM.

use machinist_guest::{
    parse_cidr, GuestError, NetworkPlan, NodeBackend, NodeConfig, NodeLayer, Route,
};

/// `a` (node 1) on VLAN 1, `b` (node 2) on VLAN 2, `router` (node 3) on both.
fn router_nodes() -> [(&'static str, NodeConfig); 3] {
    [
        (
            "a",
            NodeConfig::new().route(Route::new(1, "192.168.2.0/24", "192.168.1.3")),
        ),
        (
            "b",
            NodeConfig::new()
                .vlans([2])
                .default_gateway(2, "192.168.2.3")
                .route(Route::new(2, "2001:db8:1::/64", "2001:db8:2::3")),
        ),
        (
            "router",
            NodeConfig::new()
                .vlans([1, 2])
                .ip_forwarding(true)
                .sysctl("net.ipv4.conf.all.rp_filter", "0")
                .kernel_module("dummy"),
        ),
    ]
}

fn layer_of(name: &str) -> String {
    let nodes = router_nodes();
    let pairs: Vec<(&str, &NodeConfig)> = nodes.iter().map(|(n, c)| (*n, c)).collect();
    machinist_guest::validate(&pairs).unwrap();
    let plan = NetworkPlan::new(&pairs);
    let cfg = &nodes.iter().find(|(n, _)| *n == name).unwrap().1;
    NodeLayer::render(name, cfg, &plan).unwrap().describe()
}

/// One `=== path` section of a layer listing.
fn section<'a>(listing: &'a str, path: &str) -> Option<&'a str> {
    let start = listing.find(&format!("=== {path} "))?;
    let rest = &listing[start..];
    let end = rest[4..].find("\n=== ").map_or(rest.len(), |i| i + 5);
    Some(&rest[..end])
}

#[test]
fn router_layer_render() {
    let router = layer_of("router");
    insta::assert_snapshot!("router_layer", router);
    let sysctl = section(&router, "root/etc/sysctl.d/60-machinist-node.conf").unwrap();
    for line in [
        "net.ipv4.ip_forward = 1",
        "net.ipv6.conf.all.forwarding = 1",
        "net.ipv4.conf.all.rp_filter = 0",
    ] {
        assert!(sysctl.contains(line), "{line} missing:\n{sysctl}");
    }
    let modules = section(&router, "root/etc/modules-load.d/machinist-node.conf").unwrap();
    assert!(modules.lines().any(|l| l == "dummy"), "{modules}");
    // The router itself routes nothing: no [Route] in its network files.
    assert!(!router.contains("[Route]"));
}

#[test]
fn routes_go_into_their_vlans_network_file() {
    let a = layer_of("a");
    let net = section(&a, "root/etc/systemd/network/10-machinist-vlan1.network").unwrap();
    assert!(
        net.ends_with("\n[Route]\nDestination=192.168.2.0/24\nGateway=192.168.1.3\n"),
        "{net}"
    );
    let b = layer_of("b");
    insta::assert_snapshot!(
        "gateway_node_network_file",
        section(&b, "root/etc/systemd/network/10-machinist-vlan2.network").unwrap()
    );
    // A node that declares none of it has no sysctl or modules file (and the image has no other
    // file in /etc/modules-load.d, so systemd-modules-load does not run for it).
    for listing in [&a, &b] {
        assert!(!listing.contains("sysctl.d"), "{listing}");
        assert!(!listing.contains("modules-load.d"), "{listing}");
    }
}

/// A configuration that declares none of the new fields serialises exactly as before (the
/// rendered layer, and with it every node snapshot's key, stays the same); one that declares
/// them reads back equal.
#[test]
fn serde_omits_defaults_and_round_trips() {
    let json = serde_json::to_string(&NodeConfig::new()).unwrap();
    for key in [
        "sysctls",
        "ip_forwarding",
        "routes",
        "default_gateway",
        "kernel_modules",
    ] {
        assert!(!json.contains(key), "{key} in {json}");
    }
    for (_, cfg) in router_nodes() {
        let json = serde_json::to_string(&cfg).unwrap();
        let back: NodeConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, cfg);
    }
}

#[test]
fn cidr_parsing() {
    assert_eq!(
        parse_cidr("10.0.2.0/24").unwrap(),
        ("10.0.2.0".parse().unwrap(), 24)
    );
    assert_eq!(
        parse_cidr("0.0.0.0/0").unwrap(),
        ("0.0.0.0".parse().unwrap(), 0)
    );
    assert_eq!(
        parse_cidr("2001:db8:5::/64").unwrap(),
        ("2001:db8:5::".parse().unwrap(), 64)
    );
    assert_eq!(
        parse_cidr("10.0.2.7/32").unwrap(),
        ("10.0.2.7".parse().unwrap(), 32)
    );
    for bad in [
        "10.0.2.0",
        "10.0.2.1/24",
        "10.0.2.0/33",
        "2001:db8::/129",
        "10.0.2/24",
        "10.0.2.0/",
        " 10.0.2.0/24",
        "2001:db8:5::1/64",
    ] {
        assert!(parse_cidr(bad).is_err(), "{bad} accepted");
    }
}

fn errors(nodes: &[(&str, &NodeConfig)]) -> (Vec<String>, String) {
    let err = machinist_guest::validate(nodes).unwrap_err();
    let text = err.to_string();
    match err {
        GuestError::Invalid(list) => (
            list.into_iter()
                .map(|e| format!("{}: {}", e.node, e.field))
                .collect(),
            text,
        ),
        other => panic!("{other}"),
    }
}

/// Every bad value is reported at once, naming node and field; the layer refuses to render it.
#[test]
fn bad_values_name_node_and_field() {
    let bad = NodeConfig::new()
        .vlans([1, 2])
        .ip_forwarding(true)
        .sysctl("net.ipv4.ip_forward", "0")
        .sysctl("Net.IPv4.bad key", "1")
        .sysctl("-net.ipv4.x", "1")
        .sysctl("kernel.panic", "")
        .sysctl("vm.swappiness", "1\nkernel.panic = 1")
        .kernel_module("dummy\nevil")
        .kernel_module("")
        .route(Route::new(1, "10.0.2.1/24", "192.168.1.3"))
        .route(Route::new(3, "10.0.3.0/24", "192.168.3.1"))
        .route(Route::new(2, "10.0.4.0/24", "192.168.1.3"))
        .route(Route::new(1, "2001:db8:7::/64", "192.168.1.3"))
        .route(Route::new(1, "10.0.5.0/24", "router"))
        .default_gateway(2, "192.168.2.255");
    let off_vlan = NodeConfig::new().default_gateway(4, "192.168.4.1");
    let (fields, text) = errors(&[("edge", &bad), ("leaf", &off_vlan)]);
    assert_eq!(
        fields,
        [
            "edge: sysctls.-net.ipv4.x",
            "edge: sysctls.Net.IPv4.bad key",
            "edge: sysctls.kernel.panic",
            "edge: sysctls.net.ipv4.ip_forward",
            "edge: sysctls.vm.swappiness",
            "edge: kernel_modules",
            "edge: kernel_modules",
            "edge: routes[0].destination",
            "edge: routes[1].vlan",
            "edge: routes[2].via",
            "edge: routes[3].via",
            "edge: routes[4].via",
            "edge: default_gateway.via",
            "leaf: default_gateway.vlan",
        ]
    );
    insta::assert_snapshot!("routing_validation_errors", text);
    let plan = NetworkPlan::new(&[("edge", &bad)]);
    assert!(matches!(
        NodeLayer::render("edge", &bad, &plan),
        Err(GuestError::Invalid(_))
    ));
}

/// A container shares the host's kernel: it can set only its own network namespace's variables
/// and load no module.
#[test]
fn container_nodes_set_only_network_variables() {
    let ct = NodeConfig::new()
        .backend(NodeBackend::Container)
        .ip_forwarding(true)
        .sysctl("net.ipv4.conf.all.rp_filter", "0")
        .sysctl("kernel.panic", "1")
        .kernel_module("dummy");
    let (fields, _) = errors(&[("ct", &ct)]);
    assert_eq!(fields, ["ct: sysctls.kernel.panic", "ct: kernel_modules"]);
}
