//! The node configuration model: plain serde data with a builder API.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Default guest memory in MiB.
pub const DEFAULT_MEMORY_MIB: u32 = 1024;
/// Default number of virtual CPUs (MTTCG with 2 vCPUs boots fastest under TCG).
pub const DEFAULT_CORES: u32 = 2;

/// The configuration of one test machine.
///
/// Everything the guest needs beyond its image (packages) is delivered at boot as a small layer
/// (see [`crate::NodeLayer`]), so changing a file, unit or user never rebuilds an image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Host name; `None` means the node name.
    pub hostname: Option<String>,
    /// Extra Debian packages (a derived image is built from the cached base image).
    pub packages: BTreeSet<String>,
    /// Files installed into the guest.
    pub files: Vec<FileSpec>,
    /// systemd services.
    pub services: Vec<ServiceSpec>,
    /// One-shot scripts run once, at first boot.
    pub first_boot: Vec<FirstBootScript>,
    /// System users (created with systemd-sysusers).
    pub users: Vec<UserSpec>,
    /// System groups (created with systemd-sysusers).
    pub groups: Vec<GroupSpec>,
    /// Inbound firewall (on by default).
    pub firewall: FirewallSpec,
    /// VLANs this node has a NIC on (default `[1]`).
    pub vlans: Vec<u8>,
    /// Add a QEMU user-mode NIC (`restrict=on`) so `forward_port` works. Off by default.
    pub user_net: bool,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Virtual CPUs.
    pub cores: u32,
    /// Units masked by the node layer (symlinked to /dev/null), e.g. `postgresql@15-main.service`.
    pub masked_units: Vec<String>,
    /// Extra kernel command line arguments.
    pub kernel_args: Vec<String>,
    /// Extra QEMU arguments, appended last.
    pub qemu_args: Vec<String>,
    /// Typed user options (for example `tutorial`), readable by test scripts and written to
    /// `/etc/machinist/node.json` in the guest.
    pub options: BTreeMap<String, serde_json::Value>,
    /// What the node runs on; `None` leaves the choice to the test (a VM by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<NodeBackend>,
    /// Kernel variables (`net.ipv4.conf.all.rp_filter` = `0`), written to
    /// `/etc/sysctl.d/60-machinist-node.conf` and applied by systemd-sysctl at boot.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctls: BTreeMap<String, String>,
    /// Forward IPv4 and IPv6 packets between the node's interfaces (a router); sets
    /// `net.ipv4.ip_forward`, `net.ipv6.conf.all.forwarding` and
    /// `net.ipv6.conf.default.forwarding` to 1.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ip_forwarding: bool,
    /// Static routes, each through a gateway on one of the node's VLANs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// The default route: a gateway on one of the node's VLANs (there is none by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_gateway: Option<DefaultGateway>,
    /// Kernel modules loaded at boot (`/etc/modules-load.d/machinist-node.conf`).
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub kernel_modules: BTreeSet<String>,
    /// Run systemd-logind with its seat and uaccess udev rules, as a NixOS system does (images
    /// leave them out for speed): logins on virtual consoles, a getty spawned on the console
    /// switched to, device ACLs for the active session. Needs the packages `dbus` and
    /// `libpam-systemd`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub logind: bool,
}

/// The udev rules of logind's seats and device access, which images mask with logind.
pub const LOGIND_UDEV_RULES: &[&str] = &["70-uaccess.rules", "71-seat.rules", "73-seat-late.rules"];

/// A static route: packets for `destination` leave through the node's NIC on `vlan`, to the
/// gateway `via` (an address on that VLAN, e.g. another node acting as a router).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// The VLAN whose NIC the route leaves through (one of the node's `vlans`).
    pub vlan: u8,
    /// The destination network in CIDR notation: `10.0.2.0/24`, `2001:db8:5::/64`.
    pub destination: String,
    /// The gateway's address, on the VLAN's subnet (`192.168.<vlan>.N` or `2001:db8:<vlan>::N`).
    pub via: String,
}

impl Route {
    /// A route to `destination` (CIDR) through the gateway `via` on VLAN `vlan`.
    pub fn new(vlan: u8, destination: impl Into<String>, via: impl Into<String>) -> Self {
        Route {
            vlan,
            destination: destination.into(),
            via: via.into(),
        }
    }
}

/// The default route of a node: through the gateway `via` on VLAN `vlan`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultGateway {
    /// The VLAN whose NIC the default route leaves through (one of the node's `vlans`).
    pub vlan: u8,
    /// The gateway's address on that VLAN's subnet (IPv4 or IPv6).
    pub via: String,
}

/// The kernel variables [`NodeConfig::ip_forwarding`] sets.
pub const IP_FORWARDING_SYSCTLS: &[&str] = &[
    "net.ipv4.ip_forward",
    "net.ipv6.conf.all.forwarding",
    "net.ipv6.conf.default.forwarding",
];

/// What a node runs on: the same image and node layer either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeBackend {
    /// A QEMU virtual machine (the default).
    Vm,
    /// A systemd-nspawn container booting the image's systemd (needs root and the
    /// `systemd-container` package on the host).
    Container,
}

impl NodeBackend {
    /// The backend named `s` (`vm` or `container`).
    pub fn parse(s: &str) -> Option<NodeBackend> {
        match s.trim() {
            "vm" => Some(NodeBackend::Vm),
            "container" => Some(NodeBackend::Container),
            _ => None,
        }
    }

    /// The backend's name (`vm`, `container`).
    pub fn as_str(self) -> &'static str {
        match self {
            NodeBackend::Vm => "vm",
            NodeBackend::Container => "container",
        }
    }
}

impl std::fmt::Display for NodeBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            hostname: None,
            packages: BTreeSet::new(),
            files: Vec::new(),
            services: Vec::new(),
            first_boot: Vec::new(),
            users: Vec::new(),
            groups: Vec::new(),
            firewall: FirewallSpec::default(),
            vlans: vec![1],
            user_net: false,
            memory_mib: DEFAULT_MEMORY_MIB,
            cores: DEFAULT_CORES,
            masked_units: Vec::new(),
            kernel_args: Vec::new(),
            qemu_args: Vec::new(),
            options: BTreeMap::new(),
            backend: None,
            sysctls: BTreeMap::new(),
            ip_forwarding: false,
            routes: Vec::new(),
            default_gateway: None,
            kernel_modules: BTreeSet::new(),
            logind: false,
        }
    }
}

impl NodeConfig {
    /// A node with the defaults: one NIC on VLAN 1, firewall on, 1024 MiB, 2 cores.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set the host name (default: the node name).
    pub fn hostname(mut self, name: impl Into<String>) -> Self {
        self.hostname = Some(name.into());
        self
    }

    /// Add a Debian package.
    pub fn package(mut self, name: impl Into<String>) -> Self {
        self.packages.insert(name.into());
        self
    }

    /// Add several Debian packages.
    pub fn packages<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.packages.extend(names.into_iter().map(Into::into));
        self
    }

    /// Add a file.
    pub fn file(mut self, file: FileSpec) -> Self {
        self.files.push(file);
        self
    }

    /// Add a service.
    pub fn service(mut self, service: ServiceSpec) -> Self {
        self.services.push(service);
        self
    }

    /// Add a first-boot script.
    pub fn first_boot(mut self, script: FirstBootScript) -> Self {
        self.first_boot.push(script);
        self
    }

    /// Add a user.
    pub fn user(mut self, user: UserSpec) -> Self {
        self.users.push(user);
        self
    }

    /// Add a group.
    pub fn group(mut self, group: GroupSpec) -> Self {
        self.groups.push(group);
        self
    }

    /// Open a TCP port in the firewall.
    pub fn open_tcp_port(mut self, port: u32) -> Self {
        self.firewall.allowed_tcp_ports.insert(port);
        self
    }

    /// Open a UDP port in the firewall.
    pub fn open_udp_port(mut self, port: u32) -> Self {
        self.firewall.allowed_udp_ports.insert(port);
        self
    }

    /// Turn the firewall on or off (on by default).
    pub fn firewall_enabled(mut self, enabled: bool) -> Self {
        self.firewall.enable = enabled;
        self
    }

    /// Set the VLANs this node has NICs on (default `[1]`; empty = no test NIC).
    pub fn vlans(mut self, vlans: impl IntoIterator<Item = u8>) -> Self {
        self.vlans = vlans.into_iter().collect();
        self
    }

    /// Add a user-mode NIC (QEMU `-netdev user,restrict=on`).
    pub fn user_net(mut self, on: bool) -> Self {
        self.user_net = on;
        self
    }

    /// Guest memory in MiB.
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Number of virtual CPUs.
    pub fn cores(mut self, cores: u32) -> Self {
        self.cores = cores;
        self
    }

    /// Mask a systemd unit (the layer links `/etc/systemd/system/<unit>` to /dev/null).
    pub fn mask_unit(mut self, unit: impl Into<String>) -> Self {
        self.masked_units.push(unit.into());
        self
    }

    /// Add a kernel command line argument.
    pub fn kernel_arg(mut self, arg: impl Into<String>) -> Self {
        self.kernel_args.push(arg.into());
        self
    }

    /// Add a raw QEMU argument.
    pub fn qemu_arg(mut self, arg: impl Into<String>) -> Self {
        self.qemu_args.push(arg.into());
        self
    }

    /// Set a typed user option (serialised to JSON).
    pub fn option(mut self, key: impl Into<String>, value: impl Serialize) -> Self {
        let value = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
        self.options.insert(key.into(), value);
        self
    }

    /// Runs the node on `backend` whatever the test's default.
    pub fn backend(mut self, backend: NodeBackend) -> Self {
        self.backend = Some(backend);
        self
    }

    /// Runs the node as a systemd-nspawn container (see [`NodeBackend::Container`]).
    pub fn container(self) -> Self {
        self.backend(NodeBackend::Container)
    }

    /// Set the kernel variable `key` (dotted, `net.ipv4.conf.all.rp_filter`) to `value`.
    pub fn sysctl(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.sysctls.insert(key.into(), value.into());
        self
    }

    /// Run systemd-logind (see [`NodeConfig::logind`]); add the packages `dbus` and
    /// `libpam-systemd` too.
    pub fn logind(mut self, on: bool) -> Self {
        self.logind = on;
        self
    }

    /// Forward packets between the node's interfaces (see [`NodeConfig::ip_forwarding`]).
    pub fn ip_forwarding(mut self, on: bool) -> Self {
        self.ip_forwarding = on;
        self
    }

    /// Add a static route.
    pub fn route(mut self, route: Route) -> Self {
        self.routes.push(route);
        self
    }

    /// Route everything without a more specific route through `via` on VLAN `vlan`.
    pub fn default_gateway(mut self, vlan: u8, via: impl Into<String>) -> Self {
        self.default_gateway = Some(DefaultGateway {
            vlan,
            via: via.into(),
        });
        self
    }

    /// Load a kernel module at boot (`dummy`, `8021q`).
    pub fn kernel_module(mut self, name: impl Into<String>) -> Self {
        self.kernel_modules.insert(name.into());
        self
    }

    /// Every kernel variable the node sets: those of [`NodeConfig::ip_forwarding`], then the
    /// declared `sysctls` (validation rejects a declared value that contradicts forwarding).
    pub fn effective_sysctls(&self) -> BTreeMap<String, String> {
        let mut all = BTreeMap::new();
        if self.ip_forwarding {
            for k in IP_FORWARDING_SYSCTLS {
                all.insert(k.to_string(), "1".to_string());
            }
        }
        all.extend(self.sysctls.clone());
        all
    }

    /// The full names of the masked units (`postgresql` -> `postgresql.service`, other unit types
    /// kept), as the node layer masks them.
    pub fn masked_unit_names(&self) -> Vec<String> {
        self.masked_units
            .iter()
            .map(|m| crate::unit_name::full_unit_name(m))
            .collect()
    }

    /// The host name: `hostname`, else the node name with any `_` made `-` (a node may be named
    /// `local_router`, as in NixOS tests, but a host name holds letters, digits and `-` only;
    /// `/etc/hosts` lists the node name too).
    pub fn effective_hostname(&self, name: &str) -> String {
        self.hostname
            .clone()
            .unwrap_or_else(|| name.replace('_', "-"))
    }
}

/// A file installed into the guest by the node layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// Absolute path in the guest.
    pub path: String,
    /// Contents (literal text, or a template already rendered by the caller). Ignored when
    /// `source` is set.
    pub contents: String,
    /// A file on the host whose bytes are the contents (binaries such as a server executable);
    /// read when the node layer is rendered, so a changed file never rebuilds an image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<std::path::PathBuf>,
    /// Name of the template the contents came from, if any (for logs and errors).
    #[serde(default)]
    pub template: Option<String>,
    /// Permission bits (default 0644).
    #[serde(default = "default_file_mode")]
    pub mode: u32,
    /// Owning user (default root).
    #[serde(default = "root")]
    pub owner: String,
    /// Owning group (default root).
    #[serde(default = "root")]
    pub group: String,
}

fn default_file_mode() -> u32 {
    0o644
}

fn root() -> String {
    "root".to_string()
}

impl FileSpec {
    /// A root-owned 0644 file with literal contents.
    pub fn new(path: impl Into<String>, contents: impl Into<String>) -> Self {
        FileSpec {
            path: path.into(),
            contents: contents.into(),
            source: None,
            template: None,
            mode: default_file_mode(),
            owner: root(),
            group: root(),
        }
    }

    /// A file whose contents were rendered from the template `template`.
    pub fn from_template(
        path: impl Into<String>,
        template: impl Into<String>,
        rendered: impl Into<String>,
    ) -> Self {
        let mut f = FileSpec::new(path, rendered);
        f.template = Some(template.into());
        f
    }

    /// A root-owned 0644 file copied from `host_path` on the host (any bytes).
    pub fn from_host(path: impl Into<String>, host_path: impl Into<std::path::PathBuf>) -> Self {
        let mut f = FileSpec::new(path, String::new());
        f.source = Some(host_path.into());
        f
    }

    /// Set the permission bits.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    /// Set owner and group.
    pub fn owner(mut self, user: impl Into<String>, group: impl Into<String>) -> Self {
        self.owner = user.into();
        self.group = group.into();
        self
    }
}

/// systemd `Type=` of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceType {
    /// `Type=simple`.
    #[default]
    Simple,
    /// `Type=exec`.
    Exec,
    /// `Type=forking`.
    Forking,
    /// `Type=oneshot`.
    Oneshot,
    /// `Type=notify`.
    Notify,
}

impl ServiceType {
    /// The systemd spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::Simple => "simple",
            ServiceType::Exec => "exec",
            ServiceType::Forking => "forking",
            ServiceType::Oneshot => "oneshot",
            ServiceType::Notify => "notify",
        }
    }
}

/// systemd `Restart=` of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    /// `Restart=no`.
    #[default]
    No,
    /// `Restart=on-failure`.
    OnFailure,
    /// `Restart=always`.
    Always,
}

impl Restart {
    /// The systemd spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Restart::No => "no",
            Restart::OnFailure => "on-failure",
            Restart::Always => "always",
        }
    }
}

/// A systemd service unit `<name>.service`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceSpec {
    /// Unit name, with or without `.service` (`app` and `app.service` are both `app.service`).
    pub name: String,
    /// `Description=`.
    pub description: Option<String>,
    /// `ExecStart=` command line (exclusive with `script`).
    pub exec_start: Option<String>,
    /// A bash script run as the service (installed as `/usr/lib/machinist/services/<name>`).
    pub script: Option<String>,
    /// `After=` units.
    pub after: Vec<String>,
    /// `Before=` units.
    pub before: Vec<String>,
    /// `Wants=` units.
    pub wants: Vec<String>,
    /// `Requires=` units.
    pub requires: Vec<String>,
    /// Targets that want this unit (default `multi-user.target`; empty = not started at boot).
    pub wanted_by: Vec<String>,
    /// `User=`.
    pub user: Option<String>,
    /// `Group=`.
    pub group: Option<String>,
    /// `Environment=` entries.
    pub environment: BTreeMap<String, String>,
    /// `Type=`.
    pub service_type: ServiceType,
    /// `Restart=`.
    pub restart: Restart,
    /// `RemainAfterExit=yes`.
    pub remain_after_exit: bool,
    /// `WorkingDirectory=`.
    pub working_directory: Option<String>,
    /// Extra `[Service]` lines (`Key=Value`), appended verbatim.
    pub extra_service_lines: Vec<String>,
}

impl Default for ServiceSpec {
    fn default() -> Self {
        ServiceSpec {
            name: String::new(),
            description: None,
            exec_start: None,
            script: None,
            after: Vec::new(),
            before: Vec::new(),
            wants: Vec::new(),
            requires: Vec::new(),
            wanted_by: vec!["multi-user.target".to_string()],
            user: None,
            group: None,
            environment: BTreeMap::new(),
            service_type: ServiceType::Simple,
            restart: Restart::No,
            remain_after_exit: false,
            working_directory: None,
            extra_service_lines: Vec::new(),
        }
    }
}

impl ServiceSpec {
    /// A service running `exec_start`, wanted by multi-user.target.
    pub fn new(name: impl Into<String>, exec_start: impl Into<String>) -> Self {
        ServiceSpec {
            name: name.into(),
            exec_start: Some(exec_start.into()),
            ..Default::default()
        }
    }

    /// A service running a bash script, wanted by multi-user.target.
    pub fn script(name: impl Into<String>, script: impl Into<String>) -> Self {
        ServiceSpec {
            name: name.into(),
            script: Some(script.into()),
            ..Default::default()
        }
    }

    /// Set `Description=`.
    pub fn description(mut self, d: impl Into<String>) -> Self {
        self.description = Some(d.into());
        self
    }

    /// Add an `After=` unit.
    pub fn after(mut self, unit: impl Into<String>) -> Self {
        self.after.push(unit.into());
        self
    }

    /// Add a `Before=` unit.
    pub fn before(mut self, unit: impl Into<String>) -> Self {
        self.before.push(unit.into());
        self
    }

    /// Add a `Wants=` unit.
    pub fn wants(mut self, unit: impl Into<String>) -> Self {
        self.wants.push(unit.into());
        self
    }

    /// Add a `Requires=` unit.
    pub fn requires(mut self, unit: impl Into<String>) -> Self {
        self.requires.push(unit.into());
        self
    }

    /// Replace the targets wanting this unit.
    pub fn wanted_by(mut self, targets: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.wanted_by = targets.into_iter().map(Into::into).collect();
        self
    }

    /// Set `User=`.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// Set `Group=`.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// Add an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.environment.insert(key.into(), value.into());
        self
    }

    /// Set `Type=`.
    pub fn service_type(mut self, t: ServiceType) -> Self {
        self.service_type = t;
        self
    }

    /// Set `Restart=`.
    pub fn restart(mut self, r: Restart) -> Self {
        self.restart = r;
        self
    }

    /// Set `RemainAfterExit=`.
    pub fn remain_after_exit(mut self, on: bool) -> Self {
        self.remain_after_exit = on;
        self
    }

    /// Set `WorkingDirectory=`.
    pub fn working_directory(mut self, dir: impl Into<String>) -> Self {
        self.working_directory = Some(dir.into());
        self
    }

    /// Append a raw `[Service]` line such as `LimitNOFILE=4096`.
    pub fn service_line(mut self, line: impl Into<String>) -> Self {
        self.extra_service_lines.push(line.into());
        self
    }

    /// The unit file name, `<name>.service` (`name` may already end with `.service`: it is
    /// not added twice).
    pub fn unit_name(&self) -> String {
        format!("{}.service", crate::unit_name::service_stem(&self.name))
    }
}

/// A bash script run once per machine at first boot, as `user`, ordered after `after` units and
/// before `before` units (unit `machinist-first-boot-<name>.service`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FirstBootScript {
    /// Name (part of the unit name; a trailing `.service` is not repeated).
    pub name: String,
    /// Bash script text.
    pub script: String,
    /// User to run as (default root).
    pub user: String,
    /// Units this script runs after (and requires).
    pub after: Vec<String>,
    /// Units that start only after this script finished.
    pub before: Vec<String>,
}

impl Default for FirstBootScript {
    fn default() -> Self {
        FirstBootScript {
            name: String::new(),
            script: String::new(),
            user: root(),
            after: Vec::new(),
            before: Vec::new(),
        }
    }
}

impl FirstBootScript {
    /// A first-boot script run as root.
    pub fn new(name: impl Into<String>, script: impl Into<String>) -> Self {
        FirstBootScript {
            name: name.into(),
            script: script.into(),
            ..Default::default()
        }
    }

    /// Run as this user.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = user.into();
        self
    }

    /// Run after (and require) this unit.
    pub fn after(mut self, unit: impl Into<String>) -> Self {
        self.after.push(unit.into());
        self
    }

    /// Finish before this unit starts.
    pub fn before(mut self, unit: impl Into<String>) -> Self {
        self.before.push(unit.into());
        self
    }

    /// The unit name, `machinist-first-boot-<name>.service` (`name` may already end with
    /// `.service`: it is not added twice).
    pub fn unit_name(&self) -> String {
        format!(
            "machinist-first-boot-{}.service",
            crate::unit_name::service_stem(&self.name)
        )
    }
}

/// A user created with systemd-sysusers.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UserSpec {
    /// Login name.
    pub name: String,
    /// Fixed uid (default: allocated by sysusers).
    pub uid: Option<u32>,
    /// Primary group (default: a group named like the user).
    pub group: Option<String>,
    /// Supplementary groups.
    pub extra_groups: Vec<String>,
    /// Home directory (default `/home/<name>`, created 0700).
    pub home: Option<String>,
    /// Login shell (default `/bin/bash`).
    pub shell: Option<String>,
    /// GECOS field.
    pub description: Option<String>,
}

impl UserSpec {
    /// A user with a home directory and bash as shell.
    pub fn new(name: impl Into<String>) -> Self {
        UserSpec {
            name: name.into(),
            ..Default::default()
        }
    }

    /// Fixed uid.
    pub fn uid(mut self, uid: u32) -> Self {
        self.uid = Some(uid);
        self
    }

    /// Primary group.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// Add a supplementary group.
    pub fn extra_group(mut self, group: impl Into<String>) -> Self {
        self.extra_groups.push(group.into());
        self
    }

    /// Home directory.
    pub fn home(mut self, home: impl Into<String>) -> Self {
        self.home = Some(home.into());
        self
    }

    /// Login shell.
    pub fn shell(mut self, shell: impl Into<String>) -> Self {
        self.shell = Some(shell.into());
        self
    }

    /// Effective home directory.
    pub fn effective_home(&self) -> String {
        self.home
            .clone()
            .unwrap_or_else(|| format!("/home/{}", self.name))
    }
}

/// A group created with systemd-sysusers.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupSpec {
    /// Group name.
    pub name: String,
    /// Fixed gid.
    pub gid: Option<u32>,
    /// Members (users added to this group).
    pub members: Vec<String>,
}

impl GroupSpec {
    /// A group.
    pub fn new(name: impl Into<String>) -> Self {
        GroupSpec {
            name: name.into(),
            ..Default::default()
        }
    }

    /// Fixed gid.
    pub fn gid(mut self, gid: u32) -> Self {
        self.gid = Some(gid);
        self
    }

    /// Add a member.
    pub fn member(mut self, user: impl Into<String>) -> Self {
        self.members.push(user.into());
        self
    }
}

/// The inbound firewall (nftables). On by default, like NixOS.
///
/// Inbound traffic on every interface except `lo` is refused unless it belongs to an established
/// connection, is ICMP/ICMPv6 echo or neighbour discovery, or targets an open port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FirewallSpec {
    /// Filter inbound traffic (default true).
    pub enable: bool,
    /// Open TCP ports (1..=65535).
    pub allowed_tcp_ports: BTreeSet<u32>,
    /// Open UDP ports (1..=65535).
    pub allowed_udp_ports: BTreeSet<u32>,
    /// Answer refused packets with TCP RST / ICMP port-unreachable (default true, so a forgotten
    /// port fails at once with "connection refused"); false drops them silently like NixOS.
    pub reject_packets: bool,
    /// Allow ICMP echo (ping); default true like NixOS `allowPing`.
    pub allow_ping: bool,
    /// IP protocols accepted whatever their port, by name (`vrrp`, as in `/etc/protocols`) or
    /// number (`112`): e.g. what NixOS modules open with `openFirewall` for VRRP or GRE.
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub allowed_protocols: BTreeSet<String>,
    /// Accept everything that belongs to a connection the node took part in (connection
    /// tracking, as NixOS' firewall does): replies to UDP sent from a fixed port, ICMP errors,
    /// related flows. Off by default: without it the ruleset is stateless, which spares loading
    /// the conntrack modules at boot (seconds under emulation) and still lets TCP replies, UDP
    /// replies to ephemeral ports and ICMP replies in.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stateful: bool,
}

impl Default for FirewallSpec {
    fn default() -> Self {
        FirewallSpec {
            enable: true,
            allowed_tcp_ports: BTreeSet::new(),
            allowed_udp_ports: BTreeSet::new(),
            reject_packets: true,
            allow_ping: true,
            allowed_protocols: BTreeSet::new(),
            stateful: false,
        }
    }
}
